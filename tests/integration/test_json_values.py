"""json and jsonb values read back as they were written, through both of an engine's pools.

Their loader is pydantic-core's parser (orchestrator.store.engine.json_loads); these are
the values where a parser could differ from ``json``: integers beyond 64 bits, floats that
must round-trip, text outside ASCII, and nesting deeper than pydantic-core's own limit (read
by ``json`` then)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, text

from orchestrator.store.engine import autocommit, json_loads

VALUES: list[Any] = [
    {"id": 123456789012345678901234567890, "neg": -(2**70), "small": 7},
    {"f": 0.1, "g": 1e-300, "h": 123456.789e10, "z": -0.0},
    {"text": "é ☃ 𝄞 \u2028 \"quoted\" \\ / \t", "empty": "", "list": [None, True, False]},
    [1, [2, [3, {"k": "v"}]]],
    json.loads('{"a":' * 300 + "1" + "}" * 300),
]


def loader_of(driver_conn: Any) -> Any:
    """The function the connection reads jsonb with (psycopg: a loader class per scope)."""
    oid = driver_conn.adapters.types["jsonb"].oid
    return driver_conn.adapters.get_loader(oid, 0)._loads  # 0: the text format


@pytest.mark.parametrize("value", VALUES, ids=["big-ints", "floats", "text", "lists", "deep"])
def test_a_value_reads_back_equal_through_both_pools(engine: Engine, value: Any) -> None:
    with engine.begin() as conn:
        driver = conn.connection.driver_connection
        assert loader_of(driver) is json_loads
        got = driver.execute("SELECT %s::jsonb, %s::json",  # type: ignore[union-attr]
                             (Jsonb(value), json.dumps(value))).fetchone()
        assert got == (value, value)
        assert conn.execute(text("SELECT CAST(:v AS jsonb)"),
                            {"v": json.dumps(value)}).scalar_one() == value
    with autocommit(engine).connection() as auto:
        assert loader_of(auto) is json_loads
        got = auto.execute("SELECT %s::jsonb", (Jsonb(value),)).fetchone()
        assert got == (value,)


def test_a_failed_statement_never_shows_its_parameters(db: Engine) -> None:
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as info, db.connect() as conn:
        conn.execute(text("SELECT CAST(:secret AS text), 1 / 0"), {"secret": "hunter2-prompt"})
    assert "hunter2" not in str(info.value)
