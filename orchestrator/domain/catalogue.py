"""The backend catalogue (``config/backends.yaml``) and its schema.

A bad catalogue fails at start with one line naming the file, the backend and the field::

    config/backends.yaml: backend 'vid-draft': price.usd_per_second: Input should be
    greater than or equal to 0

(one line, wrapped here; 0 is a valid price).

Prices are written in USD in the file and kept as exact decimals; pricing turns them into
integer pico-USD rates (``rate_pico``) so that estimates are exact integer arithmetic.

``params`` declares the inputs a backend accepts (name: type, range, required, default,
priced): ``orchestrator.domain.params``. Without it a backend accepts its kinds' standard
parameters, narrowed to what its price can price (``orchestrator.domain.accepts``). Only
accepted inputs reach the provider.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.domain.accepts import resolve
from orchestrator.domain.jobs import RESOLUTIONS, Kind, Tier
from orchestrator.domain.params import PARAM_NAME_RE, FieldError, ParamSpec
from orchestrator.errors import ConfigurationError, bad_port, shown_scheme

PICO_PER_USD = 10**12
MULT_SCALE = 10**6
DEFAULT_ENV = {"ORCH_SIMULATOR_URL": "http://127.0.0.1:8100"}
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE_RE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")

UsdRate = Annotated[Decimal, Field(ge=0, le=1_000_000, allow_inf_nan=False)]
# strict: YAML's true is an int to pydantic, and "max_concurrency: true" loaded as 1
Concurrency = Annotated[int, Field(ge=1, le=1_000_000, strict=True)]


def _not_bool(v: object) -> object:
    # YAML's true is 1.0 to a float field: "read_s: true" loaded as a one-second timeout
    if isinstance(v, bool):
        raise ValueError("must be a number, not true or false")
    return v


Number = Annotated[float, BeforeValidator(_not_bool)]


def to_pico(usd: Decimal, what: str) -> int:
    """Exact integer pico-USD; more than 12 decimal places is refused."""
    scaled = usd * PICO_PER_USD
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{what}: at most 12 decimal places, got {usd}")
    return int(scaled)


class Protocol(StrEnum):
    PREDICTIONS = "predictions"
    OPENAI = "openai"


Idempotency = Literal["inflight", "completed", "none"]
"""What the provider does with a repeated request carrying the same Idempotency-Key:
``inflight``: answers it from the first, even while the first still runs; ``completed``: only
once the first has finished (a repeat while it runs is new, paid work); ``none``: every
request is new, paid work. Unknown providers are taken at their worst: ``none``."""


class Timeouts(BaseModel):
    """``read_s``: the longest one request may take to answer, its whole answer included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_s: Number = Field(default=2.0, gt=0, le=300)
    read_s: Number = Field(default=30.0, gt=0, le=3600)
    start_to_close_s: Number = Field(default=600.0, gt=0, le=7 * 24 * 3600)


