"""Server-Sent Events: ``GET /v1/jobs/{id}/events`` (one job, ends after its terminal event,
or after the late ``job.charged`` of an attempt still running when the job ended) and
``GET /v1/events`` (the tenant's feed, open until the client leaves).

Each message is ``id: <the event's id>``, ``event: <type>``, ``data: <the event as JSON>``.
A client that reconnects with ``Last-Event-ID`` (or ``?after=<seq>`` / ``?since=<cursor>``)
gets every event after it, none twice: a job stream resumes after that event's ``seq``, the
feed after that event's place (looked up from its id: the feed's own counters are never shown,
as they count every tenant's events). The events table is read on each wake-up
(``orchestrator.events.hub``), so a stream shows only what committed.

Streams and the API's edge: a GET has no body, so the body deadline never cuts a stream; an
open stream is one of uvicorn's connections (``ORCH_API_LIMIT_CONCURRENCY``) and one of the
process's ``ORCH_API_MAX_STREAMS`` (past it: 503 ``unavailable`` with ``Retry-After``); a
comment line every ``ORCH_EVENTS_PING_S`` keeps proxies and load balancers from closing an
idle one.
"""


import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette import EventSourceResponse, ServerSentEvent

from orchestrator.api.bodies import UniqueKeysRoute
from orchestrator.api.context import AUTH_ERRORS, ApiContext, _err
from orchestrator.api.errors import StreamsFull
from orchestrator.api.security import Principal
from orchestrator.errors import InvalidRequest, NotFound
from orchestrator.events.hub import EventHub
from orchestrator.events.store import (
    BIGINT_DIGITS,
    Event,
    FeedCursor,
    event_feed_cursor,
    event_seq,
    feed_events,
    feed_head_shown,
    job_events,
    job_owner,
    job_state,
)

JobId = Annotated[uuid.UUID, Path(description="the job id")]
# the feed's <txid>-<position> of earlier releases (ASCII digits: "²".isdigit() is true)
_LEGACY_CURSOR = re.compile(r"[0-9]{1,30}-[0-9]{1,30}")
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)]
_FINAL = ("succeeded", "failed", "cancelled")
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
          "description": "Server-Sent Events, one per job event"}}


_FEED_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}},
                      "application/json": {"schema": {
                          "type": "object", "required": ["items", "next_cursor"],
                          "properties": {"items": {"type": "array", "items": {"type": "object"}},
                                         "next_cursor": {"type": "string"}}}}},
          "description": "Server-Sent Events, one per job event; or, with Accept: "
                         "application/json, the events after the cursor (at most limit) and "
                         "next_cursor, the since of the next poll: always set (a feed has no "
                         "last page; with no new events it is the cursor given)"}}


class KeepAlive(ServerSentEvent):
    """A stream's keep-alive: one comment line, with no blank line after it. A blank line
    ends a message, and some clients (httpx-sse 0.4) then hand their reader an event without
    data for every ping once the stream has sent an ``id:``, which a reader expecting a
    job's event cannot parse. A comment line alone is ignored by every reader, as the SSE
    spec says, and still keeps proxies from closing the stream as idle."""

    def encode(self) -> bytes:
        return f": ping - {datetime.now(UTC).isoformat()}\r\n".encode()


def _message(ev: Event) -> ServerSentEvent:
    """``id:`` is the event's own id, as in its data: what a client de-duplicates on, and
    what it sends back as ``Last-Event-ID`` after a drop."""
    return ServerSentEvent(data=ev.body().decode(), event=ev.type, id=str(ev.id))


def _feed_message(ev: Event) -> ServerSentEvent:
    """As :func:`_message`, the data with the event's ``cursor`` (its place in the feed), as
    a JSON page's items have it."""
    data = json.dumps({**ev.payload(), "cursor": ev.feed_cursor}, separators=(",", ":"))
    return ServerSentEvent(data=data, event=ev.type, id=str(ev.id))


