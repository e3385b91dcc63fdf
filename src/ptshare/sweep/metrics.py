"""What a sweep keeps of each run: numbers any scenario has, under names ``--y`` and the export use.

* ``est_ms``: the modelled kernel's time for the whole run (cost model); ``step.REF.est_ms`` for each
  step, REF being the step's ``name`` if it has one, else its index;
* ``pagetables_kb``, ``frames_used``, ``memory_used_kb``... : the system's counters after the last step,
  and ``peak_pagetables_kb``, the largest PageTables after any step;
* ``minflt``: faults taken by every process, exited ones included; ``peak_vmpte_kb`` and ``peak_rss_kb``:
  the largest sum, after any step, of the live processes' VmPTE and RSS;
* ``events.NAME``: every event of the run (:mod:`ptshare.mm.events`), such as ``events.ptes_copied``.

Only what the simulator computes: no wall time, so a run gives the same metrics wherever it is made.
"""

from __future__ import annotations

from typing import Any

from ..experiments.base import RunSpec
from ..scenario import RunResult, Scenario


def step_ref(scenario: Scenario, index: int) -> str:
    name = scenario.steps[index].name
    return name if name else str(index)


class SweepMetrics:
    """The :class:`~ptshare.experiments.runner.Measures` of a sweep's runs."""

    name = "sweep"
    revision = 1  # raise when measure() keeps something new: stored runs are then made again

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        steps = result.steps
        final = steps[-1]
        out: dict[str, Any] = {"est_ms": sum(s.est_ns for s in steps) / 1e6}
        out.update({k: v for k, v in final.system.items() if isinstance(v, int | float)})
        out["peak_pagetables_kb"] = max(s.system["pagetables_kb"] for s in steps)
        out["minflt"] = sum(p["minflt"] for p in final.processes.values())
        for what in ("vmpte_kb", "rss_kb"):
            out[f"peak_{what}"] = max(sum(p[what] for p in s.processes.values() if p["alive"]) for s in steps)
        for s in steps:
            out[f"step.{step_ref(spec.scenario, s.index)}.est_ms"] = s.est_ns / 1e6
        out.update({f"events.{k}": v for k, v in result.events.items()})
        return out
