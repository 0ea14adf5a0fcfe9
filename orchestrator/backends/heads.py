"""A second reading of an answer's head that httptools' parser refused, as httpx's own
transport (h11) reads it.

llhttp, under httptools, refuses framing that RFC 9112 lets a recipient accept and that h11
accepts: a ``Content-Length`` sent twice with the same value, or as ``N, N`` (a proxy that
merged two); head lines ended by LF alone (a chunked body's are not rewritten); a header
value continued on the next line (obs-fold); ``Content-Length`` beside
``Transfer-Encoding`` (the latter decides, RFC 9112 §6.3). A
provider behind such a proxy would have every answer taken for a broken connection, so a paid
submission's answer for a lost one. :func:`tolerant_head` rewrites such a head into the form
llhttp reads (CRLF lines, one header per line, one length or none); the transport calls it
only after the parser refused, so well-formed answers pay nothing for it. What no recipient
may accept (two different lengths, a name with a space before its colon) stays refused.
"""

from __future__ import annotations

import re

_HEAD_END = re.compile(rb"\n\r?\n")  # the first empty line ends a head
_FOLD = (b" ", b"\t")


def tolerant_head(data: bytes) -> bytes | None:
    """``data`` with its heads (any 1xx interim ones, then the final answer's) rewritten, the
    bytes after them unchanged; None while the final head has not ended yet."""
    out = bytearray()
    rest = data
    while True:
        end = _HEAD_END.search(rest)
        if end is None:
            return None
        try:
            status, fields = _fields(rest[:end.start()].split(b"\n"))
        except ValueError:  # a line that is no field: as it came, for the parser to refuse
            return data
        out += b"\r\n".join([status, *(name + b": " + value for name, value in fields)])
        out += b"\r\n\r\n"
        rest = rest[end.end():]
        if not _interim(status):
            return bytes(out + rest)


def _interim(status: bytes) -> bool:
    parts = status.split(None, 2)
    return len(parts) > 1 and parts[1].startswith(b"1")


def _fields(lines: list[bytes]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The status line and the header fields, folded lines joined, lengths merged;
    ValueError for a line with no colon."""
    status = lines[0].rstrip(b"\r")
    fields: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if line.startswith(_FOLD) and fields:
            name, value = fields[-1]
            fields[-1] = (name, (value + b" " + line.strip(b" \t")).strip(b" \t"))
        else:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(line)
            fields.append((name, value.strip(b" \t")))
    return status, _one_length(fields)


def _one_length(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Every ``Content-Length`` as one, when they all say the same number; none beside a
    ``Transfer-Encoding``; as they came when they disagree (the parser refuses that)."""
    lengths = [i for i, (name, _) in enumerate(fields) if name.lower() == b"content-length"]
    if not lengths:
        return fields
    if any(name.lower() == b"transfer-encoding" for name, _ in fields):
        return [f for i, f in enumerate(fields) if i not in lengths]
    values = {v.strip(b" \t") for i in lengths for v in fields[i][1].split(b",")}
    if len(values) != 1:
        return fields
    first = lengths[0]
    return [(fields[first][0], values.pop()) if i == first else f
            for i, f in enumerate(fields) if i == first or i not in lengths]
