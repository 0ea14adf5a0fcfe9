"""Declared input parameters (a catalogue backend's ``params``): the inputs it accepts, with
their types and ranges, and which ones its price depends on.

    params:                      # a text backend, priced per token
      prompt:      {type: string, required: true, max_length: 4000, priced: true}
      max_tokens:  {type: integer, min: 1, max: 4096, priced: true}
      temperature: {type: number, min: 0, max: 2, default: 1}
      seed:        {type: integer, min: 0, max: 4294967295}
      style:       {type: enum, choices: [terse, chatty]}

Fields: ``type`` (string | integer | number | boolean | enum); ``min``/``max`` (integer and
number); ``max_length`` (string); ``choices`` (enum, strings); ``required`` (default false);
``default`` (sent to the provider when a job leaves the parameter out); ``priced`` (whether the
price depends on it; optional, and checked against the price model when given).

Values are checked strictly by JSON type (``"8"`` is not an integer; an integer is a number;
true is not an integer). What a backend accepts in the end, its declarations merged with its
kinds' standard parameters, is ``orchestrator.domain.accepts``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,32}$")
_BIG = 1.7976931348623157e308  # an open bound still refuses inf and NaN


class ParamType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    ENUM = "enum"


class FieldError(ValueError):
    """A catalogue error that knows its field: ``path`` extends pydantic's location of it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class ParamSpec(BaseModel):
    """One declared input parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType
    min: StrictInt | StrictFloat | None = None
    max: StrictInt | StrictFloat | None = None
    max_length: int | None = Field(default=None, ge=1, le=10_000_000, strict=True)  # no true
    choices: tuple[StrictStr, ...] | None = Field(default=None, min_length=1, max_length=1000)
    required: bool = False
    default: StrictBool | StrictInt | StrictFloat | StrictStr | None = None
    priced: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        t = self.type
        for name in ("min", "max"):
            v = getattr(self, name)
            if v is None:
                continue
            if t not in (ParamType.INTEGER, ParamType.NUMBER):
                raise FieldError(name, "only integer and number parameters have a range")
            if t is ParamType.INTEGER and not isinstance(v, int):
                raise FieldError(name, f"must be an integer, got {v!r}")
            if not math.isfinite(v):
                raise FieldError(name, "must be a finite number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldError("max", f"{fmt_num(self.max)} is below min {fmt_num(self.min)}")
        if self.max_length is not None and t is not ParamType.STRING:
            raise FieldError("max_length", "only string parameters have a max_length")
        if t is ParamType.ENUM and self.choices is None:
            raise FieldError("choices", "an enum parameter lists its choices")
        if t is not ParamType.ENUM and self.choices is not None:
            raise FieldError("choices", "only enum parameters have choices")
        if self.choices is not None and len(set(self.choices)) != len(self.choices):
            raise FieldError("choices", "choices must not repeat")
        if self.default is not None:
            if self.required:
                raise FieldError("default", "a required parameter has no default")
            if not checker(self)(self.default):
                raise FieldError("default", f"{self.default!r} is not {self.expected}")
        return self

    @property
    def expected(self) -> str:
        """What the parameter accepts, in words: ``an integer in [0, 10]``."""
        t = self.type
        if t is ParamType.STRING:
            n = self.max_length
            return "a string" + (f" of at most {n} characters" if n is not None else "")
        if t is ParamType.BOOLEAN:
            return "true or false"
        if t is ParamType.ENUM:
            return "one of " + ", ".join(self.choices or ())
        noun = "an integer" if t is ParamType.INTEGER else "a number"
        if self.min is not None and self.max is not None:
            return f"{noun} in [{fmt_num(self.min)}, {fmt_num(self.max)}]"
        if self.min is not None:
            return f"{noun} >= {fmt_num(self.min)}"
        return noun + (f" <= {fmt_num(self.max)}" if self.max is not None else "")

    def accepts(self, value: Any) -> bool:
        return checker(self)(value)

    def refusal(self, name: str, value: Any) -> str:
        """Why ``value`` is refused, for a routing exclusion; never shows a long string."""
        t = self.type
        where = f"input.{name}"
        if t is ParamType.ENUM and type(value) is str:
            shown = value if _TOKEN_RE.match(value) else got(value)
            return f"{where} {shown} not in [{', '.join(self.choices or ())}]"
        if t in (ParamType.INTEGER, ParamType.NUMBER) and _type_ok(t, value):
            lo = "" if self.min is None else fmt_num(self.min)
            hi = "" if self.max is None else fmt_num(self.max)
            return f"{where} {got(value)} not in [{lo or '-inf'}, {hi or 'inf'}]"
        if t is ParamType.STRING and type(value) is str:
            return f"{where} is longer than {self.max_length} characters"
        return f"{where} is {got(value)}, expected {self.expected}"


def checker(p: ParamSpec) -> Callable[[Any], bool]:
    """A fast predicate for ``p`` (routing keeps one per parameter). Strict JSON types: a
    bool is not an integer, an integer is a number."""
    t = p.type
    if t is ParamType.STRING:
        n = p.max_length
        if n is None:
            return lambda v: type(v) is str
        return lambda v: type(v) is str and len(v) <= n
    if t is ParamType.ENUM:
        choices = frozenset(p.choices or ())
        return lambda v: type(v) is str and v in choices
    if t is ParamType.BOOLEAN:
        return lambda v: type(v) is bool
    lo = -_BIG if p.min is None else p.min
    hi = _BIG if p.max is None else p.max
    if t is ParamType.INTEGER:
        return lambda v: type(v) is int and lo <= v <= hi
    return lambda v: (type(v) is float or type(v) is int) and lo <= v <= hi


def got(value: Any) -> str:
    """The value as an error message may show it: numbers as they are, short tokens quoted,
    anything else by its JSON type (a long string may be a prompt)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int or type(value) is float:
        return fmt_num(value)
    if type(value) is str:
        return f'"{value}"' if _TOKEN_RE.match(value) else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a value of another type"


def _type_ok(t: ParamType, value: Any) -> bool:
    if t is ParamType.INTEGER:
        return type(value) is int
    return type(value) is int or (type(value) is float and math.isfinite(value))


def fmt_num(x: float) -> str:
    """A number as a message shows it: 20, not 20.0."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)
