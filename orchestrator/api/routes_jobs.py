"""/v1/jobs and /v1/quotes.

Visibility: a key sees its own tenant's jobs. An admin key may name another tenant with
``?tenant=`` on the reads and the cancel (the console's admin view); a tenant key naming
another tenant is ``403``, as for cost reports.

Idempotency: ``POST /v1/jobs`` with an ``Idempotency-Key`` the tenant already used answers
**202** with the existing job (and ``Idempotent-Replayed: true``) when the body is the same,
**409 conflict** when it differs; a new job answers **202**.
"""


import logging
import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from sqlalchemy import text
from starlette.background import BackgroundTask

from orchestrator.api.bodies import UniqueKeysRoute
from orchestrator.api.context import AUTH_ERRORS, ApiContext, _err
from orchestrator.api.errors import Forbidden, ResultExpired, ResultNotReady
from orchestrator.api.responses import JobJSONResponse
from orchestrator.api.schemas import JobBody, JobListOut, JobOut, JobStatus, QuoteOut, ResultOut
from orchestrator.api.security import Principal
from orchestrator.api.views import decode_cursor, encode_cursor
from orchestrator.errors import Conflict, InvalidRequest, NotFound
from orchestrator.service.views import job_resource, result_resource
from orchestrator.store import files
from orchestrator.store import jobs as repo

log = logging.getLogger("orchestrator.api")

_EXPIRED = text("SELECT result_expired_at FROM jobs WHERE id = :id")
_EXPIRED_OF = text("SELECT result_expired_at FROM jobs WHERE id = :id AND tenant = :t")
JobId = Annotated[uuid.UUID, Path(description="the job id")]
TenantQuery = Annotated[str | None, Query(
    pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    description="admin: whose jobs (default: the key's own tenant); others: their own only")]
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: _err("tenant= names another tenant (admin only)")}


def acting_tenant(p: Principal, tenant: str | None) -> str:
    """The tenant whose jobs a request reads or cancels: the key's own, or for an admin key
    the one ``tenant=`` names."""
    if tenant is None or tenant == p.tenant:
        return p.tenant
    if not p.admin:
        raise Forbidden("a tenant key sees its own tenant's jobs only")
    return tenant


