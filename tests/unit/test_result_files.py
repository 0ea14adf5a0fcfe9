"""Which parts of a provider's output become result files (``store.files``)."""

from __future__ import annotations

import base64
import uuid

from orchestrator.store.files import INLINE_TYPES, path, take_inline_data

JOB = uuid.UUID("8b0c7d3e-0000-4000-8000-000000000001")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n-bytes").decode()


def test_base64_data_urls_at_any_depth_become_paths_in_the_order_met() -> None:
    output = {"images": [f"data:image/png;base64,{PNG}", "https://cdn.example/b.png"],
              "extra": {"video": f"data:video/mp4;name=a.mp4;base64,{PNG}", "n": 2}}
    kept, found = take_inline_data(JOB, output)
    assert kept == {"images": [path(JOB, 0), "https://cdn.example/b.png"],
                    "extra": {"video": path(JOB, 1), "n": 2}}
    assert found == [("image/png", base64.b64decode(PNG)), ("video/mp4", base64.b64decode(PNG))]
    assert path(JOB, 1) == f"/v1/jobs/{JOB}/result/files/1"


def test_base64_with_line_breaks_or_the_url_safe_alphabet_becomes_a_file_too() -> None:
    content = bytes(range(256)) * 4  # "+" and "/" in standard base64
    for data in (base64.encodebytes(content).decode(),  # a line break every 76 characters
                 base64.b64encode(content).decode().replace("A", "A\r\n", 3),
                 base64.urlsafe_b64encode(content).decode()):
        kept, found = take_inline_data(JOB, [f"data:video/mp4;base64,{data}"])
        assert kept == [path(JOB, 0)] and found == [("video/mp4", content)]


def test_base64_without_its_padding_becomes_a_file_too() -> None:
    """URL-safe base64 is often written without its "=" padding, and the OpenAI adapter
    takes b64_json so: such a data: URL stayed inline, megabytes in the job and its events."""
    for content in (bytes(range(256)) * 4, bytes(range(256)) * 4 + b"x"):  # "==" and "="
        for encode in (base64.urlsafe_b64encode, base64.b64encode):
            data = encode(content).decode().rstrip("=")
            kept, found = take_inline_data(JOB, [f"data:image/png;base64,{data}"])
            assert kept == [path(JOB, 0)] and found == [("image/png", content)], data[-4:]
    # a length no base64 has (4n + 1) is no data, padded or not
    for text in ("data:image/png;base64,QUJDR", "data:image/png;base64,QUJDR==="):
        assert take_inline_data(JOB, [text]) == ([text], [])


def test_what_only_looks_like_a_data_url_stays_as_it_is() -> None:
    for text in ("data:image/png;base64,not base64!", "data:text/plain,hello",
                 f"data:{'x' * 101}/png;base64,{PNG}",  # a media type no column holds
                 "a data:image/png;base64,AAAA inside words"):
        assert take_inline_data(JOB, {"text": text}) == ({"text": text}, [])
    assert take_inline_data(JOB, None) == (None, [])


def test_only_plain_media_types_are_served_as_themselves() -> None:
    for media in ("image/png", "image/jpeg", "video/mp4", "audio/wav", "text/plain"):
        assert INLINE_TYPES.fullmatch(media)
    for media in ("text/html", "image/svg+xml", "application/javascript", "application/pdf"):
        assert not INLINE_TYPES.fullmatch(media)
