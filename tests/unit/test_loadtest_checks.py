"""loadtests/checks.py: the budget sampler says when it could not check the budgets."""

from __future__ import annotations

import socket

from sqlalchemy import create_engine

from .loadtest_scripts import loadtest_module


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_a_sampler_that_never_read_the_budgets_is_a_miss_not_zero_overruns() -> None:
    engine = create_engine(f"postgresql+psycopg://u:p@127.0.0.1:{_closed_port()}/none",
                           connect_args={"connect_timeout": 2})
    sampler = loadtest_module("checks").BudgetSampler(engine)
    sampler.sample()
    sampler.sample()
    engine.dispose()

    assert (sampler.samples, sampler.errors, sampler.overruns) == (0, 2, [])
    assert sampler.unchecked() == "budgets unread at 2 of 2 samples: overruns unchecked then"


def test_a_sampler_that_read_every_time_has_nothing_to_say() -> None:
    sampler = loadtest_module("checks").BudgetSampler(create_engine("postgresql+psycopg://"))
    sampler.samples = 5
    assert sampler.unchecked() is None