def router(ctx: ApiContext) -> APIRouter:
    c = ctx.container

    r = APIRouter(prefix="/v1", route_class=UniqueKeysRoute, tags=["jobs"], responses=AUTH_ERRORS)
    principal = ctx.principal_dep()
    Caller = Annotated[Principal, Depends(principal)]

    def load(job_id: uuid.UUID, tenant: str) -> dict[str, Any]:
        with c.engine.begin() as conn:
            job = repo.get_job(conn, job_id)
            if job is None or job.tenant != tenant:
                raise NotFound(f"no job {job_id}", job_id=str(job_id))
            return job_resource(job, repo.attempts(conn, job_id))

    @r.post(
        "/jobs", status_code=202, response_model=JobOut,
        summary="Submit a job",
        response_description="the new job; or, for an Idempotency-Key already used with the "
                             "same body, the same job (with Idempotent-Replayed: true)",
        responses={
            202: {"headers": {
                "Location": {"required": True, "schema": {"type": "string"},
                             "description": "the job's path, /v1/jobs/{id}: where to poll it"},
                "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]},
                                        "description": "true: the job an earlier submission "
                                                       "with this Idempotency-Key made"}}},
            402: _err("a covering budget cannot hold the job's worst-case cost"),
            409: _err("Idempotency-Key reused with a different body"),
        },
    )
    def submit(
        spec: JobBody,
        p: Caller,
        request: Request,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                               pattern=r"^[\x21-\x7e]+$")
        ] = None,
    ) -> JobJSONResponse:
        if len(request.headers.getlist("idempotency-key")) > 1:
            # one would be used and the other dropped without a word (the header reads the
            # first): refused, as a query parameter given twice is
            raise InvalidRequest("header.Idempotency-Key: given more than once (it takes one "
                                 "value)", field="header.Idempotency-Key")
        admission = c.submitter.admit(p.tenant, spec, idempotency_key)
        # RFC 9110 §15.3.3: a 202 points to where the request's status is followed; a path,
        # not a URL built from the client's Host header
        where = {"Location": f"/v1/jobs/{admission.job.id}"}
        if admission.created:
            # The start message goes once the answer has, so the producer does not wait for
            # the broker: the job row is its outbox (the sweeper starts a job whose message
            # never went).
            return JobJSONResponse(job_resource(admission.job, []), status_code=202,
                                   headers=where,
                                   background=BackgroundTask(c.submitter.start, admission))
        # 202 as the first answer was (the contract's "same key and body: same job"), so a
        # client that retries after a lost answer reads the replay as it would have read it
        return JobJSONResponse(load(admission.job.id, p.tenant), status_code=202,
                               headers={**where, "Idempotent-Replayed": "true"})

    @r.get("/jobs/{job_id}", response_model=JobOut, summary="One job",
           responses={404: _err("no such job (or not yours)"), **FORBIDDEN})
    def get_job(job_id: JobId, p: Caller, tenant: TenantQuery = None) -> JobJSONResponse:
        return JobJSONResponse(load(job_id, acting_tenant(p, tenant)))

    @r.get("/jobs/{job_id}/result", response_model=ResultOut,
           summary="A succeeded job's output and cost breakdown (or a cancelled or "
                   "deadline-failed one's whose provider finished anyway)",
           responses={404: _err("no such job (or not yours)"),
                      409: _err("the job has no result (yet): details.status"),
                      410: _err("the result was dropped after the retention period"),
                      **FORBIDDEN})
    def get_result(job_id: JobId, p: Caller, tenant: TenantQuery = None) -> dict[str, Any]:
        whose = acting_tenant(p, tenant)
        with c.engine.begin() as conn:
            job = repo.get_job(conn, job_id)
            if job is None or job.tenant != whose:
                raise NotFound(f"no job {job_id}", job_id=str(job_id))
            # a job that ended before its attempt (cancelled, or failed by its deadline) has
            # one when the provider finished anyway (charged in full)
            late = repo.ended_before_its_attempt(job)
            if job.status != "succeeded" and not late:
                raise ResultNotReady(f"job {job_id} is {job.status}; a result comes with "
                                     "success", job_id=str(job_id), status=job.status)
            expired = conn.execute(_EXPIRED, {"id": job_id}).scalar()
            if expired is not None:
                raise ResultExpired(f"the result of job {job_id} was dropped on "
                                    f"{expired.isoformat()} (retention)", job_id=str(job_id))
            attempts = repo.attempts(conn, job_id)
            if late and job.result is None:
                why = ("an attempt may still end: should its provider finish it anyway, its "
                       "output comes here" if any(a.outcome is None for a in attempts)
                       else "no provider finished its work")
                raise ResultNotReady(f"job {job_id} is {job.status} and has no result; {why}",
                                     job_id=str(job_id), status=job.status)
        keep = c.settings.result_retention_days
        expires = (job.finished_at + timedelta(days=keep)
                   if keep > 0 and job.finished_at is not None else None)
        return result_resource(job, attempts, expires)

    @r.get("/jobs/{job_id}/result/files/{n}", response_class=Response,
           summary="A file of a job's result (data the provider sent inline)",
           responses={200: {"content": {"application/octet-stream": {}},
                            "description": "the file, with its media type"},
                      404: _err("no such job or file (or not yours)"),
                      410: _err("the result was dropped after the retention period"),
                      **FORBIDDEN})
    def get_result_file(job_id: JobId, n: Annotated[int, Path(ge=0, le=100_000)], p: Caller,
                        tenant: TenantQuery = None) -> Response:
        whose = acting_tenant(p, tenant)
        with c.engine.begin() as conn:
            found = files.read(conn, job_id, n, whose)
            if found is None:
                expired = conn.execute(_EXPIRED_OF, {"id": job_id, "t": whose}).scalar()
                if expired is not None:
                    raise ResultExpired(f"the result of job {job_id} was dropped on "
                                        f"{expired.isoformat()} (retention)",
                                        job_id=str(job_id))
                raise NotFound(f"no file {n} of job {job_id}", job_id=str(job_id))
        media, content = found
        inline = files.INLINE_TYPES.fullmatch(media) is not None
        return Response(content, media_type=media if inline else "application/octet-stream",
                        headers={
                            "Content-Disposition": f'{"inline" if inline else "attachment"}; '
                                                   f'filename="{job_id}-{n}"',
                            # a file never changes; the key's tenant alone may keep it
                            "Cache-Control": "private, max-age=86400, immutable",
                            # the provider's bytes are never a page of ours, whatever a
                            # browser would sniff in them
                            "X-Content-Type-Options": "nosniff",
                            "Content-Security-Policy": "default-src 'none'; sandbox"})

    @r.get("/jobs", response_model=JobListOut, summary="Own jobs, newest first",
           responses=FORBIDDEN)
    def list_jobs(
        p: Caller,
        status: Annotated[JobStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=400)] = None,
        tenant: TenantQuery = None,
    ) -> JobJSONResponse:
        owner = acting_tenant(p, tenant)
        before = decode_cursor(cursor) if cursor else None
        with c.engine.begin() as conn:
            rows = repo.list_jobs(conn, owner, status=status, limit=limit + 1,
                                  before=before)
            page = rows[:limit]
            attempts = repo.attempts_of_jobs(conn, [j.id for j in page])
            items = [job_resource(j, attempts[j.id]) for j in page]
        nxt = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
        return JobJSONResponse({"items": items, "next_cursor": nxt})

    @r.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a job",
            responses={404: _err("no such job (or not yours)"),
                       409: _err("the job already finished otherwise"), **FORBIDDEN})
    def cancel(job_id: JobId, p: Caller, tenant: TenantQuery = None) -> JobJSONResponse:
        owner = acting_tenant(p, tenant)
        job = c.runner.cancel(job_id, owner)
        if job is None:
            raise NotFound(f"no job {job_id}", job_id=str(job_id))
        if job.status != "cancelled" and job.is_final:
            raise Conflict(f"job {job_id} already {job.status}", job_id=str(job_id),
                           status=job.status)
        return JobJSONResponse(load(job_id, owner))

    @r.post("/quotes", response_model=QuoteOut, summary="Dry-run routing (no side effects)",
            tags=["quotes"])
    def quote(spec: JobBody, p: Caller) -> dict[str, Any]:
        return c.submitter.quote(spec).to_quote()

    return r
