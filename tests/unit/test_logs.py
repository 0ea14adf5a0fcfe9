"""Structured logs: one JSON object per line, extras kept, prompts and keys never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from orchestrator.logs import REDACTED, configure_logging, redact_text

KEY = "orch_0a1b2c3d_" + "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3t"


@pytest.fixture()
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    handler = configure_logging("DEBUG", "json", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.handlers[:] = before
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_extras(out: io.StringIO) -> None:
    log = logging.getLogger("orchestrator.jobs")
    log.info("job %s", "succeeded", extra={
        "job_id": "j-1", "tenant": "acme", "backend": "vid-cheap", "attempt": 2,
        "outcome": "succeeded", "cost_micros": 360000, "duration_ms": 812})
    log.warning("second line")
    first, second = lines(out)
    assert first["message"] == "job succeeded"
    assert first["level"] == "INFO" and first["logger"] == "orchestrator.jobs"
    assert str(first["ts"]).endswith("Z") and "T" in str(first["ts"])
    assert {k: first[k] for k in ("job_id", "tenant", "backend", "attempt", "outcome",
                                  "cost_micros", "duration_ms")} == {
        "job_id": "j-1", "tenant": "acme", "backend": "vid-cheap", "attempt": 2,
        "outcome": "succeeded", "cost_micros": 360000, "duration_ms": 812}
    assert second["message"] == "second line" and second["level"] == "WARNING"


def test_prompt_input_and_credentials_are_never_written(out: io.StringIO) -> None:
    logging.getLogger("x").info("submitting", extra={
        "prompt": "a secret storyboard", "input": {"prompt": "a secret storyboard"},
        "api_key": KEY, "authorization": f"Bearer {KEY}", "secret": "hunter2",
        "spec": {"kind": "video", "input": {"prompt": "a secret storyboard"},
                 "headers": {"Authorization": "Bearer abc.def"}},
        "job_id": "j-2"})
    text = out.getvalue()
    assert "secret storyboard" not in text and KEY not in text and "hunter2" not in text
    assert "abc.def" not in text
    (line,) = lines(out)
    for field in ("prompt", "input", "api_key", "authorization", "secret"):
        assert field not in line
    assert line["spec"] == {"kind": "video"} and line["job_id"] == "j-2"


def test_key_looking_strings_are_redacted_everywhere(out: io.StringIO) -> None:
    log = logging.getLogger("x")
    log.warning("key %s rejected for %s", KEY, "acme", extra={
        "note": f"was {KEY}", "urls": ["redis://u:pw@h:6379/0", "redis://:pw2@h:6379/0"]})
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    assert KEY not in text and "pw@" not in text and "pw2" not in text
    first, second = lines(out)
    assert first["message"] == f"key {REDACTED} rejected for acme"
    assert first["note"] == f"was {REDACTED}"
    assert first["urls"] == [f"redis://{REDACTED}@h:6379/0", f"redis://{REDACTED}@h:6379/0"]
    assert second["exc_type"] == "ValueError" and REDACTED in str(second["exc"])


def test_text_format_is_redacted_too() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    handler = configure_logging("INFO", "text", stream=stream)
    try:
        logging.getLogger("t").info("using %s", KEY, extra={"prompt": "p!", "job_id": "j-3"})
        logging.getLogger("t").debug("not shown at INFO")
    finally:
        root.removeHandler(handler)
        root.handlers[:] = before
        root.setLevel(level)
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert "using [REDACTED]" in text and "job_id=j-3" in text
    assert "p!" not in text and KEY not in text


def test_configure_twice_keeps_one_handler(out: io.StringIO) -> None:
    again = configure_logging("INFO", "json", stream=out)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == again.get_name()]
    assert ours == [again]
    logging.getLogger("x").info("once")
    assert [line["message"] for line in lines(out)] == ["once"]


def test_redact_text_leaves_ordinary_text_alone() -> None:
    assert redact_text("job 5f1c ended on vid-cheap") == "job 5f1c ended on vid-cheap"
    assert redact_text("orchestrator_jobs_total") == "orchestrator_jobs_total"
    assert redact_text(f"x {KEY} y") == f"x {REDACTED} y"


def test_a_password_without_a_user_is_redacted_too() -> None:
    """The embedded Redis's URL has a password and no user."""
    url = "redis://:Zx9-secret_pw@127.0.0.1:6379/0"
    assert redact_text(f"broker {url}") == f"broker redis://{REDACTED}@127.0.0.1:6379/0"
    assert redact_text("postgresql+psycopg://postgres:pw@127.0.0.1:5/db") == (
        f"postgresql+psycopg://{REDACTED}@127.0.0.1:5/db")
