"""HTTP/1.1 by hand over a socket, for what an HTTP client will not do: send the head and
hold back the body, trickle a head, keep idle connections open."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

import httpx
import pytest


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert set(data) == {"error"} and set(data["error"]) == {"code", "message", "details"}
        err: dict[str, Any] = data["error"]
        return err


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    u = httpx.URL(url)
    assert u.host and u.port
    return socket.create_connection((u.host, u.port), timeout=timeout)


def head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket, what: str) -> Answer:
    """The next response on ``sock``; fails the test if none comes within the socket's
    timeout (the server is still waiting for something)."""
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        body = resp.read()
    except TimeoutError:
        pytest.fail(f"no answer within {sock.gettimeout()} s: {what}")
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset), False on a timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