class PerSecondPrice(BaseModel):
    """Video: seconds x usd_per_second x resolution multiplier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["per_second"]
    usd_per_second: UsdRate
    resolution_multipliers: dict[str, Annotated[Decimal, Field(gt=0, le=1000)]] = Field(
        default_factory=lambda: {r: Decimal(1) for r in RESOLUTIONS}, min_length=1
    )
    max_duration_s: Number | None = Field(default=None, gt=0, allow_inf_nan=False)  # none: omit it

    @field_validator("resolution_multipliers")
    @classmethod
    def _mults(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        for res, m in v.items():
            if res not in RESOLUTIONS:
                raise ValueError(f"unknown resolution {res!r} (one of {', '.join(RESOLUTIONS)})")
            if m * MULT_SCALE != (m * MULT_SCALE).to_integral_value():
                raise ValueError(f"multiplier for {res}: at most 6 decimal places, got {m}")
        return v

    @cached_property
    def rate_pico(self) -> int:
        return to_pico(self.usd_per_second, "usd_per_second")

    @cached_property
    def mults(self) -> dict[str, int]:
        """Resolution multipliers scaled by MULT_SCALE."""
        return {r: int(m * MULT_SCALE) for r, m in self.resolution_multipliers.items()}

    @model_validator(mode="after")
    def _scaled(self) -> PerSecondPrice:
        _ = self.rate_pico, self.mults
        return self


class PerImagePrice(BaseModel):
    """Image: n x usd_per_image[size]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["per_image"]
    usd_per_image: dict[str, UsdRate] = Field(min_length=1)

    @field_validator("usd_per_image")
    @classmethod
    def _sizes(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        for size in v:
            if not _SIZE_RE.match(size):
                raise ValueError(f"size keys look like 1024x1024, got {size!r}")
        return v

    @cached_property
    def rate_pico(self) -> dict[str, int]:
        return {s: to_pico(p, f"usd_per_image[{s}]") for s, p in self.usd_per_image.items()}

    @model_validator(mode="after")
    def _scaled(self) -> PerImagePrice:
        _ = self.rate_pico
        return self


class PerTokenPrice(BaseModel):
    """Text: input and output tokens, each priced per 1000."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["per_token"]
    usd_per_1k_input: UsdRate
    usd_per_1k_output: UsdRate

    @cached_property
    def in_pico_1k(self) -> int:
        return to_pico(self.usd_per_1k_input, "usd_per_1k_input")

    @cached_property
    def out_pico_1k(self) -> int:
        return to_pico(self.usd_per_1k_output, "usd_per_1k_output")

    @model_validator(mode="after")
    def _scaled(self) -> PerTokenPrice:
        _ = self.in_pico_1k, self.out_pico_1k
        return self


class PerRequestPrice(BaseModel):
    """A flat price per request, whatever the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["per_request"]
    usd_per_request: UsdRate

    @cached_property
    def rate_pico(self) -> int:
        return to_pico(self.usd_per_request, "usd_per_request")

    @model_validator(mode="after")
    def _scaled(self) -> PerRequestPrice:
        _ = self.rate_pico
        return self


class PerComputeSecondPrice(BaseModel):
    """The provider's run time (Replicate's hardware price: ``metrics.predict_time`` x
    usd_per_second), billed whether the run succeeded, failed or was cancelled. Nothing in
    the job says how long it will run: the worst case is the backend's
    ``timeouts.start_to_close_s``, past which the run is cancelled (a lower one holds less)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["per_compute_second"]
    usd_per_second: UsdRate

    @cached_property
    def rate_pico(self) -> int:
        return to_pico(self.usd_per_second, "usd_per_second")

    @model_validator(mode="after")
    def _scaled(self) -> PerComputeSecondPrice:
        _ = self.rate_pico
        return self


Price = Annotated[
    PerSecondPrice | PerImagePrice | PerTokenPrice | PerRequestPrice | PerComputeSecondPrice,
    Field(discriminator="model"),
]

# which price model can price which kind of job (per_request prices anything)
_PRICE_KINDS: dict[str, frozenset[Kind]] = {
    "per_second": frozenset({Kind.VIDEO}),
    "per_image": frozenset({Kind.IMAGE}),
    "per_token": frozenset({Kind.TEXT}),
    "per_request": frozenset(Kind),
    "per_compute_second": frozenset(Kind),
}
# price models whose every run is billed, failed or cancelled ones too (under the others a
# failure is charged only when the provider's answer carries a bill, e.g. a billed refusal)
BILLS_FAILED_RUNS: frozenset[str] = frozenset({"per_compute_second"})
# price models only one protocol's answers carry the usage of
_PRICE_PROTOCOLS: dict[str, Protocol] = {"per_compute_second": Protocol.PREDICTIONS}


class Defaults(BaseModel):
    """``defaults``' backend keys, checked as a backend's are: a bad one loaded while every
    backend set its own, and met the first backend that did not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrency: Concurrency = 100
    idempotency: Idempotency = "none"


class BackendSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    protocol: Protocol
    base_url: str
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kinds: tuple[Kind, ...] = Field(min_length=1)
    tier: Tier
    price: Price
    timeouts: Timeouts = Timeouts()
    idempotency: Idempotency = "none"
    provider_model: str | None = Field(
        default=None, min_length=1, max_length=256,
        description="openai protocol: the request's model (default: the backend's name); "
                    "predictions: the request's version (Replicate's owner/model, "
                    "owner/model:version or version id; unset: none is sent)")
    max_concurrency: Concurrency = 100
    expected_latency_ms: Number | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="prior for routing until latency has been observed",
    )
    params: dict[str, ParamSpec] = Field(
        default_factory=dict, description="declared input parameters (domain.params)"
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            # never the value: ${VAR} expansion may have put a key in it
            raise ValueError(f"must be an http(s):// URL, got {shown_scheme(v)!r}")
        # a URL the HTTP client cannot send to loaded, and failed every call of the backend
        # (nor is it quoted here)
        if any(c.isspace() for c in v):
            raise ValueError("must be a URL, without spaces")
        parts = urlsplit(v)
        if not parts.hostname:
            raise ValueError("must be an http(s):// URL with a host")
        if bad_port(parts):
            raise ValueError("its port is not a number from 1 to 65535")
        base, mark, query = v.partition("?")
        scheme, _, rest = base.partition("://")
        authority, slash, path = rest.partition("/")
        # "${ORCH_SIMULATOR_URL}/vid-draft" with a URL ending in "/" gives "//vid-draft",
        # which the provider's router does not match: empty path segments are dropped (not
        # the "//" of a URL carried in the path, as a gateway's "/proxy/https://…")
        path = re.sub("(?<!:)/{2,}", "/", slash + path).rstrip("/")
        return f"{scheme}://{authority}{path}{mark}{query}"

    @field_validator("kinds")
    @classmethod
    def _unique_kinds(cls, v: tuple[Kind, ...]) -> tuple[Kind, ...]:
        if len(set(v)) != len(v):
            raise ValueError("kinds must not repeat")
        return v

    @field_validator("price")
    @classmethod
    def _price_fits_kinds(cls, v: Price, info: ValidationInfo) -> Price:
        allowed = _PRICE_KINDS[v.model]
        bad = [k.value for k in info.data.get("kinds", ()) if k not in allowed]
        if bad:
            raise ValueError(f"model {v.model} cannot price {', '.join(bad)} jobs")
        only = _PRICE_PROTOCOLS.get(v.model)
        protocol = info.data.get("protocol")
        if only is not None and protocol is not None and protocol is not only:
            raise ValueError(f"model {v.model} needs the {only.value} protocol: {protocol.value} "
                             "answers report no run time")
        return v

    @field_validator("params")
    @classmethod
    def _param_names(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name in v:
            if not PARAM_NAME_RE.match(name):
                raise FieldError(name, "a parameter name is a letter or _, then letters, "
                                       "digits or _ (at most 64)")
        return v

    @model_validator(mode="after")
    def _params_fit(self) -> BackendSpec:
        _ = self.accepts  # a contradiction with the job spec or the price fails the load
        return self

    @cached_property
    def accepts(self) -> dict[Kind, dict[str, ParamSpec]]:
        """Per kind, the input parameters this backend accepts (``priced`` filled in)."""
        return resolve(self.kinds, self.protocol.value, self.price, self.params)

    def api_key(self, env: Mapping[str, str] | None = None) -> str | None:
        """The key from the environment variable named by ``api_key_env`` (never logged)."""
        if self.api_key_env is None:
            return None
        return (os.environ if env is None else env).get(self.api_key_env)


class Catalogue(BaseModel):
    model_config = ConfigDict(frozen=True)

    backends: tuple[BackendSpec, ...]
    source: str = "<memory>"

    @cached_property
    def by_name(self) -> dict[str, BackendSpec]:
        return {b.name: b for b in self.backends}

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        if len(self.by_name) != len(self.backends):
            dup = next(n for n in self.names if self.names.count(n) > 1)
            raise ValueError(f"backend {dup!r} is listed twice")
        return self

    def get(self, name: str) -> BackendSpec:
        """The backend called ``name``; KeyError if the catalogue has none."""
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"no backend {name!r} in the catalogue") from None

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __iter__(self) -> Iterator[BackendSpec]:  # type: ignore[override]
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.backends)

    def for_kind(self, kind: Kind) -> tuple[BackendSpec, ...]:
        return tuple(b for b in self.backends if kind in b.kinds)


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ORCH_SIMULATOR_URL has a built-in default."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in DEFAULT_ENV:
            return DEFAULT_ENV[name]
        raise ValueError(f"environment variable {name} is not set")

    return _VAR_RE.sub(sub, value)


