"""Scenarios: named objects, then ordered steps (DESIGN §5).  The same thing as a TOML file or in Python.

>>> from ptshare.scenario import Scenario
>>> sc = Scenario("fork-with-shared-segment")
>>> sc.object("sga", "shmem", "1GiB")
>>> sc.step("spawn", pid="db")
>>> sc.step("mmap", pid="db", vma="buf", object="sga", shared=True)
>>> sc.step("touch", pid="db", vma="buf", access="write")
>>> sc.step("fork", pid="db", child="be{i}", repeat=4)

Every field is checked when the step is added (or the file loaded); a bad one raises
:class:`ScenarioError` naming the file, the line, what is wrong and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..arch import PAGE_SIZE
from ..errors import ScenarioError
from ..mm.frames import DEFAULT_FRAMES_IN_ORDER, DEFAULT_SCATTERED
from ..mm.pagecache import KINDS, MSHARE, MSHARE_ALIGN
from ..mm.vma import PROTS
from ..units import parse_size, si_note

OPS = ("spawn", "fork", "exec", "exit", "mmap", "munmap", "mprotect", "mremap", "madvise", "touch", "truncate")

# op -> (required fields, optional fields)
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "spawn": (("pid",), ()),
    "fork": (("pid", "child"), ()),
    "exec": (("pid",), ()),
    "exit": (("pid",), ()),
    "mmap": (("pid", "vma"), ("object", "size", "offset", "shared", "prot", "addr", "fixed", "align")),
    "munmap": (("pid", "vma"), ("offset", "length")),
    "mprotect": (("pid", "vma", "prot"), ("offset", "length")),
    "mremap": (("pid", "vma", "size"), ("addr",)),
    "madvise": (("pid", "vma"), ("offset", "length", "advice")),
    "touch": (("pid", "vma"), ("access", "offset", "length", "pattern", "count", "seed", "zipf_s", "stride")),
    "truncate": (("object", "size"), ()),
}
ACCESSES = ("read", "write")
PATTERNS = ("sequential", "random", "zipf")
ZIPF_S_MAX = 10  # the largest zipf exponent a touch takes
ADVICE = ("dontneed", "hugepage", "nohugepage")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:{}\-]+$")
_STEP_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")  # never a number, so steps.N and steps.NAME never clash
_SIZE_FIELDS = ("size", "offset", "length", "addr", "align", "stride")
_BOOL_FIELDS = ("shared", "fixed")
_INT_FIELDS = ("count", "seed")


def fields_of(op: str) -> tuple[str, ...]:
    """The fields a step ``op`` takes that change what it does: its own, then ``repeat`` (not its ``name``)."""
    required, optional = _FIELDS[op]
    return (*required, *optional, "repeat")


@dataclass(frozen=True)
class Machine:
    """The simulated machine.  ``memory`` None: as much as the scenario needs."""

    memory: int | None = None
    cpus: int = 2
    aslr_bits: int = 28
    seed: int = 1
    levels: int = 4
    mmap_base: int | None = None  # fixes every spawned process's mmap_base (then aslr_bits does not apply)
    thp: str = "madvise"  # transparent huge pages for anonymous memory: always | madvise | never
    translation: bool = False  # model address translation of touches (TLBs, walks, caches)
    translation_cpu: str = "zen4"  # the CPU table (ptshare.translation.cpus)
    translation_slice: int = 4096  # accesses per scheduler time slice
    translation_sample: int = 1  # beyond its first 2**20 accesses, a step simulates 1 access in this many
    scattered: int = DEFAULT_SCATTERED  # bytes the page allocator hands out in no order first (mm/frames.py)
    frames_in_order: int = DEFAULT_FRAMES_IN_ORDER  # then frames come in runs of this many


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    kind: str
    size: int
    line: int | None = None
    region: int | None = None  # an mshare object's region (a multiple of 512 GiB holding it); None otherwise


@dataclass(frozen=True)
class Step:
    """One step as written; ``repeat`` copies of it run, with ``{i}`` counting 0..repeat-1."""

    op: str
    index: int
    fields: dict[str, Any]
    repeat: int = 1
    line: int | None = None
    keylines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    file: str | None = field(default=None, compare=False, repr=False)  # the scenario file, for errors
    name: str | None = None  # the step's own name, unique in its scenario (sweeps address it as steps.NAME)

    def expand(self) -> list[dict[str, Any]]:
        """The concrete steps: ``{i}`` substituted and sizes parsed."""
        out = []
        for i in range(self.repeat):
            concrete = {}
            for key, value in self.fields.items():
                if isinstance(value, str) and "{i}" in value:
                    value = value.replace("{i}", str(i))
                    value = _convert(key, value, self, i)
                concrete[key] = value
            out.append(concrete)
        return out

    def where(self, key: str | None = None) -> int | None:
        if key is not None and key in self.keylines:
            return self.keylines[key]
        return self.line


def _fail(message: str, file: str | None, line: int | None) -> ScenarioError:
    return ScenarioError(message, file, line)


def _convert(key: str, value: Any, step: Step | None, i: int | None = None, file: str | None = None,
             line: int | None = None) -> Any:
    """Check and normalise one field.  Strings holding ``{i}`` are checked after substitution."""
    if step is not None:
        file, line = step.file, step.where(key)
    if isinstance(value, str) and "{i}" in value and i is None:
        return value
    if key in _SIZE_FIELDS:
        try:
            number = parse_size(value)
        except ValueError as exc:
            raise _fail(f"{key}: {exc}", file, line) from None
        if key in ("offset", "length", "size") and number % PAGE_SIZE:
            raise _fail(f"{key} = {value!r} is not a multiple of the 4 KiB page size{si_note(value)}", file, line)
        if key == "stride" and (number < PAGE_SIZE or number % PAGE_SIZE):
            raise _fail(f"stride = {value!r} must be a positive multiple of 4 KiB{si_note(value)}", file, line)
        if key in ("size", "length") and number == 0 and not (step is not None and step.op == "truncate"):
            raise _fail(f"{key} must be more than 0", file, line)  # truncate to 0 is ftruncate(fd, 0)
        return number
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise _fail(f"{key} = {value!r} must be true or false", file, line)
        return value
    if key in _INT_FIELDS:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise _fail(f"{key} = {value!r} must be a whole number", file, line) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"{key} = {value!r} must be a whole number", file, line)
        if value < 0 or (key == "count" and value == 0):
            raise _fail(f"{key} = {value} must be {'more than 0' if key == 'count' else '0 or more'}", file, line)
        if value >= 1 << 63:
            raise _fail(f"{key} = {value} is too large", file, line)
        return value
    if key == "zipf_s":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) <= ZIPF_S_MAX:
            raise _fail(f"zipf_s = {value!r} must be a number in (0, {ZIPF_S_MAX}]", file, line)
        return float(value)
    if key == "prot":
        if value not in PROTS:
            raise _fail(f"prot = {value!r} is not allowed; use one of {', '.join(map(repr, PROTS))}", file, line)
        return value
    if key == "access":
        if value not in ACCESSES:
            raise _fail(f"access = {value!r} is not allowed; use 'read' or 'write'", file, line)
        return value
    if key == "pattern":
        if value not in PATTERNS:
            raise _fail(f"pattern = {value!r} is not allowed; use one of {', '.join(PATTERNS)}", file, line)
        return value
    if key == "advice":
        if value not in ADVICE:
            raise _fail(f"advice = {value!r} is not modelled; use one of {', '.join(ADVICE)}", file, line)
        return value
    if key in ("pid", "child", "vma", "object"):
        if not isinstance(value, str) or not value or not _NAME_RE.match(value):
            raise _fail(f"{key} = {value!r} must be a name of letters, digits and _ . : - (and {{i}})", file, line)
        return value
    raise _fail(f"unknown field {key!r}", file, line)


@dataclass
class Scenario:
    """A scenario: build it in Python or load it with :func:`ptshare.scenario.load`."""

    name: str
    description: str = ""
    machine: Machine = field(default_factory=Machine)
    objects: list[ObjectSpec] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    path: str | None = None
    text: str | None = None  # the file's text, for hashing and reports

    def object(self, name: str, kind: str, size: int | str, *, line: int | None = None,
               keylines: dict[str, int] | None = None, region: int | str | None = None) -> None:
        """Declare an object.  An ``mshare`` object is ``size`` bytes of shared anonymous memory placed at
        the start of an mshare region of ``region`` bytes (a multiple of 512 GiB; by default the
        smallest that holds it), which processes map whole."""
        at = (keylines or {}).get
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _fail(f"object name {name!r} must be letters, digits and _ . : -", self.path, at("name", line))
        if any(o.name == name for o in self.objects):
            raise _fail(f"object {name!r} is declared twice", self.path, at("name", line))
        if kind not in KINDS:
            raise _fail(f"object {name!r}: kind = {kind!r} is not one of {', '.join(KINDS)}", self.path,
                        at("kind", line))
        try:
            nbytes = parse_size(size)
        except ValueError as exc:
            raise _fail(f"object {name!r}: size: {exc}", self.path, at("size", line)) from None
        if nbytes == 0 or nbytes % PAGE_SIZE:
            raise _fail(f"object {name!r}: size must be a positive multiple of 4 KiB{si_note(size)}", self.path,
                        at("size", line))
        if kind == "hugetlb" and nbytes % (2 << 20):
            raise _fail(f"object {name!r}: a hugetlb object's size must be a multiple of 2 MiB{si_note(size)}",
                        self.path, at("size", line))
        region_bytes = None
        if region is not None and kind != MSHARE:
            raise _fail(f"object {name!r}: only an mshare object has a region", self.path, at("region", line))
        if kind == MSHARE:
            region_bytes = -(-nbytes // MSHARE_ALIGN) * MSHARE_ALIGN
            if region is not None:
                try:
                    region_bytes = parse_size(region)
                except ValueError as exc:
                    raise _fail(f"object {name!r}: region: {exc}", self.path, at("region", line)) from None
            if region_bytes % MSHARE_ALIGN or region_bytes < nbytes:
                raise _fail(f"object {name!r}: region = {region!r} must be a multiple of 512 GiB (mshare_align on "
                            f"x86-64: the span of one PUD table) at least as large as its size{si_note(region)}",
                            self.path, at("region", line))
        self.objects.append(ObjectSpec(name, kind, nbytes, line, region_bytes))

    def step(self, op: str, *, line: int | None = None, keylines: dict[str, int] | None = None,
             **fields: Any) -> None:
        keylines = keylines or {}
        repeat = fields.pop("repeat", 1)
        name = fields.pop("name", None)
        if op not in OPS:
            raise _fail(f"unknown op {op!r}; ops are: {', '.join(OPS)}", self.path, keylines.get("op", line))
        required, optional = _FIELDS[op]
        for key in fields:
            if key not in required and key not in optional:
                allowed = ", ".join((*fields_of(op), "name"))
                raise _fail(f"op {op!r} has no field {key!r}; its fields are: {allowed}", self.path,
                            keylines.get(key, line))
        if name is not None:
            self._check_step_name(name, keylines.get("name", line))
        for key in required:
            if key not in fields:
                raise _fail(f"op {op!r} needs a {key!r} field", self.path, line)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= 10_000_000:
            raise _fail(f"repeat = {repeat!r} must be a whole number from 1 to 10000000", self.path,
                        keylines.get("repeat", line))
        step = Step(op, len(self.steps), {}, repeat, line, dict(keylines), self.path)
        clean = {}
        for key, value in fields.items():
            try:
                clean[key] = _convert(key, value, step)
            except ScenarioError as exc:
                raise exc.located(self.path, step.where(key)) from None
        if op == "touch" and clean.get("pattern", "sequential") == "sequential" and "count" in clean:
            raise _fail("count only applies to random and zipf patterns", self.path, step.where("count"))
        if op == "mmap" and "object" not in clean and "size" not in clean:
            raise _fail("an anonymous mmap (no object) needs a size", self.path, line)
        if op == "mmap" and clean.get("fixed") and "addr" not in clean:
            raise _fail("fixed = true needs an addr", self.path, step.where("fixed"))
        if op == "mmap" and "object" in clean and not any(o.name == clean["object"] for o in self.objects):
            raise _fail(f"mmap names object {clean['object']!r}, which is not declared in [[objects]]",
                        self.path, step.where("object"))
        if op == "truncate" and not any(o.name == clean["object"] for o in self.objects):
            raise _fail(f"truncate names object {clean['object']!r}, which is not declared in [[objects]]",
                        self.path, step.where("object"))
        self.steps.append(Step(op, len(self.steps), clean, repeat, line, dict(keylines), self.path, name))

    def _check_step_name(self, name: Any, line: int | None) -> None:
        if not isinstance(name, str) or not _STEP_NAME_RE.match(name):
            raise _fail(f"name = {name!r}: a step's name starts with a letter or _ and holds letters, digits, "
                        "_ and - (no {i}: a repeated step is one step)", self.path, line)
        if any(s.name == name for s in self.steps):
            raise _fail(f"two steps are named {name!r}; every step name must be unique", self.path, line)

    @property
    def nr_operations(self) -> int:
        return sum(s.repeat for s in self.steps)
