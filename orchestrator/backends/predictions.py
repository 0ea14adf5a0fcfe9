"""Create-then-poll predictions protocol (the shape of Replicate-like hosted-model APIs):

    POST {base}/v1/predictions              {"version": provider_model (when set),
                                             "input": {declared params}} -> {"id", "status"}
    GET  {base}/v1/predictions/{id}         -> {"status": starting|processing|succeeded|failed|
                                                canceled, "output", "error", "metrics", "cost_usd"}
    POST {base}/v1/predictions/{id}/cancel  -> the prediction
    GET  {base}/v1/predictions?idempotency_key=K -> {"results": [predictions created with the
                                                Idempotency-Key K, each naming it as
                                                "idempotency_key", newest first]}

The listing is how a submission whose answer was lost is found again (``lookup``); a
provider without it is still served, and such an attempt is reconciled by other means.

A succeeded prediction is charged the catalogue's price of the usage its ``metrics`` report
(``video_seconds``, ``resolution``, ``images``, ``image_size``, ``input_tokens`` and
``output_tokens``, or Replicate's ``input_token_count`` and ``output_token_count``; a
``per_compute_second`` backend's ``predict_time``; any other metric is ignored), else its
``cost_usd``. With neither (Replicate's answers carry no cost) its output is kept all the
same: the result is ``unpriced`` and the job chain charges the attempt's worst case. A failed
or cancelled one is charged the same way, and nothing when it reports neither (a
``per_compute_second`` backend's run time is its bill, whatever the outcome).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

from orchestrator.backends.answers import (
    CONTENT_POLICY_MARKERS,
    safe_token,
    warn_once,
    whole_count,
)
from orchestrator.backends.base import PollResult, Status, Submission
from orchestrator.backends.errors import BackendError, BackendFault, JobFault, LookupUnsupported
from orchestrator.backends.http import HttpAdapter, is_provider_id
from orchestrator.domain.catalogue import PerComputeSecondPrice, PerRequestPrice
from orchestrator.domain.inputs import provider_input
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage

# Statuses are read without regard to case, "-" and " " read as "_" ("In Progress", "timed-out").
# One not listed here is taken as "running": the provider named the work, so it is polled on
# (until start_to_close, then stopped) rather than dropped while it may still run and bill;
# a warning names it, once per backend and status.
STATUS_MAP: dict[str, Status] = {
    **dict.fromkeys(("starting", "processing", "queued", "queueing", "in_queue", "pending",
                     "submitted", "preparing", "running", "in_progress", "canceling",
                     "cancelling"), "running"),
    **dict.fromkeys(("succeeded", "success", "succeed", "successful", "completed",
                     "complete", "done", "finished"), "succeeded"),
    **dict.fromkeys(("failed", "fail", "failure", "error", "errored", "timed_out",
                     "timedout", "timeout", "expired"), "failed"),
    **dict.fromkeys(("canceled", "cancelled", "aborted", "canceled_by_user",
                     "cancelled_by_user"), "cancelled"),
}
JOB_FAULT_CODES = frozenset({"invalid_input", "bad_input", "validation_error"})
_USAGE_INT = ("images", "input_tokens", "output_tokens")
_USAGE_STR = ("resolution", "image_size")
# Replicate's names for a language model's token counts (read when ours are absent)
_USAGE_ALIASES = {"input_tokens": "input_token_count", "output_tokens": "output_token_count"}
# a float quoted as str() or String() writes it: up to 17 significant digits
_DECIMAL = re.compile(r"\d{1,10}(\.\d{1,20})?")
_DIGITS = re.compile(r"\d{1,12}")


def _numeral(value: Any, form: re.Pattern[str]) -> Any:
    """A metric a gateway sent as a string of digits (``"3.2"``) as the number it writes,
    as ``cost_usd`` is read; any other value as it came (a number, or what is refused).
    Refused, the whole answer would be unreadable: a finished poll's output lost, and the
    work paid again on another backend, for the quoting of a number."""
    if isinstance(value, str) and form.fullmatch(value):
        return float(value) if form is _DECIMAL else int(value)
    return value
# A refusal told in a string ``error`` (Replicate: "NSFW content detected. …"): only phrases
# that say so, not "safety", "moderation" or a bare "nsfw" ("NSFW checker crashed" is the
# backend's failure, and another backend may run the job)
_POLICY_TEXT = re.compile(
    r"\bnsfw content\b|\bcontent[ _](?:policy|filter)\b|\bflagged (?:as|by|for)\b")


class PredictionsAdapter(HttpAdapter):
    synchronous = False

    def submit(self, spec: JobSpec, idempotency_key: str) -> Submission:
        # only the parameters this backend declares: nothing else a caller sent is forwarded
        inp = provider_input(self.backend, spec.kind, spec.input)
        body: dict[str, Any] = {"input": inp}
        if self.backend.provider_model is not None:  # Replicate's "owner/model[:version]"
            body = {"version": self.backend.provider_model, **body}
        data = self.request("POST", "/v1/predictions", json=body,
                            idempotency_key=idempotency_key, creates=True)
        ext_id = data.get("id")
        if not is_provider_id(ext_id):
            raise self.unreadable_creation(self.malformed("no readable prediction id"))
        return Submission(external_id=ext_id)  # where it stands: the next poll reads it

    def lookup(self, reference: str) -> Submission | None:
        """``GET /v1/predictions?idempotency_key=…``: the newest prediction the provider
        lists as created with that key, with where it stands. Only a listed prediction that
        names the key as its own counts (a provider that ignores the filter and lists
        everything must not hand us another job's work): a provider with no such listing
        raises LookupUnsupported."""
        try:
            data = self.request("GET", f"/v1/predictions?idempotency_key={quote(reference)}",
                                call="lookup")
        except (BackendFault, JobFault) as exc:  # 4xx: no such listing here
            if exc.code == "malformed_response":
                # a 2xx we cannot read (a proxy's error page, a body cut short) says nothing
                # of the listing: the lookup is asked again, not given up for good, which on
                # a provider without de-duplication closes the attempt uncertain and pays
                # another backend for work this one may have done
                raise
            raise LookupUnsupported(
                f"{self.name}: the provider cannot list predictions by idempotency key "
                f"({exc.code})", backend=self.name) from None
        results = data.get("results")
        if not isinstance(results, list):
            raise LookupUnsupported(f"{self.name}: the prediction listing has no results",
                                    backend=self.name)
        for item in results:
            if isinstance(item, dict) and item.get("idempotency_key") == reference:
                ext_id = item.get("id")
                if not is_provider_id(ext_id):
                    raise self.malformed("a listed prediction has no readable id")
                return Submission(external_id=ext_id, result=self._result(item))
        if results:
            # Items that do not name the key, or name others: the provider ignored the
            # filter, and a page of someone else's work says nothing of ours (taken as "none
            # made", it would have the request sent again, and paid again).
            raise LookupUnsupported(f"{self.name}: the prediction listing ignores the "
                                    "idempotency_key filter", backend=self.name)
        return None

    def poll(self, external_id: str) -> PollResult:
        data = self.request("GET", f"/v1/predictions/{quote(external_id, safe='')}",
                            call="poll")
        return self._result(self._own(data, external_id))

    def cancel(self, external_id: str) -> PollResult:
        """The prediction as the cancel left it: ``cancelled`` (with what the provider billed
        for the part it ran), or as it had already finished, or still running while it
        stops."""
        data = self.request("POST", f"/v1/predictions/{quote(external_id, safe='')}/cancel",
                            call="cancel")
        return self._result(self._own(data, external_id))

    def _own(self, data: dict[str, Any], external_id: str) -> dict[str, Any]:
        """``data`` if it is the prediction asked for. One that names another id (a cache or
        a gateway in front of the provider answering for another request) is unreadable:
        taken as it is, another job's output, maybe another tenant's, would be delivered as
        this job's, and its bill charged to it. Without an ``id`` it is taken as asked."""
        own = data.get("id")
        if own is not None and not (isinstance(own, str | int) and not isinstance(own, bool)
                                    and str(own) == external_id):
            raise self.malformed("the prediction answered is not the one asked for")
        return data

    # -- parsing ----------------------------------------------------------------------------

    def _status(self, data: dict[str, Any]) -> tuple[Status, str]:
        raw = data.get("status")
        if not isinstance(raw, str):
            raise self.malformed("no status")
        shown = safe_token(raw) or "unknown"
        status = STATUS_MAP.get(raw.strip().lower().replace("-", "_").replace(" ", "_"))
        if status is None:
            self._unknown_status(shown)
            return "running", shown
        return status, shown

    def _unknown_status(self, shown: str) -> None:
        warn_once((self.name, "status", shown.lower()),
                  "backend status unknown; polled as running backend=%s provider_status=%s",
                  self.name, shown)

    def _result(self, data: dict[str, Any]) -> PollResult:
        status, raw = self._status(data)
        if status == "running":
            return PollResult(status="running", provider_status=raw)
        used = self._usage(data.get("metrics"))
        if isinstance(self.backend.price, PerComputeSecondPrice) and (
                used is None or used.compute_seconds is None):
            ran = _run_time(data)  # no predict_time: the run's own timestamps, where given
            if ran is not None:
                used = replace(used or Usage(), compute_seconds=ran)
        error: BackendError | None = None
        if status == "succeeded" and _nothing(data.get("output")):
            # done, and nothing delivered: the provider's failure (another backend may do
            # better), billed as its failures are, never taken for a lost answer
            status, error = "failed", BackendFault(
                f"{self.name}: succeeded without output", code="empty_output",
                backend=self.name)
        if status == "succeeded":
            if used is None and isinstance(self.backend.price, PerRequestPrice):
                used = Usage()  # a flat price needs no usage
            # usage we cannot price is passed over for the provider's cost_usd; with neither,
            # the result is kept and the chain charges the attempt's worst case
            cost, reported = self.cost(used, data.get("cost_usd"), lenient=True)
            if cost is None:
                warn_once((self.name, "unpriced"), "backend success without a bill we can "
                          "read; such attempts are charged their worst case backend=%s",
                          self.name)
            return PollResult(
                status="succeeded", output=data["output"], usage=used, cost_micros=cost,
                reported_cost_micros=reported, provider_status=raw, unpriced=cost is None,
            )
        # failed or canceled: billed only if the provider says so; usage it reports that
        # cannot be priced, without a cost_usd, is a bill that cannot be read
        cost, reported = self.cost(used, data.get("cost_usd"), lenient=True)
        if cost is None and used is not None:
            raise self.malformed("usage cannot be priced")
        if error is None and status == "failed":
            error = self._failure(data.get("error"))
        return PollResult(
            status=status, usage=used, cost_micros=cost or 0, reported_cost_micros=reported,
            error=error, provider_status=raw,
        )

    def _usage(self, metrics: Any) -> Usage | None:
        if metrics is None:
            return None
        if not isinstance(metrics, dict):
            raise self.malformed("metrics is not an object")
        fields: dict[str, Any] = {}
        seconds = {"video_seconds": "video_seconds"}
        if isinstance(self.backend.price, PerComputeSecondPrice):
            seconds["compute_seconds"] = "predict_time"  # else a timing, ignored
        for name, key in seconds.items():
            value = _numeral(metrics.get(key), _DECIMAL)
            if value is None:
                continue
            # NaN compares false; a huge int is refused before it is made a float
            in_range = isinstance(value, int | float) and 0 <= value <= 10**9
            if not in_range or isinstance(value, bool):
                raise self.malformed(f"{key} is not a non-negative number in range")
            fields[name] = float(value)
        for name in _USAGE_INT:
            key = name if metrics.get(name) is not None else _USAGE_ALIASES.get(name, name)
            value = _numeral(_numeral(metrics.get(key), _DIGITS), _DECIMAL)  # "10", "10.0"
            if value is not None:
                count = whole_count(value)
                if count is None:
                    raise self.malformed(f"{key} is not a non-negative integer")
                fields[name] = count
        for name in _USAGE_STR:
            value = metrics.get(name)
            if value is not None:
                if not isinstance(value, str):
                    raise self.malformed(f"{name} is not a string")
                # "720P", "1024X1024": the catalogue's names in another case; unmatched,
                # a success is charged its worst case instead of its bill
                fields[name] = value.strip().lower()
        return Usage(**fields) if fields else None

    def _failure(self, error: Any) -> BackendError:
        code = None
        if isinstance(error, dict):
            code = safe_token(error.get("code")) or safe_token(error.get("type"))
        elif isinstance(error, str) and _POLICY_TEXT.search(error.lower()):
            # a refusal told in words: the words are the provider's (they may echo the
            # prompt), so only our code is kept
            return JobFault(f"{self.name}: refused by content policy", code="content_policy",
                            backend=self.name)
        if code and any(m in code.lower() for m in CONTENT_POLICY_MARKERS):
            return JobFault(f"{self.name}: refused by content policy", code="content_policy",
                            backend=self.name, provider_code=code)
        if code and code.lower() in JOB_FAULT_CODES:
            return JobFault(f"{self.name} rejected the input", code="invalid_input",
                            backend=self.name, provider_code=code)
        fault = BackendFault(f"{self.name}: prediction failed", code="prediction_failed",
                             backend=self.name)
        if code:
            fault.details["provider_code"] = code
        return fault


def _nothing(output: Any) -> bool:
    """A succeeded prediction's ``output`` that delivers nothing: absent, null, an empty
    string, list or object, or a list of only such."""
    if output is None:
        return True
    if isinstance(output, str):
        return not output.strip()
    if isinstance(output, list):
        return all(_nothing(item) for item in output)
    if isinstance(output, dict):
        return not output
    return False


def _run_time(data: dict[str, Any]) -> float | None:
    """Seconds between a prediction's ``started_at`` and ``completed_at`` (Replicate's ISO 8601
    timestamps); None when either is missing or unreadable: the run time cannot be told."""
    started, completed = data.get("started_at"), data.get("completed_at")
    if not isinstance(started, str) or not isinstance(completed, str):
        return None
    try:
        seconds = (datetime.fromisoformat(completed) - datetime.fromisoformat(started)
                   ).total_seconds()
    except (ValueError, TypeError):  # unreadable, or one naive and one aware
        return None
    return seconds if 0 <= seconds <= 10**9 else None
