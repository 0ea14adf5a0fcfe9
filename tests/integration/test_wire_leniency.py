"""Answers whose framing RFC 9112 lets a recipient accept though llhttp refuses it (a
``Content-Length`` sent twice or as ``N, N``, LF-only lines, a folded header value, a length
beside ``Transfer-Encoding: chunked``): production's wire reads them as httpx's own transport
(h11) does, so a provider behind a proxy that bends its framing is not a lost answer on every
call. What no recipient may accept stays refused, by both."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from orchestrator.backends import RetryPolicy, make_adapter
from orchestrator.backends import transport as transport_module
from orchestrator.backends.transport import Http11Transport
from orchestrator.domain.jobs import JobSpec

from .wire_fakes import WireFake, backend_at, raw

BODY = b'{"id": "p-1", "status": "starting"}'
N = str(len(BODY)).encode()
CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)

BENT = {
    "length-twice": b"HTTP/1.1 201 Created\r\nContent-Length: %s\r\nContent-Length: %s\r\n"
                    b"\r\n%s" % (N, N, BODY),
    "length-listed": b"HTTP/1.1 201 Created\r\nContent-Length: %s, %s\r\n\r\n%s"
                     % (N, N, BODY),
    "lf-only": b"HTTP/1.1 201 Created\nContent-Type: application/json\nContent-Length: %s\n"
               b"\n%s" % (N, BODY),
    "one-lf-line": b"HTTP/1.1 201 Created\r\nContent-Length: %s\n\r\n%s" % (N, BODY),
    "folded-value": b"HTTP/1.1 201 Created\r\nX-Trace: edge-7\r\n  hop-2\r\n"
                    b"Content-Length: %s\r\n\r\n%s" % (N, BODY),
    "length-and-chunked": b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n%s" % CHUNKED,
    "interim-then-bent": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\n"
                         b"Content-Length: %s\nContent-Length: %s\n\n%s" % (N, N, BODY),
}
REFUSED = {
    "lengths-differ": b"HTTP/1.1 201 Created\r\nContent-Length: %s, 3\r\n\r\n%s" % (N, BODY),
    "space-before-colon": b"HTTP/1.1 201 Created\r\nContent-Length : %s\r\n\r\n%s"
                          % (N, BODY),
    "no-colon": b"HTTP/1.1 201 Created\r\nContent-Length %s\r\n\r\n%s" % (N, BODY),
}


@pytest.fixture()
def fake() -> Iterator[WireFake]:
    with WireFake() as server:
        yield server


@pytest.fixture()
def transport() -> Iterator[Http11Transport]:
    wire = Http11Transport()
    yield wire
    wire.close()


def read_by(transport: httpx.BaseTransport, url: str) -> tuple[int, bytes]:
    with httpx.Client(transport=transport) as client:
        answer = client.post(f"{url}/v1/predictions", content=b"{}")
        return answer.status_code, answer.content


@pytest.mark.parametrize("recv", [65536, 5], ids=["whole", "in-5-byte-reads"])
@pytest.mark.parametrize("name", BENT)
def test_a_bent_answer_reads_as_h11_reads_it(
        fake: WireFake, transport: Http11Transport, monkeypatch: pytest.MonkeyPatch,
        name: str, recv: int) -> None:
    monkeypatch.setattr(transport_module, "_RECV", recv)  # the head split across reads
    fake.route("POST", "/v1/predictions", raw(BENT[name]))
    assert read_by(httpx.HTTPTransport(), fake.url) == (201, BODY)
    assert read_by(transport, fake.url) == (201, BODY)
    assert not any(transport._idle.values())  # bent framing: the connection is not kept


@pytest.mark.parametrize("name", REFUSED)
def test_framing_no_recipient_may_accept_stays_refused(
        fake: WireFake, transport: Http11Transport, name: str) -> None:
    fake.route("POST", "/v1/predictions", raw(REFUSED[name]))
    with pytest.raises(httpx.RemoteProtocolError):
        read_by(httpx.HTTPTransport(), fake.url)
    with pytest.raises(httpx.RemoteProtocolError):
        read_by(transport, fake.url)


def test_a_create_answered_through_a_bending_proxy_is_not_a_lost_answer(
        fake: WireFake, transport: Http11Transport) -> None:
    """Refused, this answer was a lost one: the create closed uncertain and, on a provider
    that does not de-duplicate, the job was paid again on another backend."""
    fake.route("POST", "/v1/predictions", raw(BENT["length-twice"]))
    adapter = make_adapter(backend_at(fake.url), transport, retry=RetryPolicy(attempts=1))
    spec = JobSpec.model_validate({"kind": "video", "input": {"prompt": "a lighthouse",
                                                               "duration_s": 4}})
    assert adapter.submit(spec, "job-1:1").external_id == "p-1"
    assert len(fake.received("POST", "/v1/predictions")) == 1


def test_a_bent_head_that_never_ends_is_refused_once_it_is_too_long(
        fake: WireFake, transport: Http11Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each look for its end reads the whole head again: a server trickling one without end
    would have the worker scan megabytes per read, up to the 64 MiB answer limit."""
    monkeypatch.setattr(transport_module, "_RECV", 4096)
    endless = b"HTTP/1.1 201 Created\nX-Pad: " + b"x" * (transport_module.MAX_BENT_HEAD_BYTES
                                                      + 8192)
    fake.route("POST", "/v1/predictions", raw(endless))
    with pytest.raises(httpx.RemoteProtocolError, match="KiB"):
        read_by(transport, fake.url)
