"""A provider that answers as Replicate's predictions API does, over real HTTP/1.1 on
127.0.0.1, for end-to-end tests of the ``predictions`` protocol against a provider's own
habits rather than the simulator's:

* answers carry what Replicate's carry besides the fields the orchestrator reads (``urls``,
  ``version``, ``input``, ``logs``, ``data_removed``, ``created_at`` …);
* a prediction goes ``starting`` → ``processing`` → ``succeeded`` by the clock, and its
  ``metrics`` hold only timings (``predict_time``, ``total_time``), never a cost;
* cancel answers the prediction as the cancel left it (``canceled`` with the time it ran,
  or as it had already finished);
* ``GET /v1/predictions`` lists every prediction of the account, newest first, and ignores
  an ``idempotency_key`` filter (Replicate has none);
* it never de-duplicates a create: every one is new work, billed.

It keeps its own book of what it bills (``bills``: run time x ``usd_per_second``, for every
prediction that ended), so a test compares the orchestrator's ledger with the provider's
invoice. Several backends share one server under path prefixes (``url("a")``).

``script`` lets a test change one answer: ``script.create`` / ``script.poll`` /
``script.cancel`` are called with the request's number (from 1) on that route and return an
``Answer`` to send instead (``None``: answer as Replicate would); ``Answer.after_work`` sends
it after the create did its work (a create accepted, its answer then lost or garbled).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

START_S = 0.1  # from create to the model starting


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the answer is sent (the provider's or a proxy's latency)
    after_work: bool = True  # a create's work is done before this answer goes (or does not)


def json_answer(status: int, obj: Any, headers: dict[str, str] | None = None,
                delay_s: float = 0.0) -> Answer:
    return Answer(status, json.dumps(obj).encode(), {"Content-Type": "application/json",
                                                     **(headers or {})}, delay_s)


def html_answer(status: int, headers: dict[str, str] | None = None) -> Answer:
    """A proxy's error page, as nginx or a CDN sends it in front of an API."""
    page = (f"<html><head><title>{status}</title></head><body><center><h1>{status} "
            "Service Temporarily Unavailable</h1></center><hr><center>nginx</center>"
            "</body></html>\r\n").encode()
    return Answer(status, page, {"Content-Type": "text/html", **(headers or {})})


Script = Callable[[int], Answer | None]


@dataclass
class Scripts:
    create: Script | None = None
    poll: Script | None = None
    cancel: Script | None = None


