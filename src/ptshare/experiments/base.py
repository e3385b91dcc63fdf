"""What an experiment is: runs to make, what to keep of each, and how to read them.

An experiment is a subclass of :class:`Experiment`.  It may override exactly these hooks:

``name``, ``title``, ``question``
    Its command-line name, the report's heading, and the question it answers (one sentence).
``revision``
    A number to raise whenever ``measure`` keeps something new: it is part of every run's key, so
    runs stored by an older ``measure`` are made again instead of reused.
``defaults``, ``quick``
    Its parameters with their default values (the types of these values are the types
    ``--set`` accepts), and the overrides of a quick run (``--quick``; the tests use it).
``check(params)``
    Raise :class:`~ptshare.errors.UsageError` for parameters it cannot run with.
``plan(params) -> list[RunSpec]``
    The runs, in order.  Must depend on ``params`` alone: the report plans again from what the
    database holds.
``measure(spec, result) -> dict``
    What to keep of one run (JSON values): the figures ``analyse`` needs, nothing per page.
``analyse(params, metrics) -> Outcome``
    The figure, the table and the sentences, from ``{label: metrics}`` of every planned run.
    Sentences are formatted from numbers in ``Outcome.facts``, never written as fixed text.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..errors import UsageError
from ..policies import POLICIES
from ..scenario import RunResult, Scenario

GiB = 1 << 30
MiB = 1 << 20


def label(policy: str) -> str:
    """How figures name ``policy``: its ``label`` (the name itself if no policy has it)."""
    cls = POLICIES.get(policy)
    return cls.label if cls is not None else policy


def words(policy: str) -> str:
    """How report sentences name ``policy``: its ``words`` (the name itself if no policy has it)."""
    cls = POLICIES.get(policy)
    return cls.words if cls is not None else policy


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment: a scenario under a policy on a backend.

    ``label`` names the run inside its experiment (``eager@4GiB``); ``params`` are the point's own
    parameters (the size, the fraction...), stored with the run.
    """

    label: str
    scenario: Scenario
    policy: str
    params: dict[str, Any]
    backend: str = "sim"


@dataclass
class Series:
    """One line (or one set of bars) of a panel.  ``low`` and ``high``: a spread around ``y`` (the
    least and the most of several runs), drawn as a band."""

    name: str
    x: list[Any]
    y: list[float]
    style: str = "line"  # line | marker | dashed | bar
    low: list[float] | None = None
    high: list[float] | None = None


def policy_of(name: str) -> str | None:
    """The policy a series or a bar is named after (its name, or its label), else None."""
    if name in POLICIES:
        return name
    return next((p for p, cls in POLICIES.items() if cls.label == name), None)


CLOSE = 0.01  # lines whose values are all within 1% of each other are drawn apart and named in the caption


def coincident(panel: Panel) -> list[tuple[list[str], bool]]:
    """Groups of the panel's lines that would hide one another: the same x, and every y within
    CLOSE of the first's.  Each group is (the names, whether the values are exactly equal)."""
    groups: list[tuple[Series, list[Series]]] = []
    for s in (x for x in panel.series if x.style == "line"):
        for first, members in groups:
            if first.x == s.x and all(abs(a - b) <= CLOSE * max(abs(a), abs(b)) for a, b in zip(first.y, s.y,
                                                                                                   strict=True)):
                members.append(s)
                break
        else:
            groups.append((s, [s]))
    return [([m.name for m in members], all(m.y == first.y for m in members))
            for first, members in groups if len(members) > 1]


def coincidence_note(figure: Figure) -> str:
    """The caption's sentence on lines drawn apart because they coincide ("" when none do)."""
    notes = []
    for panel in figure.panels:
        for names, equal in coincident(panel):
            where = f" in '{panel.title}'" if len(figure.panels) > 1 else ""
            same = "give the same values" if equal else f"are within {CLOSE:.0%} of each other"
            notes.append(f"{and_list(names)} {same}{where}")
    text = "; ".join(notes)
    return f"{text[0].upper()}{text[1:]} (drawn side by side, a few points apart)." if text else ""


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    logy: bool = False
    hlines: list[tuple[str, float]] = field(default_factory=list)  # (label, y): published figures
    vlines: list[tuple[str, float]] = field(default_factory=list)  # (label, x)


@dataclass
class Figure:
    name: str
    panels: list[Panel]
    caption: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Outcome:
    """What an experiment shows: a figure, a table, two or three sentences, and their numbers."""

    experiment: str
    title: str
    question: str
    params: dict[str, Any]
    figure: Figure
    table: Table
    sentences: list[str]
    facts: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": "ptshare.experiment/1", "experiment": self.experiment, "title": self.title,
                "question": self.question, "params": self.params, "sentences": self.sentences,
                "facts": self.facts, "notes": self.notes,
                "table": {"headers": self.table.headers, "rows": self.table.rows},
                "figure": {"name": self.figure.name, "caption": self.figure.caption,
                           "panels": [asdict(p) for p in self.figure.panels]}}


