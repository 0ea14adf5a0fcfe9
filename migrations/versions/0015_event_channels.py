"""Job event notifications on a channel per job and one per tenant

Migration 0013's ``orch_emit_job_event`` woke listeners on one channel, ``orch_job_events``,
so every API process holding a stream was sent every event of every job and parsed each
notification only to find it watched none of them: with 200 job streams open, the API's
CPU per submission rose from 3.4 to 4.7 ms (bench/streams.py), and stayed high once the
streams closed, as the process kept listening.

Now each event is sent on ``orch_job_<job id, 32 hex digits>`` and on
``orch_tenant_<md5 of the tenant>`` (a channel name is at most 63 bytes; a tenant name may
be 64), with the same payload; an API process listens on the channels of the jobs and
tenants it streams at that moment (``orchestrator.events.hub``). API processes of the
previous release, which listen on ``orch_job_events``, are not woken after this migration:
replace them with it.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_EMIT_0013: str = importlib.import_module("migrations.versions.0013_job_events")._EMIT

_ONE_CHANNEL = """    PERFORM pg_notify('orch_job_events', json_build_object(
        't', p_tenant, 'j', p_job, 's', v_seq, 'p', v_pos)::text);"""
_WATCHERS = """    v_payload := json_build_object('t', p_tenant, 'j', p_job, 's', v_seq, 'p', v_pos)::text;
    PERFORM pg_notify('orch_job_' || replace(p_job::text, '-', ''), v_payload);
    PERFORM pg_notify('orch_tenant_' || md5(p_tenant), v_payload);"""


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"migration 0015: expected {old!r} once in 0013's function")
    return text.replace(old, new)


_EMIT = _replace_once(
    _replace_once(_EMIT_0013, _ONE_CHANNEL, _WATCHERS),
    "    v_pos bigint;\n", "    v_pos bigint;\n    v_payload text;\n")


def upgrade() -> None:
    op.execute(_EMIT)


def downgrade() -> None:
    op.execute(_EMIT_0013)
