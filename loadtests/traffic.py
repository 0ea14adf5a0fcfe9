"""What the load test's users send and where they record what came back.

Nothing here imports the orchestrator: the locustfile runs under gevent's monkey-patching
and speaks to the system only through its HTTP API.

Tenants are organisations: ``lt-<run>-<nn>``. Every user of every class belongs to one (its
own API key for it, created in ``on_start``), so producers, dashboards, finance and
cancellers of one tenant share its rate limit and its budget, as in production. Every fourth
tenant gets a tight daily budget and meets 402 within seconds; the admin user tops tenants up
(and sometimes lowers a limit below what is already spent) while the run goes on.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Settings:
    """The run's knobs, from the environment (``loadtests/run.py`` sets them)."""

    credentials: Path
    run_id: str
    out_dir: Path
    tenants: int
    budget_usd: float
    tight_budget_usd: float
    down_backend: str

    @classmethod
    def from_env(cls) -> Settings:
        creds = os.environ.get("LOADTEST_CREDENTIALS", ".orchestrator/credentials.json")
        return cls(
            credentials=Path(creds),
            run_id=os.environ.get("LOADTEST_RUN_ID") or uuid.uuid4().hex[:8],
            out_dir=Path(os.environ.get("LOADTEST_OUT", "loadtests/results/last")),
            tenants=int(os.environ.get("LOAD_TENANTS", "20")),
            budget_usd=float(os.environ.get("LOAD_BUDGET_USD", "5000")),
            tight_budget_usd=float(os.environ.get("LOAD_TIGHT_BUDGET_USD", "20")),
            down_backend=os.environ.get("LOAD_DOWN_BACKEND", "vid-standard"),
        )

    def tenant(self, i: int) -> str:
        return f"lt-{self.run_id}-{i % self.tenants:02d}"

    def all_tenants(self) -> list[str]:
        return [self.tenant(i) for i in range(self.tenants)]

    def budget_of(self, i: int) -> float:
        """Daily limit of tenant ``i``: every fourth one is tight (402s come early)."""
        return self.tight_budget_usd if i % 4 == 0 else self.budget_usd

    def is_tight(self, tenant: str) -> bool:
        return int(tenant.rsplit("-", 1)[1]) % 4 == 0


def load_credentials(path: Path) -> dict[str, str]:
    creds: dict[str, str] = json.loads(path.read_text())
    return creds


# -- job bodies --------------------------------------------------------------------------------
# (weight, body) per kind and tier; prices are the shipped catalogue's (config/backends.yaml)
_PROMPTS = ("a paper boat on a river", "rain over a market street", "a fox in fresh snow",
            "a windmill at noon", "an orbiting space station")


def _video(tier: str, duration_s: int, resolution: str) -> dict[str, Any]:
    return {"kind": "video", "tier": tier,
            "input": {"prompt": random.choice(_PROMPTS), "duration_s": duration_s,
                      "resolution": resolution}}


def _image(tier: str, n: int, size: str) -> dict[str, Any]:
    return {"kind": "image", "tier": tier,
            "input": {"prompt": random.choice(_PROMPTS), "n": n, "size": size}}


def _text(tier: str, max_tokens: int) -> dict[str, Any]:
    return {"kind": "text", "tier": tier,
            "input": {"prompt": random.choice(_PROMPTS), "max_tokens": max_tokens}}


def job_body() -> dict[str, Any]:
    """One submission: video 40 % (draft/standard/premium), image 30 %, text 30 %."""
    pick = random.random()
    if pick < 0.20:
        body = _video("draft", random.choice((2, 4, 6)), random.choice(("480p", "720p")))
    elif pick < 0.35:
        body = _video("standard", random.choice((4, 8)), random.choice(("720p", "1080p")))
    elif pick < 0.40:
        body = _video("premium", random.choice((5, 10)), "1080p")
    elif pick < 0.60:
        body = _image("standard", random.randint(1, 4), random.choice(("512x512", "1024x1024")))
    elif pick < 0.70:
        body = _image("premium", random.randint(1, 2), "1024x1024")
    elif pick < 0.95:
        body = _text("standard", random.choice((64, 256, 512)))
    else:
        body = _text("premium", random.choice((256, 1024)))
    body["metadata"] = {"project": random.choice(("web", "mobile", "ads"))}
    return body


# -- what came back ----------------------------------------------------------------------------
@dataclass
class Recorder:
    """Per process: accepted job ids (appended to a file as they come, so a crashed run
    still tells which jobs were accepted), expected-outcome counters and each tenant's
    recent jobs (what dashboards poll and cancellers cancel)."""

    out_dir: Path
    outcomes: Counter[str] = field(default_factory=Counter)
    recent: dict[str, deque[str]] = field(default_factory=dict)
    _accepted: Any = None

    def accepted(self, tenant: str, job_id: str) -> None:
        if self._accepted is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"accepted-{os.getpid()}.txt"
            self._accepted = path.open("a", buffering=1)  # line-buffered
        self._accepted.write(job_id + "\n")
        self.outcomes["accepted"] += 1
        self.recent.setdefault(tenant, deque(maxlen=300)).append(job_id)

    def count(self, what: str, n: int = 1) -> None:
        self.outcomes[what] += n

    def recent_job(self, tenant: str, newest: bool = False) -> str | None:
        jobs = self.recent.get(tenant)
        if not jobs:
            return None
        return jobs[-1] if newest else random.choice(jobs)

    def flush(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"outcomes-{os.getpid()}.json"
        path.write_text(json.dumps(dict(self.outcomes), sort_keys=True))
        if self._accepted is not None:
            self._accepted.flush()
