"""``orchestrator api`` stopped with SIGTERM (``orchestrator up``, Docker, a rolling deploy)
while clients hold event streams open: it ends the streams (each with a clean end of its
chunked body, so an EventSource reconnects to another replica), still answers a submission
it was reading, and exits 0 well within the supervisors' grace (``up``: 15 s; Docker: 10 s)
instead of waiting for streams that never end until it is SIGKILLed; and its metric sinks'
last flush runs on the way out. A real API process on real PostgreSQL and Redis, a real worker
running the job, a local fake Cloud Monitoring."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import httpx_sse

from orchestrator.embedded._ports import free_port
from orchestrator.metrics.fake_gcm import FakeMonitoringServer
from orchestrator.store.keys import create_key

from .api_fixture import video
from .e2e_support import Rig
from .raw_http import head, read_answer
from .test_metrics_addr import api_process

STOP_WITHIN_S = 5.0  # well under Docker's default stop grace (10 s) and up's (15 s)


@dataclass
class Stream:
    path: str
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    events: list[httpx_sse.ServerSentEvent] = field(default_factory=list)
    outcome: str = ""  # "end": the body ended as HTTP says; else the error
    ended_at: float = 0.0


def _read(stream: Stream, url: str, key: str) -> None:
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=httpx.Timeout(10.0, read=60.0)) as client, \
                httpx_sse.connect_sse(client, "GET", stream.path) as source:
            if source.response.status_code != 200:
                stream.outcome = f"status {source.response.status_code}"
                return
            for sse in source.iter_sse():
                stream.events.append(sse)
                stream.opened.set()
        stream.outcome = "end"
    except Exception as exc:  # the test reads it: a cut stream fails with what cut it
        stream.outcome = repr(exc)
    finally:
        stream.ended_at = time.monotonic()
        stream.ended.set()


def test_sigterm_ends_open_streams_answers_a_submission_in_hand_and_exits_0(
        rig: Rig, tmp_path: Path) -> None:
    with FakeMonitoringServer() as gcm:
        _stop_under_streams(rig, tmp_path, gcm)


def _stop_under_streams(rig: Rig, tmp_path: Path, gcm: FakeMonitoringServer) -> None:
    with rig.engine.begin() as conn:
        key = create_key(conn, "acme")
    rig.control("vid-cheap", duration_ms=600_000)  # the job runs as long as the test
    rig.start_worker(concurrency=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    # the exporter never wakes on its own here: only the last flush, at exit, writes
    env = {**rig.env, "ORCH_LOG_LEVEL": "INFO", "ORCH_GCP_PROJECT": "proj-stop",
           "ORCH_GCP_MONITORING_ENDPOINT": gcm.endpoint, "ORCH_GCP_FLUSH_INTERVAL_S": "3600"}
    with api_process(env, port, log) as proc:
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{url}/v1/jobs", json=video(), headers=auth, timeout=15)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        rig.wait_for("the job to run", lambda: rig.job(job_id).status == "running")

        streams = [Stream(f"/v1/jobs/{job_id}/events") for _ in range(3)]
        streams += [Stream("/v1/events") for _ in range(3)]
        readers = [threading.Thread(target=_read, args=(s, url, key), daemon=True)
                   for s in streams]
        for t in readers:
            t.start()
        for s in streams:
            assert s.opened.wait(30), f"{s.path}: {s.outcome or 'no event'}"
        # opened at its first event; the second may still be on its way
        rig.wait_for("the job's stream to carry its two events", lambda: [
            e.event for e in streams[0].events] == ["job.queued", "job.started"], timeout=30)

        # a submission under way: its head read (the API asked for its body: 100 Continue)
        body = json.dumps(video()).encode()
        sub = socket.create_connection(("127.0.0.1", port), timeout=30)
        sub.sendall(head("POST", "/v1/jobs", {
            **auth, "Content-Type": "application/json", "Content-Length": str(len(body)),
            "Expect": "100-continue"}))
        assert sub.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for s in streams:
            assert s.ended.wait(STOP_WITHIN_S), (
                f"{s.path} still open {STOP_WITHIN_S} s after SIGTERM\n{log.read_text()}")
        # the body comes after the streams ended: the API is stopping, and still answers it
        sub.sendall(body)
        answer = read_answer(sub, "a submission read while the API stops")
        sub.close()
        try:
            code = proc.wait(max(0.1, sent + STOP_WITHIN_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the API still runs {STOP_WITHIN_S} s after SIGTERM\n{log.read_text()}"
            ) from None
        stopped = time.monotonic() - sent
        text = log.read_text()
        print(f"streams ended {max(s.ended_at for s in streams) - sent:.2f} s and the "
              f"process {stopped:.2f} s after SIGTERM (exit {code})")

    assert answer.status == 202, answer.body
    assert rig.job(json.loads(answer.body)["id"]).status in ("queued", "running")
    assert [s.outcome for s in streams] == ["end"] * len(streams), text
    assert code == 0, text
    assert "Traceback" not in text and "without completing response" not in text, text
    assert "timeout graceful shutdown exceeded" not in text, text
    submitted = [ts for key, ts in gcm.series.items() if key[0].endswith("/jobs/submitted")]
    assert sum(p.value.int64_value for ts in submitted for p in ts.points) == 2, gcm.series
