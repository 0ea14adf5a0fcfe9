"""Base64 as providers write it, read as one alphabet: the OpenAI adapter's ``b64_json`` and a
result's ``data:`` URLs (``store.files``) both take it."""

from __future__ import annotations


def standard_base64(text: str) -> str:
    """``text`` without line breaks or other whitespace (MIME's base64, as Python's
    ``encodebytes`` writes it) and in the standard alphabet (the URL-safe ``-`` and ``_`` as
    ``+`` and ``/``); padding as it came."""
    return "".join(text.split()).replace("-", "+").replace("_", "/")
