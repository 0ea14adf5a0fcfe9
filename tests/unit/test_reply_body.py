"""How a compressed answer is read (``Reply.body``): gzip members one after another, zlib's
deflate and raw deflate, NUL padding, and the cap on what a body may inflate to."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import pytest

from orchestrator.backends import transport
from orchestrator.backends.transport import Reply

ANSWER = b'{"id": "p-1", "status": "succeeded", "output": "https://cdn/p-1.mp4"}'


def reply(content: bytes, coding: str) -> Reply:
    return Reply(200, [(b"Content-Encoding", coding.encode())], content)


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("content", "coding"), [
    (gzip.compress(ANSWER, mtime=0), "gzip"),
    # a server that flushes each part of its answer as a gzip member of its own
    (gzip.compress(ANSWER[:20], mtime=0) + gzip.compress(ANSWER[20:], mtime=0), "gzip"),
    (gzip.compress(ANSWER, mtime=0) + b"\0" * 8, "x-gzip"),  # padded to a block
    (zlib.compress(ANSWER), "deflate"),
    (raw_deflate(ANSWER), "deflate"),  # without zlib's header, as some servers send it
    (ANSWER, "br"),  # a coding not undone is left as it came
])
def test_a_compressed_answer_is_read_whole(content: bytes, coding: str) -> None:
    assert reply(content, coding).body() == ANSWER


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_data_that_does_not_inflate_is_unreadable(coding: str) -> None:
    with pytest.raises(ValueError, match="does not inflate"):
        reply(b"not compressed at all", coding).body()


@pytest.mark.parametrize("pack", [gzip.compress, zlib.compress, raw_deflate,
                                  lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:])])
def test_no_body_inflates_past_the_largest_answer_read(
        pack: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "MAX_ANSWER_BYTES", 1024)
    content = pack(b"x" * 1025)
    coding = "gzip" if content[:2] == b"\x1f\x8b" else "deflate"
    with pytest.raises(ValueError, match="inflates past"):
        reply(content, coding).body()
    assert reply(pack(b"x" * 1024), coding).body() == b"x" * 1024