class Experiment:
    """The base class; see the module docstring for the hooks a subclass overrides."""

    name = ""
    title = ""
    question = ""
    revision = 1
    defaults: ClassVar[dict[str, Any]] = {}
    quick: ClassVar[dict[str, Any]] = {}

    def params(self, overrides: dict[str, Any] | None = None, *, quick: bool = False) -> dict[str, Any]:
        """The defaults, then the quick overrides, then ``overrides``, checked."""
        params = {**self.defaults, **(self.quick if quick else {}), **(overrides or {})}
        self.check(params)
        return params

    def check(self, params: dict[str, Any]) -> None:
        """Raise UsageError for parameters this experiment cannot run with."""

    def plan(self, params: dict[str, Any]) -> list[RunSpec]:
        raise NotImplementedError

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        raise NotImplementedError

    def analyse(self, params: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> Outcome:
        raise NotImplementedError

    def outcome(self, params: dict[str, Any], figure: Figure, table: Table, sentences: list[str],
                facts: dict[str, Any], notes: list[str] | None = None) -> Outcome:
        return Outcome(self.name, self.title, self.question, params, figure, table, sentences, facts, notes or [])


# --- helpers shared by the experiments -----------------------------------------------------------

def scenario_json(scenario: Scenario) -> dict[str, Any]:
    """The scenario as canonical JSON: what it does, not where it was written."""
    return {
        "name": scenario.name,
        "description": scenario.description,
        "machine": asdict(scenario.machine),
        "objects": [{"name": o.name, "kind": o.kind, "size": o.size} for o in scenario.objects],
        "steps": [{"op": s.op, "repeat": s.repeat, **s.fields, **({"name": s.name} if s.name else {})}
                  for s in scenario.steps],
    }


def scenario_hash(scenario: Scenario) -> str:
    text = json.dumps(scenario_json(scenario), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def step_index(result: RunResult, op: str, pid: str | None = None, nth: int = 0) -> int:
    """The index of the ``nth`` step ``op`` (of process ``pid``) in a run's results."""
    found = [i for i, s in enumerate(result.steps) if s.op == op and (pid is None or s.pid == pid)]
    if len(found) <= nth:
        raise LookupError(f"run of {result.scenario} has no step {op} {pid or ''} number {nth}")
    return found[nth]


def gib_bytes(gib: float, unit: int = 2 * MiB) -> int:
    """``gib`` GiB in bytes, rounded down to a multiple of ``unit`` (0 stays 0)."""
    return int(gib * GiB) // unit * unit


def gib_text(gib: float) -> str:
    """``0.25`` -> ``256 MiB``, ``4`` -> ``4 GiB``."""
    if gib >= 1 or gib == 0:
        return f"{gib:g} GiB"
    return f"{gib * 1024:g} MiB"


def sig(x: float, digits: int = 3) -> str:
    """``x`` with about ``digits`` significant digits, never in exponent form: 880.6 -> ``881``."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = min(4, max(0, digits - 1 - math.floor(math.log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def count(n: int, thing: str, things: str | None = None) -> str:
    """``1 all-CPU TLB flush``, ``2,048 all-CPU TLB flushes``: ``n`` with separators, and ``thing``
    in the singular or the plural (``things``; default: ``thing`` + ``s``, or ``es`` after s, x, ch, sh)."""
    if n == 1:
        return f"1 {thing}"
    plural = things or thing + ("es" if thing.endswith(("s", "x", "ch", "sh")) else "s")
    return f"{n:,} {plural}"


def and_list(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def crossing(xs: list[float], below: list[float], above: list[float]) -> float | None:
    """The first x where ``below`` rises past ``above``, by linear interpolation; None if it never does."""
    for i in range(1, len(xs)):
        d0, d1 = below[i - 1] - above[i - 1], below[i] - above[i]
        if d0 <= 0 < d1:
            return xs[i - 1] + (xs[i] - xs[i - 1]) * (-d0) / (d1 - d0)
    return None


def need_positive(params: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = params[key]
        values = value if isinstance(value, list) else [value]
        if not values or any(v <= 0 for v in values):
            raise UsageError(f"{key} must be more than 0 (got {value!r})")


def need_linux(params: dict[str, Any], experiment: str) -> None:
    """``experiment`` sets its policies beside Linux's: ``linux`` must be among them."""
    if "linux" not in params["policies"]:
        raise UsageError(f"{experiment} needs the linux policy among its policies (the others are set beside it)")


def need_policies(params: dict[str, Any], *keys: str) -> None:
    for key in keys:
        for name in params[key]:
            if name not in POLICIES:
                raise UsageError(f"{key}: unknown policy {name!r}; known policies: {', '.join(POLICIES)}")