def router(ctx: ApiContext, hub: EventHub) -> APIRouter:
    c = ctx.container
    ping_s = c.settings.events_ping_s
    r = APIRouter(prefix="/v1", route_class=UniqueKeysRoute, tags=["events"], responses=AUTH_ERRORS)
    Caller = Annotated[Principal, Depends(ctx.principal_dep())]

    def admit_stream() -> None:
        if hub.streams >= c.settings.api_max_streams:
            raise StreamsFull("this API process has as many event streams open as it may; "
                              "retry after Retry-After, or poll: GET /v1/jobs/{id} for a job, "
                              "GET /v1/events with Accept: application/json for the feed")

    def read_job(job_id: uuid.UUID, after: int) -> tuple[bool, bool, list[Event]]:
        """(whether the job has ended, whether no event is to come, its events after
        ``after``). The state is read first: a job that ended with no attempt open and its
        hold finished has all its events committed (a late ``job.charged`` commits with the
        statement that finishes the hold), so they are read here."""
        with c.engine.connect() as conn:
            state = job_state(conn, job_id)
            events = job_events(conn, job_id, after)
        final = state is not None and state[0] in _FINAL
        return final, final and state is not None and not state[1], events

    def resume_seq(job_id: uuid.UUID, last: str) -> int:
        """The seq to resume after: an event's ``id`` (the stream's ``id:``, or what a webhook
        receiver or a JSON reader has), or a seq (the ``id:`` of earlier releases)."""
        if BIGINT_DIGITS.fullmatch(last):
            return int(last)
        try:
            event_id = uuid.UUID(last)
        except ValueError:
            event_id = None
        if event_id is not None:
            with c.engine.connect() as conn:
                seq = event_seq(conn, job_id, event_id)
            if seq is not None:
                return seq
        raise InvalidRequest("Last-Event-ID must be the id of one of the job's events (the id: "
                             "of a message of this stream) or a seq",
                             field="header.Last-Event-ID")

    def feed_resume(tenant: str, given: str, field: str) -> FeedCursor:
        """The feed place to resume after: one of the tenant's event ids (the stream's
        ``id:``, a JSON item's ``cursor`` or ``next_cursor``), or ``0``. An id the feed
        no longer holds (deleted after retention; or never the tenant's, which answers
        alike) resumes from its oldest event: a quiet tenant's stream reconnecting after a
        month gets what is kept (some of it again, an event whose webhook was pending when
        older ones went), never a refusal that would end its EventSource for good.

        A ``<txid>-<position>`` cursor of earlier releases resumes from the oldest event
        too, whatever it names: honoured, a made-up one would tell, by what it answers,
        where the feed of every tenant is (how many transactions and events all of them
        made, and when); refused, it would end for good the EventSource or the poller that
        holds one across an upgrade, where a repeat is what it de-duplicates anyway."""
        if given == "0" or _LEGACY_CURSOR.fullmatch(given):
            return (0, 0)
        try:
            event_id = uuid.UUID(given)
        except ValueError:
            raise InvalidRequest(
                f"{field}: must be 0 or the id of one of the tenant's events (a message's "
                "id:, a JSON page's next_cursor)", field=field) from None
        with c.engine.connect() as conn:
            found = event_feed_cursor(conn, tenant, event_id)
        return (0, 0) if found is None else found

    def owned(job_id: uuid.UUID, tenant: str) -> None:
        with c.engine.connect() as conn:
            owner = job_owner(conn, job_id)
        if owner is None or owner[0] != tenant:
            raise NotFound(f"no job {job_id}", job_id=str(job_id))

    @r.get("/jobs/{job_id}/events", summary="A job's events as Server-Sent Events",
           response_class=EventSourceResponse,
           responses={**_SSE_DOC, 204: {"description": "resumed after the job's terminal "
                                               "event (and a late charge), or a finished "
                                               "job with no event left: the stream has "
                                               "nothing more"},
                      404: _err("no such job (or not yours)"),
                      503: _err("too many streams open on this API process")})
    async def job_stream(
        job_id: JobId, p: Caller, last_event_id: LastEventId = None,
        after: Annotated[int | None, Query(ge=0, description="resume after this seq")] = None,
    ) -> Response:
        start = after or 0
        await to_thread.run_sync(owned, job_id, p.tenant)
        if last_event_id is not None and last_event_id.strip():
            start = await to_thread.run_sync(resume_seq, job_id, last_event_id.strip())
        _, over, rest = await to_thread.run_sync(read_job, job_id, start)
        if not rest and over:
            # resumed after the terminal event (and a late charge), or a finished job whose
            # events retention deleted: nothing will come. 204 is what stops an EventSource,
            # which reconnects after every 200 stream that ends (without a Last-Event-ID if
            # it got no id). Not while an attempt open at the end may still be billed: its
            # job.charged comes later, and an EventSource stopped by a 204 would never see it
            return Response(status_code=204, headers={"Cache-Control": "no-cache"})
        admit_stream()

        async def events() -> AsyncIterator[ServerSentEvent]:
            cursor = start
            key = KeyCheck(ctx, p, ping_s)
            hub.streams += 1
            try:
                for ev in rest:  # read above; what commits from now on is read below
                    cursor = ev.seq
                    yield _message(ev)
                if over:
                    return
                with hub.watch_job(job_id) as wake:
                    while True:
                        wake.clear()
                        if await key.revoked():
                            return
                        ended, done, batch = await to_thread.run_sync(read_job, job_id, cursor)
                        for ev in batch:  # a late charge after the terminal one too
                            cursor = ev.seq
                            yield _message(ev)
                        # the state is read before the events: done means its terminal event
                        # is sent (or behind the cursor), and a late charge too
                        if done:
                            return
                        # no timed re-read of a live job: PostgreSQL loses no notification
                        # while the listener is connected, and a reconnection wakes every
                        # stream; 200 streams opened together would otherwise read together.
                        # The timeout looks at the key, so a quiet job's stream ends too; and
                        # once the job has ended, at the job: an open attempt that concludes
                        # with no bill writes no event, so nothing would wake the stream
                        while not await _woken(wake, ping_s):
                            if await key.revoked():
                                return
                            if ended:
                                break
            finally:
                hub.streams -= 1

        return EventSourceResponse(events(), ping=ping_s, headers=_NO_BUFFERING,
                                   ping_message_factory=KeepAlive)

    @r.get("/events", summary="The tenant's job events: Server-Sent Events, or one page of "
           "JSON with Accept: application/json", response_class=EventSourceResponse,
           responses={**_FEED_DOC, 503: _err("too many streams open on this API process")})
    async def tenant_stream(
        p: Caller, last_event_id: LastEventId = None,
        since: Annotated[str | None, Query(
            max_length=100,
            description="0: from the oldest kept event; an event id of this feed: after it; "
                        "absent: from now")] = None,
        limit: Annotated[int, Query(ge=1, le=500, description="JSON: events per page")] = 100,
        accept: Annotated[str | None, Header(max_length=1000)] = None,
    ) -> Response:
        # an empty Last-Event-ID is none (an EventSource whose last id was empty sends none)
        resumed = last_event_id is not None and bool(last_event_id.strip())
        given = last_event_id if resumed else since
        # named as the parameter's other faults are (too long: pydantic's ``query.since``)
        field = "header.Last-Event-ID" if resumed else "query.since"
        cursor: FeedCursor | None = None
        if given is not None:
            cursor = await to_thread.run_sync(feed_resume, p.tenant, given.strip(), field)

        def catch_up(after: FeedCursor, n: int = 500) -> list[Event]:
            with c.engine.connect() as conn:
                return feed_events(conn, p.tenant, after, n)

        def head() -> tuple[FeedCursor, str]:
            with c.engine.connect() as conn:
                return feed_head_shown(conn, p.tenant)

        if _wants_json(accept):
            if cursor is not None and given is not None:
                start, shown = cursor, given.strip()
            else:
                start, shown = await to_thread.run_sync(head)
            page = await to_thread.run_sync(catch_up, start, limit)
            return JSONResponse({"items": [{**ev.payload(), "cursor": ev.feed_cursor}
                                           for ev in page],
                                 "next_cursor": page[-1].feed_cursor if page else shown},
                                headers=_BY_ACCEPT)
        admit_stream()

        async def events() -> AsyncIterator[ServerSentEvent]:
            key = KeyCheck(ctx, p, ping_s)
            hub.streams += 1
            try:
                async with hub.watch_tenant(p.tenant) as queue:
                    if cursor is None:  # from now: "now" as the client's Last-Event-ID
                        at, shown = await to_thread.run_sync(head)
                        # an id with no data moves an EventSource's Last-Event-ID and fires
                        # no event: a drop before the first event resumes from here, not
                        # from a later "now" that would skip what came in between
                        yield ServerSentEvent(id=shown)
                    else:
                        at = cursor
                    while batch := await to_thread.run_sync(catch_up, at):
                        for ev in batch:
                            at = (ev.txid, ev.position)
                            yield _feed_message(ev)
                    while True:
                        if await key.revoked():
                            return
                        try:
                            item = await asyncio.wait_for(queue.get(), ping_s)
                        except TimeoutError:
                            continue
                        if item is None:
                            return  # fell behind: the client resumes from its last id
                        if (item.txid, item.position) <= at:
                            continue  # read already by the catch-up
                        at = (item.txid, item.position)
                        yield _feed_message(item)
            finally:
                hub.streams -= 1

        return EventSourceResponse(events(), ping=ping_s,
                                   headers={**_NO_BUFFERING, **_BY_ACCEPT},
                                   ping_message_factory=KeepAlive)

    return r