def _fail(path: str, backend: str | None, field: str | None, msg: str) -> ConfigurationError:
    where = [path]
    if backend is not None:
        where.append(f"backend {backend!r}")
    if field:
        where.append(field)
    return ConfigurationError(": ".join([*where, msg]), file=path, backend=backend, field=field)


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    # drop the discriminator tag pydantic puts in the location of a tagged union member
    loc = [str(p) for p in err["loc"] if p not in _PRICE_KINDS]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):  # a check that knows the field better than its location
        return ".".join([*loc, cause.path]), cause.message
    return ".".join(loc), str(err["msg"]).removeprefix("Value error, ")


def parse_catalogue(
    data: Any, *, source: str = "<memory>", env: Mapping[str, str] | None = None
) -> Catalogue:
    """Validate an already-parsed catalogue document (the YAML's content)."""
    env = os.environ if env is None else env
    if not isinstance(data, dict):
        raise _fail(source, None, None, "must be a mapping with a 'backends' list")
    unknown = set(data) - {"defaults", "backends"}
    if unknown:
        raise _fail(source, None, sorted(unknown)[0], "unknown top-level key")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise _fail(source, None, "defaults", "must be a mapping")
    try:
        base_timeouts = Timeouts.model_validate(defaults.get("timeouts") or {})
    except ValidationError as exc:
        field, msg = _first_error(exc)
        raise _fail(source, None, f"defaults.timeouts.{field}", msg) from None
    unknown = set(defaults) - {"timeouts", "max_concurrency", "idempotency"}
    if unknown:
        raise _fail(source, None, f"defaults.{sorted(unknown)[0]}", "unknown key")
    try:
        Defaults.model_validate({k: v for k, v in defaults.items() if k != "timeouts"})
    except ValidationError as exc:
        field, msg = _first_error(exc)
        raise _fail(source, None, f"defaults.{field}", msg) from None
    raw = data.get("backends")
    if not isinstance(raw, list) or not raw:
        raise _fail(source, None, "backends", "must be a non-empty list")
    specs: list[BackendSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        label = item.get("name") if isinstance(item, dict) else None
        label = str(label) if label is not None else f"#{i + 1}"
        if not isinstance(item, dict):
            raise _fail(source, label, None, "must be a mapping")
        doc = dict(item)
        doc["timeouts"] = {**base_timeouts.model_dump(), **(doc.get("timeouts") or {})}
        for key in ("max_concurrency", "idempotency"):
            if key not in doc and key in defaults:
                doc[key] = defaults[key]
        if isinstance(doc.get("base_url"), str):
            try:
                doc["base_url"] = expand_vars(doc["base_url"], env)
            except ValueError as exc:
                raise _fail(source, label, "base_url", str(exc)) from None
        try:
            spec = BackendSpec.model_validate(doc)
        except ValidationError as exc:
            field, msg = _first_error(exc)
            raise _fail(source, label, field or None, msg) from None
        if spec.name in seen:
            raise _fail(source, spec.name, "name", "duplicate backend name")
        seen.add(spec.name)
        specs.append(spec)
    return Catalogue(backends=tuple(specs), source=source)


def load_catalogue(path: str | Path, env: Mapping[str, str] | None = None) -> Catalogue:
    """Read and validate ``path``; ConfigurationError names the file, backend and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(str(p), None, None, f"cannot read the catalogue ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise _fail(str(p), None, None, f"not valid YAML{line}") from None
    return parse_catalogue(data, source=str(p), env=env)