@dataclass
class Prediction:
    id: str
    backend: str
    key: str | None
    input: dict[str, Any]
    version: str | None
    created: float
    run_s: float
    output: Any
    ended_at: float | None = None  # a cancel's end; else it ends by the clock
    canceled: bool = False

    def started(self) -> float:
        return self.created + START_S

    def end(self) -> float:
        return self.ended_at if self.ended_at is not None else self.started() + self.run_s

    def status(self, now: float) -> str:
        if now >= self.end():
            return "canceled" if self.canceled else "succeeded"
        return "processing" if now >= self.started() else "starting"

    def ran_s(self, now: float) -> float:
        return round(max(0.0, min(now, self.end()) - self.started()), 3)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class ReplicateFake:
    """The server; a context manager."""

    def __init__(self, *, usd_per_second: float = 0.01, run_s: float = 0.5) -> None:
        self.usd_per_second = usd_per_second
        self.run_s = run_s
        self.output: Any = None  # None: a list of one link per prediction
        self.script = Scripts()
        self.predictions: dict[str, Prediction] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # no reply or prompt in any log
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ReplicateFake:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def url(self, backend: str) -> str:
        """A backend's base URL, ending in /v1 as Replicate's does."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/{backend}/v1"

    def reset(self) -> None:
        with self._lock:
            self.script = Scripts()
            self.output = None
            self.predictions.clear()
            self.requests.clear()
            self._counts.clear()

    # -- what the provider saw and billed ----------------------------------------------------
    def made(self, backend: str) -> list[Prediction]:
        with self._lock:
            return [p for p in self.predictions.values() if p.backend == backend]

    def bills(self, backend: str) -> list[int]:
        """Micro-USD billed for each prediction of ``backend`` that has ended."""
        now = time.time()
        return [round(p.ran_s(now) * self.usd_per_second * 1_000_000)
                for p in self.made(backend) if now >= p.end()]

    def count(self, route: str) -> int:
        with self._lock:
            return self._counts.get(route, 0)

    # -- serving ------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        segments = [s for s in parts.path.split("/") if s]
        # /<backend>/v1/predictions[/<id>[/cancel]]
        if len(segments) < 3 or segments[1:3] != ["v1", "predictions"]:
            return self._send(h, json_answer(404, {"detail": "Not found.", "status": 404}))
        backend, rest = segments[0], segments[3:]
        with self._lock:
            self.requests.append((method, parts.path, dict(h.headers.items())))
        if method == "POST" and not rest:
            route = "create"
        elif method == "GET" and not rest:
            route = "list"
        elif method == "GET" and len(rest) == 1:
            route = "poll"
        elif method == "POST" and len(rest) == 2 and rest[1] == "cancel":
            route = "cancel"
        else:
            return self._send(h, json_answer(404, {"detail": "Not found.", "status": 404}))
        with self._lock:
            n = self._counts[route] = self._counts.get(route, 0) + 1
        hook = getattr(self.script, route, None)
        scripted = hook(n) if hook is not None else None
        if route == "create":
            if scripted is not None and not scripted.after_work:
                return self._send(h, scripted)  # refused: nothing made
            pred = self._create(backend, json.loads(raw), h.headers.get("Idempotency-Key"))
            return self._send(h, scripted or json_answer(201, self._view(pred)))
        if scripted is not None:
            return self._send(h, scripted)
        if route == "list":
            with self._lock:
                items = sorted((p for p in self.predictions.values() if p.backend == backend),
                               key=lambda p: p.created, reverse=True)
            return self._send(h, json_answer(200, {
                "next": None, "previous": None, "results": [self._view(p) for p in items]}))
        with self._lock:
            pred = self.predictions.get(rest[0])
        if pred is None or pred.backend != backend:
            return self._send(h, json_answer(404, {"detail": "Not found.", "status": 404}))
        if route == "cancel":
            now = time.time()
            with self._lock:
                if now < pred.end():  # a finished prediction stays as it ended
                    pred.ended_at, pred.canceled = now, True
        return self._send(h, json_answer(200, self._view(pred)))

    def _create(self, backend: str, body: dict[str, Any], key: str | None) -> Prediction:
        pid = uuid.uuid4().hex[:26]
        pred = Prediction(pid, backend, key, body.get("input", {}), body.get("version"),
                          time.time(), self.run_s,
                          self.output if self.output is not None
                          else [f"https://replicate.delivery/xezq/{pid}/out-0.mp4"])
        with self._lock:
            self.predictions[pid] = pred
        return pred

    def _view(self, p: Prediction) -> dict[str, Any]:
        now = time.time()
        status = p.status(now)
        base = f"https://api.replicate.com/v1/predictions/{p.id}"
        view: dict[str, Any] = {
            "id": p.id, "model": "acme/video-model", "version": p.version or "hidden",
            "input": p.input, "logs": "", "output": None, "data_removed": False,
            "error": None, "status": status, "source": "api", "created_at": iso(p.created),
            "urls": {"get": base, "cancel": f"{base}/cancel",
                     "stream": f"https://stream.replicate.com/v1/files/{p.id}"},
        }
        if status != "starting":
            view["started_at"] = iso(p.started())
            view["logs"] = "Using seed: 1234\n"
        if status in ("succeeded", "canceled"):
            view["completed_at"] = iso(p.end())
            view["metrics"] = {"predict_time": p.ran_s(now),
                               "total_time": round(p.end() - p.created, 3)}
        if status == "succeeded":
            view["output"] = p.output
        return view

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, answer: Answer) -> None:
        if answer.delay_s:
            time.sleep(answer.delay_s)  # the provider's latency, as scripted
        try:
            h.send_response(answer.status)
            for k, v in answer.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(answer.body)))
            h.end_headers()
            h.wfile.write(answer.body)
        except OSError:  # the client gave up (a read timeout): the answer is lost
            pass
