"""compose.yaml as production runs it, checked without Docker: what a stop gives a worker, and
what the containers' logs may take of the disk."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.backends.registry import make_adapter
from orchestrator.domain.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[2]
# a step's work around its one provider call (database, Redis, the next message) within the
# grace period, on top of the call's own window
STEP_SLACK_S = 10.0


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def seconds(duration: str) -> float:
    """A compose duration (``90s``, ``1m30s``, ``2m``) in seconds."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?", duration)
    assert m and duration, f"not a compose duration: {duration!r}"
    h, mins, s, ms = (int(g or 0) for g in m.groups())
    return h * 3600 + mins * 60 + s + ms / 1000


def test_seconds_reads_compose_durations() -> None:
    assert [seconds(d) for d in ("30s", "1m30s", "2m", "1h", "500ms")] == [30, 90, 120, 3600,
                                                                          0.5]


def test_a_stopped_worker_finishes_the_longest_call_of_the_shipped_catalogue() -> None:
    """`docker compose stop`, an upgrade's recreate and `--scale worker=N` to fewer send
    SIGTERM: the worker's warm shutdown waits for the steps in hand (the thread pool enforces
    no Celery time limit), and at stop_grace_period Docker SIGKILLs it. A step killed in its
    provider call leaves an attempt in flight: the job stalls until the sweeper revives it,
    and a submission to a provider without idempotency ends `uncertain` (possibly billed) and
    fails over. Routine stops must not do that: the grace covers the longest call window
    (in-call retries included) of the catalogue in the image."""
    catalogue = load_catalogue(ROOT / "config" / "backends.yaml", env={})
    windows = {}
    for name in catalogue.names:
        adapter = make_adapter(catalogue.get(name))
        try:
            windows[name] = adapter.call_window_s
        finally:
            adapter.close()
    longest = max(windows, key=lambda n: windows[n])
    grace = seconds(str(compose()["services"]["worker"].get("stop_grace_period", "10s")))
    assert grace >= windows[longest] + STEP_SLACK_S, (
        f"worker stop_grace_period {grace:g} s: a warm shutdown is cut short in a call to "
        f"{longest}, whose window is {windows[longest]:g} s (plus {STEP_SLACK_S:g} s for the "
        "step around it)")


def test_every_service_rotates_its_logs() -> None:
    """Docker's default json-file driver keeps a container's output for ever: the workers'
    JSON lines would fill the host's disk. Each service caps its logs."""
    unbounded = []
    for name, svc in compose()["services"].items():
        logging = svc.get("logging") or {}
        options = logging.get("options") or {}
        if logging.get("driver") not in ("json-file", "local") or not options.get("max-size") \
                or not options.get("max-file"):
            unbounded.append(name)
    assert unbounded == [], f"services whose logs grow without bound: {unbounded}"


def test_the_secrets_reach_only_the_roles_that_use_them() -> None:
    """Flower (a web page that can shut workers down) and the simulator (fake providers)
    were given the whole shared environment: the database URL with its password and the
    secret key that opens every stored webhook and channel secret."""
    services = compose()["services"]
    secrets = ("ORCH_DATABASE_URL", "ORCH_SECRET_KEY")
    for name in ("flower", "simulator"):
        env = services[name]["environment"]
        assert not [k for k in secrets if k in env], name
    assert "ORCH_REDIS_URL" in services["flower"]["environment"]
    for name in ("migrate", "api", "worker", "beat"):
        env = services[name].get("environment", {})
        assert all(k in env for k in secrets), name
