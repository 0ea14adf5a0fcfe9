"""Result files (migration 0016): inline data of a result, kept beside the job.

A provider may answer with the data itself rather than a link to it: OpenAI's gpt-image
models give every image as base64 (the adapter makes each a ``data:`` URL), and a
predictions output may hold ``data:`` URLs too. Left in the result, megabytes would travel in
every read of the job, in its ``job.succeeded`` event and in each webhook delivery of it.
:func:`take_inline_data` takes every base64 ``data:`` URL out of an output, to be kept in
``result_files`` (:func:`write`), and names it by path, ``/v1/jobs/<job id>/result/files/<n>``,
which the API serves (:func:`read`) with the job's tenant's key.

Only image and video jobs' outputs are read so: a text job's answer is the model's text,
kept as written even when it looks like a ``data:`` URL. The files are written just before
the job's ending, each in its own statement, replacing any of the same number (files an
attempt wrote before its step crashed and the job failed over). A job cancelled, or failed
by its deadline, while its provider finished the work anyway keeps them too, named by its
result (written just before the statement that closes that attempt and keeps the result);
files whose job then ended otherwise are dropped by retention with the job's result.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

from orchestrator.domain.base64text import standard_base64
from orchestrator.store.statement import Conn, Statement

# media type (type/subtype, parameters dropped; longer than the column holds: not data of
# ours, left as it is), then the data
_DATA_URL = re.compile(r"data:([\w.+-]{1,40}/[\w.+-]{1,50})(?:;[^;,]*)*;base64,(.*)",
                       re.DOTALL)
# served as themselves; anything else is a download (application/octet-stream), so that
# no provider's answer is ever rendered as a page of ours (HTML, SVG with script)
INLINE_TYPES = re.compile(r"(image/(png|jpeg|webp|gif|avif)|video/(mp4|webm)|"
                          r"audio/(mpeg|wav|ogg|webm)|text/plain)")

# the last writer wins: the step that ends the job writes its files just before, so they are
# the ones its result names (a step that crashed first, its attempt failed over, left others)
_INSERT = Statement(
    "INSERT INTO result_files (job_id, n, media_type, content) "
    "VALUES (:job, :n, :media, :content) ON CONFLICT (job_id, n) DO UPDATE "
    "SET media_type = EXCLUDED.media_type, content = EXCLUDED.content"
)
_READ = Statement(
    "SELECT f.media_type, f.content FROM result_files f JOIN jobs j ON j.id = f.job_id "
    "WHERE f.job_id = :job AND f.n = :n AND (CAST(:tenant AS text) IS NULL OR j.tenant = :tenant)"
)


def path(job_id: uuid.UUID, n: int) -> str:
    return f"/v1/jobs/{job_id}/result/files/{n}"


def take_inline_data(job_id: uuid.UUID, output: Any) -> tuple[Any, list[tuple[str, bytes]]]:
    """``output`` with each base64 ``data:`` URL in it (at any depth) replaced by the path of
    file n (in the order met), and the files' (media type, content) to :func:`write`. A
    string that only looks like one (not base64) stays as it is."""
    found: list[tuple[str, bytes]] = []

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            if not value.startswith("data:"):
                return value
            m = _DATA_URL.fullmatch(value)
            if m is None:
                return value
            # line breaks and the URL-safe alphabet are base64 too, as the OpenAI adapter
            # reads b64_json: left inline, megabytes would travel in the job, its events and
            # its webhooks
            data = standard_base64(m.group(2))
            # without its padding, as the URL-safe alphabet is often written and as the
            # OpenAI adapter takes b64_json: restored (a length no base64 has stays refused)
            data += "=" * (-len(data) % 4)
            try:
                content = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return value
            found.append((m.group(1).lower(), content))
            return path(job_id, len(found) - 1)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(output), found


def write(conn: Conn, job_id: uuid.UUID, found: list[tuple[str, bytes]]) -> None:
    for n, (media, content) in enumerate(found):
        _INSERT.run(conn, {"job": job_id, "n": n, "media": media, "content": content})


def read(conn: Conn, job_id: uuid.UUID, n: int, tenant: str | None) -> tuple[str, bytes] | None:
    """(media type, content) of the job's file ``n``; None when there is none, or the job is
    another tenant's (``tenant`` None: any tenant's, for an admin)."""
    row = _READ.first(conn, {"job": job_id, "n": n, "tenant": tenant})
    return None if row is None else (str(row[0]), bytes(row[1]))
