"""OpenAI-compatible protocol: ``POST {base}/v1/chat/completions`` (text) and
``POST {base}/v1/images/generations`` (image). Synchronous: one call returns the final result.
The request carries the backend's declared parameters only (catalogue ``params``): the prompt
as the user message (chat) or ``prompt`` (images), the others as top-level fields.

What the answers may be, as OpenAI and the servers that copy its API give them:

* chat: an ``id`` (without one, the idempotency key names the call, as for images);
  ``usage`` with ``prompt_tokens`` and ``completion_tokens`` priced by the catalogue, else
  ``cost_usd``, else none at all (``usage`` missing or null, or its counts missing): the
  result is kept, ``unpriced``, and the chain charges the attempt's worst case. A refusal
  (``message.refusal`` with no content, or ``finish_reason: "content_filter"`` with none) is
  a ``content_policy`` job fault, returned as a failed result carrying what the call billed.
  No content and no refusal (vLLM's ``content: null`` when a reasoning model's thinking
  used up ``max_tokens``) is the empty text; ``content`` as a list of chunks (Mistral's
  reasoning models) is the text of its ``text`` chunks.
* images: each ``url``, or ``b64_json`` (gpt-image models answer only so) passed on as a
  ``data:`` URL.

The model's text, a refusal's text and an image's data are never logged or put in an error.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.backends.answers import warn_once, whole_count
from orchestrator.backends.base import PollResult, Submission
from orchestrator.backends.errors import BackendFault, JobFault
from orchestrator.backends.http import HttpAdapter, is_provider_id
from orchestrator.domain.base64text import standard_base64
from orchestrator.domain.inputs import provider_input
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage

DEFAULT_MAX_TOKENS = 512
DEFAULT_IMAGE_SIZE = "1024x1024"
# the media type of a b64_json image, by the ``output_format`` its answer (or request) names
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg",
               "webp": "image/webp"}
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")



class OpenAIAdapter(HttpAdapter):
    synchronous = True

    def submit(self, spec: JobSpec, idempotency_key: str) -> Submission:
        kind = str(spec.kind)
        call = {"text": self._chat, "image": self._images}.get(kind)
        if call is not None:
            try:
                return call(provider_input(self.backend, spec.kind, spec.input),
                            idempotency_key)
            except BackendFault as exc:  # a 2xx answer we cannot read: the work was done
                if exc.code != "malformed_response":
                    raise
                raise self.unreadable_creation(exc) from None
        raise BackendFault(
            f"{self.name}: the openai protocol does not serve {kind} jobs",
            code="unsupported_kind", backend=self.name,
        )

    def poll(self, external_id: str) -> PollResult:
        raise BackendFault(
            f"{self.name}: synchronous backend, nothing to poll; submit again with the same "
            "idempotency key to fetch the result",
            code="poll_unsupported", backend=self.name,
        )

    def cancel(self, external_id: str) -> PollResult | None:
        return None  # a synchronous call cannot be stopped once sent

    # -- text -------------------------------------------------------------------------------

    def _chat(self, inp: dict[str, Any], key: str) -> Submission:
        # the prompt only: the budget hold's token estimate is computed from it
        messages = [{"role": "user", "content": str(inp.get("prompt", ""))}]
        body: dict[str, Any] = {
            "model": self.backend.provider_model or self.name,
            "messages": messages,
            "max_tokens": int(inp.get("max_tokens") or DEFAULT_MAX_TOKENS),
        }
        body.update(_extra(inp, body, "prompt"))
        data = self.request("POST", "/v1/chat/completions", json=body, idempotency_key=key,
                            creates=True)
        ext_id = _call_id(data, key)
        choices = data.get("choices")
        if choices == []:
            return self._no_choice(data, ext_id)
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise self.malformed("no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise self.malformed("no message")
        finish_reason = choices[0].get("finish_reason")
        content = message.get("content")
        if isinstance(content, list):  # Mistral's reasoning models: thinking and text chunks
            content = self._chunks_text(content)
        if content is not None and not isinstance(content, str):
            raise self.malformed("message content is not text")
        refused = _refused(content, message.get("refusal"), finish_reason)
        used, cost, reported, unpriced = self._chat_bill(data)
        if refused is not None:
            # the provider refused the prompt, and billed the call: the job fails (another
            # backend would refuse it too), charged that bill; the refusal's text is dropped
            fault = JobFault(f"{self.name} refused by content policy ({refused})",
                             code="content_policy", backend=self.name)
            return Submission(external_id=ext_id, result=PollResult(
                status="failed", usage=used, cost_micros=cost, reported_cost_micros=reported,
                error=fault, provider_status=refused, unpriced=unpriced))
        # no content (null or left out) and no refusal: a model that gave no text (vLLM's
        # answer when max_tokens ran out in a reasoning model's thinking) is read as the
        # empty text OpenAI's own models answer then, and charged its bill; taken for an
        # unreadable answer, it was reconciled as a lost one and paid again elsewhere
        output = {"text": content or "", "finish_reason": finish_reason}
        result = PollResult(
            status="succeeded", output=output, usage=used, cost_micros=cost,
            reported_cost_micros=reported, provider_status="succeeded", unpriced=unpriced,
        )
        return Submission(external_id=ext_id, result=result)

    def _chunks_text(self, chunks: list[Any]) -> str:
        """The text of a ``content`` given as chunks (Mistral's Magistral models:
        ``[{"type": "thinking", "thinking": [...]}, {"type": "text", "text": "..."}]``): its
        ``text`` chunks joined (a chunk without a ``type`` is text, as Mistral defaults it);
        the others (the model's reasoning, references) are no part of the answer."""
        parts: list[str] = []
        for chunk in chunks:
            if not isinstance(chunk, dict):
                raise self.malformed("a content chunk is not an object")
            if chunk.get("type", "text") != "text":
                continue
            text = chunk.get("text")
            if not isinstance(text, str):
                raise self.malformed("a text chunk has no text")
            parts.append(text)
        return "".join(parts)

    def _no_choice(self, data: dict[str, Any], ext_id: str) -> Submission:
        """A chat answer whose ``choices`` is empty: the call was made, and billed, and gave
        nothing. The provider's failure (another backend may do better), charged the bill it
        carries (its worst case without one, as any billed answer), as an image answer
        without images is; taken for a lost answer, it would go uncharged while the provider
        bills it."""
        used, cost, reported, unpriced = self._chat_bill(data)
        return Submission(external_id=ext_id, result=PollResult(
            status="failed", usage=used, cost_micros=cost, reported_cost_micros=reported,
            error=BackendFault(f"{self.name}: answered without a choice", code="empty_output",
                               backend=self.name),
            provider_status="succeeded", unpriced=unpriced))

    def _chat_bill(self, data: dict[str, Any]
                   ) -> tuple[Usage | None, int | None, int | None, bool]:
        """(usage, cost, the provider's cost_usd, unpriced) of a chat answer. Token counts
        are priced; without them (no ``usage``, a null one, or one without the counts) the
        provider's ``cost_usd`` is the bill; without that too, the answer is unpriced. A
        ``usage`` or a count that is there but not what the API says is unreadable."""
        usage = data.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise self.malformed("usage is not an object")
        counts = [None, None] if usage is None else [usage.get("prompt_tokens"),
                                                     usage.get("completion_tokens")]
        if any(c is not None and whole_count(c) is None for c in counts):
            raise self.malformed("usage token counts are not non-negative integers")
        prompt_tokens, completion_tokens = (None if c is None else whole_count(c)
                                            for c in counts)
        if prompt_tokens is not None and completion_tokens is not None:
            used = Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens)
            cost, reported = self.cost(used, data.get("cost_usd"))
            return used, cost, reported, False
        cost, reported = self.cost(None, data.get("cost_usd"))
        if cost is None:
            warn_once((self.name, "unpriced"), "backend answer carries no usage and no "
                      "cost_usd; such attempts are charged their worst case backend=%s",
                      self.name)
            return None, None, None, True
        return None, cost, reported, False

    # -- images -----------------------------------------------------------------------------

    def _images(self, inp: dict[str, Any], key: str) -> Submission:
        size = str(inp.get("size") or DEFAULT_IMAGE_SIZE)
        n = int(inp.get("n") or 1)
        body = {"model": self.backend.provider_model or self.name,
                "prompt": str(inp.get("prompt", "")), "n": n, "size": size}
        body.update(_extra(inp, body))
        data = self.request("POST", "/v1/images/generations", json=body, idempotency_key=key,
                            creates=True)
        items = data.get("data")
        if not isinstance(items, list):
            raise self.malformed("no data")
        fmt = data.get("output_format") or body.get("output_format")
        media = IMAGE_TYPES.get(fmt.lower() if isinstance(fmt, str) else "", "image/png")
        urls: list[str] = []
        for item in items:
            url = item.get("url") if isinstance(item, dict) else None
            if isinstance(url, str) and url.strip():
                urls.append(url)
                continue
            b64 = item.get("b64_json") if isinstance(item, dict) else None
            if b64 is None and isinstance(url, str):
                continue  # an empty url: no image, as the predictions' empty output
            if b64 is None:
                raise self.malformed("an image has no url or b64_json")
            # line breaks and the URL-safe alphabet are base64 too; jsonb and a data: URL
            # then carry only the standard alphabet's characters: nothing else is stored
            if isinstance(b64, str):
                b64 = standard_base64(b64)
            if not isinstance(b64, str) or not _BASE64.fullmatch(b64):
                raise self.malformed("an image's b64_json is not base64")
            urls.append(f"data:{media};base64,{b64}")
        # billed by the items answered, an empty one too: the provider may have made (and
        # billed) an image it then failed to store; a budget must not learn of it later
        used = Usage(images=len(items), image_size=size)
        if not urls:
            # answered, and no image: the provider's failure (another backend may do
            # better), charged the answer's cost_usd, else its items' price (nothing for
            # ``data: []``)
            cost, reported = self.cost(None, data.get("cost_usd"))
            if cost is None:
                cost, _ = self.cost(used, None)
            return Submission(external_id=_call_id(data, key), result=PollResult(
                status="failed", usage=used, cost_micros=cost or 0,
                reported_cost_micros=reported,
                error=BackendFault(f"{self.name}: answered without images",
                                   code="empty_output", backend=self.name),
                provider_status="succeeded"))
        ext_id = _call_id(data, key)
        cost, reported = self.cost(used, data.get("cost_usd"))
        result = PollResult(
            status="succeeded", output={"images": urls}, usage=used, cost_micros=cost,
            reported_cost_micros=reported, provider_status="succeeded",
        )
        return Submission(external_id=ext_id, result=result)


def _extra(inp: dict[str, Any], body: dict[str, Any], *mapped: str) -> dict[str, Any]:
    """The declared parameters (``inp`` holds nothing else) the body does not carry yet, as
    top-level fields of the request (temperature, seed, quality, ...)."""
    return {k: v for k, v in inp.items() if k not in body and k not in mapped}


def _call_id(data: dict[str, Any], key: str) -> str:
    """The answer's ``id``; none, or one we cannot keep (a number, too long): the idempotency
    key names the call (a synchronous one is never polled by it)."""
    ext_id = data.get("id")
    return ext_id if is_provider_id(ext_id) else key


def _refused(content: str | None, refusal: Any, finish_reason: Any) -> str | None:
    """Why an answer without content is a refusal: ``refusal`` (OpenAI: ``message.refusal``
    set, ``content`` null), ``content_filter`` (Azure's finish reason, ``content`` null or
    empty); None for an answer with content (a filter that cut it short leaves its text and
    its finish reason), or one that is no refusal."""
    if content:
        return None
    if isinstance(refusal, str) and refusal:
        return "refusal"
    if finish_reason == "content_filter":
        return "content_filter"
    return None
