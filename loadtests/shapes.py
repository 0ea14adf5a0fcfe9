"""Load shapes. Each reads locust's common options: ``-u`` (peak users), ``-r`` (spawn
rate, users/s) and ``-t`` (run time), so one command line sizes any of them.

- ``ramp``: a staircase to the peak: 25, 50, 75 % of the users for a fifth of the run each,
  then all of them for the last two fifths.
- ``spike``: a tenth of the users; from 30 % to 60 % of the run all of them, started within
  about five seconds; then a tenth again (does the system recover?).
- ``soak``: all the users, ramped at the spawn rate, for the whole run.
- ``failover``: all the users; at 30 % of the run one backend goes down (simulator
  ``POST /_control/<backend> {"mode": "down"}``), at 65 % it comes back up, so failover is
  measured under load.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import requests
from locust import LoadTestShape

log = logging.getLogger("loadtests")

Tick = tuple[int, float] | None


class Shape(LoadTestShape):
    abstract: ClassVar[bool] = True
    use_common_options: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.peak_users = 0

    def sizes(self) -> tuple[int, float, float]:
        """(peak users, spawn rate, run time in seconds) from the command line."""
        assert self.runner is not None
        o = self.runner.environment.parsed_options
        users = int(getattr(o, "num_users", None) or 50)
        rate = float(getattr(o, "spawn_rate", None) or 10)
        run_time = float(getattr(o, "run_time", None) or 60)
        return users, rate, run_time

    def tick(self) -> Tick:
        users, rate, run_time = self.sizes()
        t = self.get_run_time()  # type: ignore[no-untyped-call]
        current = self.get_current_user_count()  # type: ignore[no-untyped-call]
        self.peak_users = max(self.peak_users, current)
        if t >= run_time:
            return None
        return self.at(t / run_time, users, rate)

    def at(self, progress: float, users: int, rate: float) -> Tick:
        """Users and spawn rate at ``progress`` (0..1) of the run."""
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """What the summary says about the shape."""
        return {"shape": self.name, "peak_users": self.peak_users}

    def stop(self) -> None:
        """The test stops (also when interrupted): put back what the shape changed."""


class Ramp(Shape):
    abstract = False
    name = "ramp"

    def at(self, progress: float, users: int, rate: float) -> Tick:
        step = min(4, int(progress * 5) + 1)
        return max(1, users * step // 4), rate


class Spike(Shape):
    abstract = False
    name = "spike"

    def at(self, progress: float, users: int, rate: float) -> Tick:
        base = max(1, users // 10)
        fast = max(rate, users / 5)
        if 0.3 <= progress < 0.6:
            return users, fast
        return base, fast


class Soak(Shape):
    abstract = False
    name = "soak"

    def at(self, progress: float, users: int, rate: float) -> Tick:
        return users, rate


class Failover(Shape):
    """Takes ``LOAD_DOWN_BACKEND`` down at 30 % of the run and up again at 65 %."""

    abstract = False
    name = "failover"
    DOWN_AT, UP_AT = 0.30, 0.65

    def __init__(self) -> None:
        super().__init__()
        from traffic import Settings, load_credentials

        settings = Settings.from_env()
        self.backend = settings.down_backend
        self.sim_url = load_credentials(settings.credentials)["simulator_url"].rstrip("/")
        self.mode = "up"
        self.changes: list[dict[str, str]] = []

    def at(self, progress: float, users: int, rate: float) -> Tick:
        if self.DOWN_AT <= progress < self.UP_AT and self.mode == "up" and not self.changes:
            self.set_mode("down")
        elif progress >= self.UP_AT and self.mode == "down":
            self.set_mode("up")
        return users, rate

    def set_mode(self, mode: str) -> None:
        started = time.monotonic()
        r = requests.post(f"{self.sim_url}/_control/{self.backend}", json={"mode": mode},
                          timeout=10)
        r.raise_for_status()
        self.mode = mode
        at = datetime.now(UTC).isoformat()
        self.changes.append({"mode": mode, "at": at})
        log.info("backend %s %s at %s (control answered in %.0f ms)", self.backend, mode, at,
                 (time.monotonic() - started) * 1000)

    def report(self) -> dict[str, Any]:
        return {**super().report(), "backend": self.backend, "changes": self.changes}

    def stop(self) -> None:
        if self.mode != "up":
            self.set_mode("up")


SHAPES: dict[str, type[Shape]] = {s.name: s for s in (Ramp, Spike, Soak, Failover)}
