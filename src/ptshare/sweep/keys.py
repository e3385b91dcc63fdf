"""``--vary KEY=V1,V2,...``: the scenario fields a sweep varies, and the scenario with some of them set.

A key names one field of a scenario file:

``machine.FIELD``
    a field of ``[machine]``: memory, cpus, aslr_bits, seed, levels, mmap_base.
``objects.NAME.FIELD``
    a field of the ``[[objects]]`` table named NAME: size, kind or (an mshare object's) region.
``steps.N.FIELD``, ``steps.NAME.FIELD``
    a field of a ``[[steps]]`` table, by its 0-based position (the JSON's ``index``) or by its
    ``name``: any field its op takes, set in the file or not, and ``repeat``.

Values are written as in TOML (``2``, ``1.5``, ``true``, ``"rw"``); anything else is taken as a
string (``1GiB``, ``rw``).  A varied scenario is built again through :class:`Scenario`, so every
value is checked as the file's own would be, and an error names the option and the line it changes.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ScenarioError, UsageError
from ..scenario import Machine, Scenario, Step
from ..scenario.check import check_names
from ..scenario.load import parse_machine
from ..scenario.model import ObjectSpec, fields_of

MACHINE_FIELDS = tuple(f.name for f in fields(Machine))
OBJECT_FIELDS = ("size", "kind")


def object_fields(obj: ObjectSpec) -> tuple[str, ...]:
    """The fields a sweep may vary of ``obj``: an mshare object's region too."""
    return (*OBJECT_FIELDS, "region") if obj.kind == "mshare" else OBJECT_FIELDS


@dataclass(frozen=True)
class Axis:
    """One ``--vary``: the key as written, what it addresses, and its values."""

    key: str
    section: str  # machine | objects | steps
    target: str | int | None  # the object's name, the step's index; None for machine
    field: str
    values: tuple[Any, ...]


def parse_value(text: str) -> Any:
    """A value as TOML reads it (``2``, ``true``, ``"a"``), else the text itself (``1GiB``)."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    return value if isinstance(value, str | int | float) else text  # no dates, arrays or tables


def parse_axes(scenario: Scenario, items: list[str]) -> list[Axis]:
    """Every ``KEY=V1,V2,...`` of ``items``, checked against ``scenario``."""
    axes: list[Axis] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = tuple(parse_value(v.strip()) for v in text.split(",") if v.strip())
        if not sep or not key or not values:
            raise UsageError(f"--vary {item!r}: write KEY=V1,V2,..., for example --vary machine.cpus=1,2,4")
        axis = resolve(scenario, key, values)
        for other in axes:
            if (other.section, other.target, other.field) == (axis.section, axis.target, axis.field):
                raise UsageError(f"--vary {key}: the same field as --vary {other.key}; vary each field once")
        axes.append(axis)
    return axes


def resolve(scenario: Scenario, key: str, values: tuple[Any, ...] = ()) -> Axis:
    """The field ``key`` names in ``scenario``; ScenarioError ``FILE: unknown field ..., known: ...`` if none."""
    parts = key.split(".")
    section = parts[0]
    if section == "machine" and len(parts) == 2 and parts[1] in MACHINE_FIELDS:
        return Axis(key, section, None, parts[1], values)
    if section == "objects" and len(parts) == 3:
        obj = next((o for o in scenario.objects if o.name == parts[1]), None)
        if obj is not None and parts[2] in object_fields(obj):
            return Axis(key, section, obj.name, parts[2], values)
    if section == "steps" and len(parts) == 3:
        step = _step(scenario, parts[1])
        if step is not None and parts[2] in fields_of(step.op):
            return Axis(key, section, step.index, parts[2], values)
    raise ScenarioError(f"unknown field {key!r}, known: {known_keys(scenario, key)}", scenario.path)


def _step(scenario: Scenario, ref: str) -> Step | None:
    if ref.isdigit():
        index = int(ref)
        return scenario.steps[index] if index < len(scenario.steps) else None
    return next((s for s in scenario.steps if s.name == ref), None)


def known_keys(scenario: Scenario, key: str) -> str:
    """The keys near ``key`` that ``scenario`` has: those of the object or step it names, else an outline."""
    parts = key.split(".")
    if parts[0] == "objects" and len(parts) > 1 and any(o.name == parts[1] for o in scenario.objects):
        obj = next(o for o in scenario.objects if o.name == parts[1])
        return ", ".join(f"objects.{parts[1]}.{f}" for f in object_fields(obj))
    if parts[0] == "steps" and len(parts) > 1 and (step := _step(scenario, parts[1])) is not None:
        return ", ".join(f"steps.{parts[1]}.{f}" for f in fields_of(step.op))
    outline = [f"machine.{f}" for f in MACHINE_FIELDS]
    outline += [f"objects.{o.name}.{{{','.join(object_fields(o))}}}" for o in scenario.objects]
    outline.append(f"steps.{{0..{len(scenario.steps) - 1}}}.FIELD")
    named = [s.name for s in scenario.steps if s.name]
    if named:
        outline.append(f"steps.{{{','.join(named)}}}.FIELD")
    return ", ".join(outline)


def with_values(scenario: Scenario, settings: list[tuple[Axis, Any]]) -> Scenario:
    """``scenario`` with each axis's field set to its value; checked as a loaded file is."""
    machine = {a.field: v for a, v in settings if a.section == "machine"}
    objects = {(a.target, a.field): v for a, v in settings if a.section == "objects"}
    steps = {(a.target, a.field): v for a, v in settings if a.section == "steps"}
    try:
        if machine:
            current = {k: v for k, v in asdict(scenario.machine).items() if v is not None}
            new_machine = parse_machine({**current, **machine}, scenario.path or "<scenario>", {})
        else:
            new_machine = scenario.machine
        out = Scenario(scenario.name, scenario.description, new_machine, path=scenario.path)
        for o in scenario.objects:
            kind = objects.get((o.name, "kind"), o.kind)
            region = objects.get((o.name, "region"), o.region if kind == o.kind else None)
            out.object(o.name, kind, objects.get((o.name, "size"), o.size), line=o.line, region=region)
        for s in scenario.steps:
            given = {k: v for (index, k), v in steps.items() if index == s.index}
            out.step(s.op, line=s.line, keylines=s.keylines,
                     **{**s.fields, "repeat": s.repeat, **given, **({"name": s.name} if s.name else {})})
        check_names(out)
    except ScenarioError as exc:
        what = ", ".join(f"{a.key}={v}" for a, v in settings)
        raise ScenarioError(f"--vary {what}: {exc.message}", exc.file, exc.line) from None
    return out
