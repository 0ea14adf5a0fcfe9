"""What a backend accepts: its declared ``params`` merged with the standard parameters of its
kinds, checked against the job spec and its price model.

Each kind has standard parameters, the job spec's own (``orchestrator.domain.jobs``)::

    video  prompt, duration_s (number 1..600, required), resolution (enum, default 720p)
    image  prompt, n (integer 1..10, default 1), size (string WxH, default 1024x1024)
    text   prompt, max_tokens (integer 1..32768, default 512)

A backend accepts the standard parameters of its kinds, narrowed to what its price model can
price (resolutions with a multiplier, sizes with a price, durations up to ``max_duration_s``),
plus whatever its ``params`` declare. Declaring a standard parameter may narrow its range, not
widen it, nor change whether it is required or its default: the job spec fills defaults in
before the estimate is priced. ``priced`` is what the price model reads (per_second: duration_s,
resolution; per_image: n, size; per_token: prompt, max_tokens; per_request and
per_compute_second: nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.jobs import (
    MAX_IMAGES,
    MAX_OUTPUT_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_VIDEO_SECONDS,
    RESOLUTIONS,
    ImageInput,
    Kind,
    TextInput,
    VideoInput,
)
from orchestrator.domain.params import FieldError, ParamSpec, ParamType, fmt_num

# request-body keys an adapter sets itself: a parameter of that name would override them
RESERVED: dict[str, frozenset[str]] = {
    "openai": frozenset({"model", "messages", "stream", "stream_options", "response_format"}),
    "predictions": frozenset(),
}


def _std(**fields: Any) -> ParamSpec:
    return ParamSpec.model_validate(fields)


_PROMPT = _std(type="string", required=True, max_length=MAX_PROMPT_CHARS)
STANDARD: dict[Kind, dict[str, ParamSpec]] = {
    Kind.VIDEO: {
        "prompt": _PROMPT,
        "duration_s": _std(type="number", required=True, min=1, max=MAX_VIDEO_SECONDS),
        "resolution": _std(type="enum", choices=RESOLUTIONS,
                           default=VideoInput.model_fields["resolution"].default),
    },
    Kind.IMAGE: {
        "prompt": _PROMPT,
        "n": _std(type="integer", min=1, max=MAX_IMAGES,
                  default=ImageInput.model_fields["n"].default),
        "size": _std(type="string", max_length=11, default=ImageInput.model_fields["size"].default),
    },
    Kind.TEXT: {
        "prompt": _PROMPT,
        "max_tokens": _std(type="integer", min=1, max=MAX_OUTPUT_TOKENS,
                           default=TextInput.model_fields["max_tokens"].default),
    },
}
# which kinds each standard parameter belongs to (prompt: all of them)
_STANDARD_KINDS: dict[str, tuple[Kind, ...]] = {
    name: tuple(k for k in STANDARD if name in STANDARD[k]) for ps in STANDARD.values()
    for name in ps
}


def price_limits(price: Any) -> tuple[frozenset[str], dict[str, dict[str, Any]]]:
    """What a price model (``catalogue.Price``) reads, and how it narrows the standard
    parameters; this mirrors ``pricing.quantities``/``price_quantities``."""
    model = price.model
    if model == "per_second":
        mults = price.resolution_multipliers
        narrow: dict[str, dict[str, Any]] = {
            "resolution": {"choices": tuple(r for r in RESOLUTIONS if r in mults)}}
        if price.max_duration_s is not None:
            narrow["duration_s"] = {"max": min(MAX_VIDEO_SECONDS, price.max_duration_s)}
        return frozenset({"duration_s", "resolution"}), narrow
    if model == "per_image":
        sizes = tuple(price.usd_per_image)
        return frozenset({"n", "size"}), {
            "size": {"type": ParamType.ENUM, "max_length": None, "choices": sizes}}
    if model == "per_token":  # the input tokens are estimated from the prompt
        return frozenset({"prompt", "max_tokens"}), {}
    return frozenset(), {}


def resolve(
    kinds: tuple[Kind, ...], protocol: str, price: Any, declared: Mapping[str, ParamSpec]
) -> dict[Kind, dict[str, ParamSpec]]:
    """Per kind, every parameter a backend accepts (``priced`` filled in). FieldError (path
    ``params.<name>[.<field>]``) when a declaration contradicts the job spec, the price or the
    protocol."""
    priced, narrow = price_limits(price)
    model = price.model
    bounds: dict[str, ParamSpec] = {}
    for kind in kinds:
        for name, std in STANDARD[kind].items():
            bounds[name] = ParamSpec.model_construct(**{
                **dict(std), **narrow.get(name, {}), "priced": name in priced})
    merged: dict[str, ParamSpec] = {}
    for name, p in declared.items():
        where = f"params.{name}"
        if name in RESERVED.get(protocol, ()):
            raise FieldError(where, f"reserved: the {protocol} adapter sets {name} itself")
        is_priced = name in priced
        if p.priced is not None and p.priced != is_priced:
            verb = "depends" if is_priced else "does not depend"
            raise FieldError(f"{where}.priced", f"the {model} price {verb} on {name}")
        std_kinds = _STANDARD_KINDS.get(name)
        if std_kinds is None:
            merged[name] = ParamSpec.model_construct(**{**dict(p), "priced": False})
        elif name not in bounds:
            raise FieldError(where, f"a {'/'.join(std_kinds)} job parameter; this backend runs "
                                    f"no {'/'.join(std_kinds)} jobs")
        else:
            merged[name] = _within(where, name, p, bounds[name])
    tables: dict[Kind, dict[str, ParamSpec]] = {}
    for kind in kinds:
        table = {n: merged.get(n, bounds[n]) for n in STANDARD[kind]}
        table.update({n: p for n, p in merged.items() if n not in _STANDARD_KINDS})
        tables[kind] = table
    return tables


def _within(where: str, name: str, p: ParamSpec, b: ParamSpec) -> ParamSpec:
    """A declared standard parameter, checked to lie within its bound ``b`` (the job spec's
    range narrowed by the price) and completed from it."""
    allowed = {b.type, ParamType.ENUM} if b.type is ParamType.STRING else {b.type}
    if p.type not in allowed:
        raise FieldError(f"{where}.type", f"{name} is {' or '.join(sorted(allowed))}")
    limit = "the most the job spec and the price allow"
    if p.type is ParamType.ENUM and b.type is ParamType.ENUM:
        bad = [c for c in p.choices or () if c not in (b.choices or ())]
        if bad:
            raise FieldError(f"{where}.choices",
                             f"{bad[0]} is not one of {', '.join(b.choices or ())} ({limit})")
    if p.min is not None and b.min is not None and p.min < b.min:
        raise FieldError(f"{where}.min", f"{fmt_num(p.min)} is below {fmt_num(b.min)} ({limit})")
    if p.max is not None and b.max is not None and p.max > b.max:
        raise FieldError(f"{where}.max", f"{fmt_num(p.max)} is above {fmt_num(b.max)} ({limit})")
    if p.max_length is not None and b.max_length is not None and p.max_length > b.max_length:
        raise FieldError(f"{where}.max_length",
                         f"{p.max_length} is above {b.max_length} ({limit})")
    if "required" in p.model_fields_set and p.required != b.required:
        raise FieldError(f"{where}.required",
                         f"the job spec makes {name} {'required' if b.required else 'optional'}")
    if "default" in p.model_fields_set and p.default != b.default:
        theirs = "no default" if b.default is None else f"the default {b.default}"
        raise FieldError(f"{where}.default", f"the job spec gives {name} {theirs}")
    string = p.type is ParamType.STRING
    return ParamSpec.model_construct(
        type=p.type,
        min=b.min if p.min is None else p.min,
        max=b.max if p.max is None else p.max,
        max_length=(b.max_length if p.max_length is None else p.max_length) if string else None,
        choices=p.choices, required=b.required, default=b.default, priced=b.priced,
    )
