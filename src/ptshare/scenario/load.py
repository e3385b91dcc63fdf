"""Reading scenario files (TOML), with every error reported as ``FILE:LINE: message`` (the lines
from :mod:`.lines`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ScenarioError
from ..files import readable_file
from ..mm.huge_memory import THP_MODES
from .lines import scan
from .model import Machine, Scenario

_MACHINE_KEYS = {"memory", "cpus", "aslr_bits", "seed", "levels", "mmap_base", "thp", "translation", "translation_cpu",
                 "translation_slice", "translation_sample", "scattered", "frames_in_order"}
_TOP_KEYS = {"name", "description", "machine", "objects", "steps"}


def _toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    """The line tomllib's parser stopped at (its own position: ``lineno`` from Python 3.14, before
    that only in the message it formats, "... (at line N, column M)")."""
    lineno = getattr(exc, "lineno", None)
    if lineno is not None:
        return lineno
    match = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
    return int(match.group(1)) if match else None


def load(path: str | Path) -> Scenario:
    """Read and check a scenario file."""
    path = Path(path)
    try:
        if not readable_file(path):
            raise ScenarioError("not a file (a scenario is a TOML file)", str(path))
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError("no such scenario file", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read the file: {exc}", str(path)) from None
    return loads(text, str(path))


def loads(text: str, path: str = "<scenario>") -> Scenario:
    """Parse and check a scenario given as TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"not valid TOML: {exc}", path, _toml_error_line(exc)) from None
    layout = scan(text)
    headers, keys, top = layout.headers, layout.keys, layout.top
    for key in data:
        if key not in _TOP_KEYS:
            raise ScenarioError(f"unknown top-level key {key!r}; allowed: {', '.join(sorted(_TOP_KEYS))}",
                                path, top.get(key))
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ScenarioError("the scenario needs a name = \"...\"", path, top.get("name", 1))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError("description must be a string", path, top.get("description"))
    scenario = Scenario(name=name, description=description, machine=parse_machine(data.get("machine", {}), path, top),
                        path=path, text=text)
    objects = data.get("objects", [])
    if not isinstance(objects, list):
        raise ScenarioError("objects must be written as [[objects]] tables", path, top.get("objects"))
    for n, obj in enumerate(objects):
        line = headers.get(("objects", n))
        if not isinstance(obj, dict):
            raise ScenarioError("each [[objects]] entry must be a table", path, line)
        unknown = set(obj) - {"name", "kind", "size", "region"}
        if unknown:
            key = sorted(unknown)[0]
            raise ScenarioError(f"object has no field {key!r}; its fields are name, kind, size and, for an mshare "
                                "object, region", path, keys.get(("objects", n), {}).get(key, line))
        for key in ("name", "kind", "size"):
            if key not in obj:
                raise ScenarioError(f"[[objects]] needs a {key!r}", path, line)
        scenario.object(obj["name"], obj["kind"], obj["size"], line=line, keylines=keys.get(("objects", n), {}),
                        region=obj.get("region"))
    steps = data.get("steps", [])
    if not isinstance(steps, list) or not steps:
        raise ScenarioError("a scenario needs at least one [[steps]] table", path, top.get("steps", 1))
    for n, step in enumerate(steps):
        line = headers.get(("steps", n))
        if not isinstance(step, dict):
            raise ScenarioError("each [[steps]] entry must be a table", path, line)
        fields: dict[str, Any] = dict(step)
        op = fields.pop("op", None)
        if op is None:
            raise ScenarioError("this step has no op", path, line)
        scenario.step(op, line=line, keylines=keys.get(("steps", n), {}), **fields)
    from .check import check_names

    check_names(scenario)
    return scenario


def parse_machine(data: Any, path: str, top: dict[str, int]) -> Machine:
    line = top.get("machine")
    if not isinstance(data, dict):
        raise ScenarioError("[machine] must be a table", path, line)
    for key in data:
        if key not in _MACHINE_KEYS:
            raise ScenarioError(f"[machine] has no key {key!r}; allowed: {', '.join(sorted(_MACHINE_KEYS))}",
                                path, top.get(f"machine.{key}", line))
    out: dict[str, Any] = {}
    from ..units import parse_size

    if "mmap_base" in data:
        try:
            out["mmap_base"] = parse_size(data["mmap_base"])
        except ValueError as exc:
            raise ScenarioError(f"mmap_base: {exc}", path, top.get("machine.mmap_base", line)) from None
        if out["mmap_base"] % 4096 or not 1 << 30 <= out["mmap_base"] <= (1 << 47) - 4096:
            raise ScenarioError("mmap_base must be a page-aligned address from 1 GiB to 0x7ffffffff000", path,
                                top.get("machine.mmap_base", line))
    if "memory" in data:
        try:
            out["memory"] = parse_size(data["memory"])
        except ValueError as exc:
            raise ScenarioError(f"memory: {exc}", path, top.get("machine.memory", line)) from None
        if out["memory"] < 1 << 20:
            raise ScenarioError("memory must be at least 1 MiB", path, top.get("machine.memory", line))
    if "scattered" in data:
        try:
            out["scattered"] = parse_size(data["scattered"])
        except ValueError as exc:
            raise ScenarioError(f"scattered: {exc}", path, top.get("machine.scattered", line)) from None
    if "thp" in data:
        if data["thp"] not in THP_MODES:
            raise ScenarioError(f"thp = {data['thp']!r} is not allowed; use one of {', '.join(THP_MODES)}", path,
                                top.get("machine.thp", line))
        out["thp"] = data["thp"]
    if "translation" in data:
        if not isinstance(data["translation"], bool):
            raise ScenarioError(f"translation = {data['translation']!r} must be true or false", path,
                                top.get("machine.translation", line))
        out["translation"] = data["translation"]
    if "translation_cpu" in data:
        from ..translation.cpus import CPUS

        if data["translation_cpu"] not in CPUS:
            raise ScenarioError(f"translation_cpu = {data['translation_cpu']!r} is not a CPU table; known: "
                                f"{', '.join(CPUS)}", path, top.get("machine.translation_cpu", line))
        out["translation_cpu"] = data["translation_cpu"]
    limits = {"cpus": (1, 4096), "aslr_bits": (0, 32), "seed": (0, (1 << 63) - 1), "levels": (4, 5),
              "translation_slice": (1, 1 << 40), "translation_sample": (1, 1 << 20)}
    for key, (lo, hi) in limits.items():
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ScenarioError(f"{key} = {value!r} must be a whole number from {lo} to {hi}", path,
                                    top.get(f"machine.{key}", line))
            out[key] = value
    if "frames_in_order" in data:
        value = data["frames_in_order"]
        if isinstance(value, bool) or value not in [1 << n for n in range(10)]:
            raise ScenarioError(f"frames_in_order = {value!r} must be a power of two from 1 to 512", path,
                                top.get("machine.frames_in_order", line))
        out["frames_in_order"] = value
    return Machine(**out)
