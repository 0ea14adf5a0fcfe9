"""Sockets of our servers and pools: a TCP listening socket (:func:`tcp_listener`), and
whether an idle connection's socket has something to read, without reading it.

A connection at rest in a pool (a database connection, an HTTP keep-alive one) has nothing
to read; if its socket polls readable, the peer closed it or sent something unasked, and it
must not carry the next request. ``poll``, not ``select``: ``select()`` refuses a descriptor
numbered 1024 or more, which a process holding a thousand client connections hands to its
next socket (then every database checkout of the API looked hung up: 500s under load).
"""

from __future__ import annotations

import select
import socket


def has_input(sock: socket.socket | int) -> bool:
    """True when reading would not block, or the socket cannot be polled (closed, invalid):
    either way, not a connection to use."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def tcp_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port), not yet listening. SO_REUSEADDR:
    a restarted server gets its port back while the last one's connections are in
    TIME_WAIT. IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for such
    sockets (else ~40 ms per request from Nagle + delayed ACK)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
