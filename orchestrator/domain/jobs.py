"""The job spec: what a producer asks for (the CONTRACT job body), validated per kind.

``JobSpec.input`` stays a plain dict, its kind's standard keys checked and normalised, with
defaults filled in::

    video: prompt, duration_s (1..600), resolution (480p|720p|1080p, default 720p)
    image: prompt, n (1..10, default 1), size ("WxH", default 1024x1024)
    text:  prompt, max_tokens (1..32768, default 512)

Other keys are kept here: whether they are allowed depends on the catalogue, whose backends
declare the parameters they accept (``domain.params``). Quotes and jobs refuse a field no
backend that could run the job declares (``domain.inputs.check_input``), routing leaves out a
backend that does not accept the input, and an adapter sends its backend's declared
parameters only.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.domain.events import EVENT_TYPES, TERMINAL_EVENTS
from orchestrator.domain.money import usd_to_micros


class Kind(StrEnum):
    VIDEO = "video"
    IMAGE = "image"
    TEXT = "text"


class Tier(StrEnum):
    """Quality tiers, ordered: draft < standard < premium."""

    DRAFT = "draft"
    STANDARD = "standard"
    PREMIUM = "premium"

    @property
    def rank(self) -> int:
        return _TIER_RANK[self]


_TIER_RANK = {Tier.DRAFT: 0, Tier.STANDARD: 1, Tier.PREMIUM: 2}


class Strategy(StrEnum):
    CHEAPEST = "cheapest"
    FASTEST = "fastest"
    BALANCED = "balanced"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


RESOLUTIONS = ("480p", "720p", "1080p")
MAX_VIDEO_SECONDS = 600
MAX_PROMPT_CHARS = 100_000
MAX_IMAGES = 10
MAX_OUTPUT_TOKENS = 32_768
_SIZE_RE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")
# How deeply ``input`` and ``metadata`` may nest objects and lists. A job resource carries
# them back in every answer, a few levels below its top, and JSON serializers stop at a depth
# of their own (pydantic-core's at about 250): near it, a job could be stored and then not
# written into an answer. This bound is far from it, and refused with the field's name.
MAX_NESTING = 32
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def nesting(value: Any) -> int:
    """How many objects and lists deep ``value`` is (a scalar: 0), walking without recursion
    and stopping once past :data:`MAX_NESTING`."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _bounded_nesting(field: str, value: dict[str, Any]) -> dict[str, Any]:
    if nesting(value) > MAX_NESTING:
        raise ValueError(f"{field} nests objects and lists deeper than {MAX_NESTING} levels")
    return value


# Values are taken by their JSON type, as a backend's declared parameters are: "8" is no
# number and true no 1 (coerced, "8" would be priced and held as 8 s, true as 1 s).
def finite_number(v: Any) -> Any:
    """A ``mode="before"`` validator of a number field: NaN and Infinity (which Python's JSON
    reader accepts) are refused as what they are, before the field's bounds would refuse
    NaN as "less than or equal to …"."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


JsonNumber = Annotated[float, Strict()]  # an integer is a number too
JsonInt = Annotated[int, Strict()]  # 2.0 is no integer
JsonBool = Annotated[bool, Strict()]


class _Input(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return v


class VideoInput(_Input):
    duration_s: JsonNumber = Field(ge=1, le=MAX_VIDEO_SECONDS)
    resolution: str = "720p"

    _finite = field_validator("duration_s", mode="before")(finite_number)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: str) -> str:
        if v not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {v!r}")
        return v


class ImageInput(_Input):
    n: JsonInt = Field(default=1, ge=1, le=MAX_IMAGES)
    size: str = "1024x1024"

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not _SIZE_RE.match(v):
            raise ValueError(f"size must look like 1024x1024, got {v!r}")
        return v


class TextInput(_Input):
    max_tokens: JsonInt = Field(default=512, ge=1, le=MAX_OUTPUT_TOKENS)


_INPUT_MODELS: dict[Kind, type[_Input]] = {
    Kind.VIDEO: VideoInput,
    Kind.IMAGE: ImageInput,
    Kind.TEXT: TextInput,
}


# Fields with a default where an explicit null can mean nothing but that default.
_NULL_MEANS_DEFAULT = ("tier", "strategy", "deadline_s", "priority", "webhook_events",
                       "metadata")


class JobSpec(BaseModel):
    """The job body of ``POST /v1/jobs`` and ``POST /v1/quotes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    input: dict[str, Any]
    tier: Tier = Tier.STANDARD
    strategy: Strategy = Strategy.CHEAPEST
    max_cost_usd: JsonNumber | None = Field(default=None, gt=0, le=1_000_000)
    backend: str | None = None
    deadline_s: JsonInt = Field(default=900, ge=1, le=7 * 24 * 3600)
    priority: Priority = Priority.NORMAL
    webhook_url: str | None = None
    # which of the job's events its webhook_url is sent (orchestrator.events.types)
    webhook_events: tuple[str, ...] = TERMINAL_EVENTS
    metadata: dict[str, Any] = Field(default_factory=dict)
    # the result cache: true, false, or None for the tenant's default (service.cache)
    cache: JsonBool | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # Clients in other languages send every optional field, null when unset (the
        # contract's own example does): null then means the default, not a type error.
        if isinstance(data, dict) and any(data.get(f, 0) is None for f in _NULL_MEANS_DEFAULT):
            return {k: v for k, v in data.items()
                    if not (k in _NULL_MEANS_DEFAULT and v is None)}
        return data

    _finite_cost = field_validator("max_cost_usd", mode="before")(finite_number)

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not _NAME_RE.match(v):
            raise ValueError(f"backend must be a catalogue name ([a-z0-9-]+), got {v!r}")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")) or len(v) > 2048:
            raise ValueError("webhook_url must be an http(s):// URL")
        return v

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, e in enumerate(v):  # "<field>[i]: " names the item, as details.field does
            if e not in EVENT_TYPES:
                raise ValueError(f"webhook_events[{i}]: unknown event {e!r}; one of "
                                 f"{', '.join(EVENT_TYPES)}")
        return tuple(dict.fromkeys(v))  # each once, in the order given

    @field_validator("input")
    @classmethod
    def _input_nesting(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _bounded_nesting("input", v)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        _bounded_nesting("metadata", v)
        project = v.get("project")
        if project is not None and (not isinstance(project, str) or not _PROJECT_RE.match(project)):
            # "<field>: " names the member, as the API's 422 does (details.field)
            raise ValueError(
                "metadata.project: must be 1-64 letters, digits, '_', '.' or '-'"
            )
        return v

    @model_validator(mode="after")
    def _check_input(self) -> JobSpec:
        model = _INPUT_MODELS[self.kind]
        try:
            parsed = model.model_validate(self.input)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            msg = str(first["msg"]).removeprefix("Value error, ")
            article = "an" if self.kind.value[0] in "aeiou" else "a"
            raise ValueError(f"input.{where}: {msg} (for {article} {self.kind.value} job)"
                             ) from None
        # frozen model: write the normalised input (defaults filled in) through __dict__
        self.__dict__["input"] = parsed.model_dump()
        return self

    @property
    def project(self) -> str | None:
        p = self.metadata.get("project")
        return p if isinstance(p, str) else None

    @property
    def max_cost_micros(self) -> int | None:
        return None if self.max_cost_usd is None else usd_to_micros(self.max_cost_usd)

    def typed_input(self) -> VideoInput | ImageInput | TextInput:
        parsed = _INPUT_MODELS[self.kind].model_validate(self.input)
        assert isinstance(parsed, VideoInput | ImageInput | TextInput)
        return parsed
