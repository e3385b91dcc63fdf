"""A sweep's grid: every combination of the varied values, under every policy; made, stored, read back.

Each point is a run of the user's scenario with the varied fields set.  Its key is the run key every
stored run has (:func:`~ptshare.experiments.runner.run_key`), made from what the run computes -- the
varied scenario, the policy, the cost profile, the model's source -- and not from the grid it is part
of: a point another sweep has made already, or an interrupted run of this one, is reused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ..cost import CostModel
from ..experiments.base import RunSpec
from ..experiments.db import ResultsDB, SweepRecord
from ..experiments.executor import Executor
from ..experiments.runner import Job, Tally, make_runs, run_key
from ..scenario import Scenario
from .keys import Axis, with_values
from .metrics import SweepMetrics

MEASURES = SweepMetrics()


@dataclass(frozen=True)
class Point:
    """One run of the grid: ``values`` are the varied keys' values, as given."""

    label: str
    policy: str
    values: dict[str, Any]
    scenario: Scenario


def text(value: Any) -> str:
    """A value as ``--vary`` takes it: ``2``, ``1GiB``, ``true``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def plan(scenario: Scenario, axes: list[Axis], policies: list[str]) -> list[Point]:
    """The grid in order: the first axis slowest, the policies fastest.  Every scenario is checked first."""
    points = []
    for combo in itertools.product(*(a.values for a in axes)):
        settings = list(zip(axes, combo, strict=True))
        varied = with_values(scenario, settings) if settings else scenario
        values = {a.key: v for a, v in settings}
        where = ",".join(f"{k}={text(v)}" for k, v in values.items())
        points += [Point(f"{p}@{where}" if where else p, p, values, varied) for p in policies]
    return points


def jobs(points: list[Point], cost: CostModel) -> list[Job]:
    """The run of each point; its key leaves out the point's values, which only say where it is in the grid."""
    return [Job(run_key(MEASURES, RunSpec(p.label, p.scenario, p.policy, {}), cost),
                RunSpec(p.label, p.scenario, p.policy, p.values), MEASURES, cost) for p in points]


def run_sweep(scenario: Scenario, axes: list[Axis], policies: list[str], db: ResultsDB, cost: CostModel, *,
              points: list[Point] | None = None, executor: Executor | None = None,
              progress: bool | None = None) -> tuple[SweepRecord, Tally]:
    """Make (or find) every point of the grid (``points``: as :func:`plan` gives them, if made already),
    storing each run as it finishes; the sweep as stored."""
    points = points or plan(scenario, axes, policies)
    todo = jobs(points, cost)
    sweep_id = db.start_sweep(scenario.name, scenario.path or "", [[a.key, list(a.values)] for a in axes], policies,
                              [{"label": p.label, "key": j.key, "policy": p.policy, "values": p.values}
                               for p, j in zip(points, todo, strict=True)])
    _, tally = make_runs(todo, db, executor, f"sweep {scenario.name}", progress)
    db.finish_sweep(sweep_id)
    return find(db, sweep_id), tally


def find(db: ResultsDB, sweep_id: int | None) -> SweepRecord:
    """Sweep ``sweep_id`` (None: the latest); a UsageError listing the stored sweeps if there is none."""
    from ..errors import UsageError

    sweeps = db.sweeps()
    found = [s for s in sweeps if sweep_id is None or s.id == sweep_id]
    if not found:
        stored = "; ".join(f"{s.id}: {s.scenario} varying {', '.join(k for k, _ in s.vary) or 'nothing'}"
                           for s in sweeps[-10:]) or "none yet ('ptshare sweep SCENARIO --vary ...' makes one)"
        what = f"no sweep {sweep_id}" if sweep_id is not None else "no sweep"
        raise UsageError(f"{db.path} holds {what}; its sweeps: {stored}")
    return found[-1]


def rows(record: SweepRecord, db: ResultsDB) -> tuple[list[dict[str, Any]], int]:
    """The grid as flat rows, one per stored point (``sweep``, ``run``, ``policy``, each varied key,
    ``metric.NAME``...), in the grid's order; and how many points the grid has in all."""
    stored = db.stored([p["key"] for p in record.points])
    out = []
    for p in record.points:
        metrics = stored.get(p["key"])
        if metrics is not None:
            out.append({"sweep": record.id, "run": p["label"], "policy": p["policy"], **p["values"],
                        **{f"metric.{k}": v for k, v in metrics.items()}})
    return out, len(record.points)