class KeyCheck:
    """Whether the key an open stream was admitted with has been revoked since, asked at
    most once per ``every`` seconds (the stream's ping period): a stream is authenticated
    once, at its start, and a feed stays open until its client leaves, so without this a
    revoked key would go on reading its tenant's events. A revoked key's stream ends; its
    reconnection is ``401``, which stops an EventSource and the SDK."""

    def __init__(self, ctx: ApiContext, p: Principal, every: float) -> None:
        self.ctx, self.p, self.every = ctx, p, every
        self.checked = time.monotonic()  # the gate has just verified it

    async def revoked(self) -> bool:
        now = time.monotonic()
        if now - self.checked < self.every:
            return False
        self.checked = now
        live = self.ctx.auth.live_known(self.p)
        if live is not None:
            return not live
        try:
            live = await to_thread.run_sync(self.ctx.auth.ask_live, self.p)
        except SQLAlchemyError:
            # the database blinked: nothing reaches the stream without it either; ask again
            # at the next period rather than cut every stream of the process
            return False
        return not live


async def _woken(wake: asyncio.Event, timeout: float) -> bool:
    """Wait for ``wake`` at most ``timeout`` seconds; whether it was set."""
    try:
        await asyncio.wait_for(wake.wait(), timeout)
    except TimeoutError:
        return False
    return True


def _wants_json(accept: str | None) -> bool:
    """A client that prefers JSON to the event stream gets one page of JSON: it names
    ``application/json`` with a weight above 0 and above the stream's (RFC 9110 §12.5.1;
    unnamed, the stream weighs 0, and on a tie the stream wins)."""
    weights: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[media.lower()] = max(q, weights.get(media.lower(), 0.0))
    json_q = weights.get("application/json", 0.0)
    return json_q > 0 and json_q > weights.get("text/event-stream", 0.0)


# a reverse proxy (nginx) must pass each event on as it comes
_NO_BUFFERING = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
# the feed is JSON or a stream by the Accept header: both say so (RFC 9110 §12.5.5)
_BY_ACCEPT = {"Vary": "Accept"}
