"""Only declared inputs pass: the check at the door (quotes and jobs) and what an adapter may
send to its provider.

At the door, against the backends that could run the job (the pinned one, else every backend
of the job's kind): a field none of them declares, a value every one declaring it refuses, or a
field every one of them requires and the job leaves out is ``invalid_request`` naming the field.
A field only some of them accept is not an error: routing excludes the others, with the reason
(``orchestrator.domain.routing``). Messages never show a long string (it may be a prompt).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.domain.jobs import JobSpec, Kind
from orchestrator.domain.params import ParamSpec, got
from orchestrator.errors import InvalidRequest


def provider_input(backend: BackendSpec, kind: Kind, inp: Mapping[str, Any]) -> dict[str, Any]:
    """The job's input as ``backend`` may receive it: its declared parameters only, with the
    declared defaults of those the job leaves out."""
    table = backend.accepts.get(kind, {})
    out = {k: v for k, v in inp.items() if k in table}
    for name, p in table.items():
        if name not in out and p.default is not None:
            out[name] = p.default
    return out


def check_input(spec: JobSpec, catalogue: Catalogue) -> None:
    """InvalidRequest (``details.field`` = ``input.<name>``) when no backend that could run
    ``spec`` accepts its input. Nothing to say when none could run it at all (an unknown pin,
    a kind nobody serves): routing reports that as no eligible backend."""
    kind = spec.kind
    pin = spec.backend
    if pin is not None:
        b = catalogue.by_name.get(pin)
        if b is None or kind not in b.kinds:
            return
        tables = [(b.name, b.accepts[kind])]
        nobody = f"backend {pin} does not accept"
    else:
        tables = [(b.name, b.accepts[kind]) for b in catalogue.for_kind(kind)]
        if not tables:
            return
        nobody = f"no {kind.value} backend accepts"
    inp = spec.input
    for name, value in inp.items():
        declared = [(who, t[name]) for who, t in tables if name in t]
        if not declared:
            _refuse(name, f"{nobody} this field")
        if not any(p.accepts(value) for _, p in declared):
            _refuse(name, f"expected {_expectations(declared)}, got {got(value)}")
    required = set.intersection(*({n for n, p in t.items() if p.required} for _, t in tables))
    for name in sorted(required - inp.keys()):
        _refuse(name, "required" + (f" by backend {pin}" if pin is not None else ""))


def _expectations(declared: list[tuple[str, ParamSpec]]) -> str:
    """One expectation when they agree, else each with its backends."""
    by: dict[str, list[str]] = {}
    for who, p in declared:
        by.setdefault(p.expected, []).append(who)
    if len(by) == 1:
        return next(iter(by))
    return "; or ".join(f"{exp} ({', '.join(names)})" for exp, names in by.items())


def _refuse(name: str, why: str) -> NoReturn:
    field = f"input.{name}"
    raise InvalidRequest(f"{field}: {why}", field=field,
                         errors=[{"field": field, "message": why}])
