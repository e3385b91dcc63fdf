"""Running the families: each on the simulator once (what the modelled kernel does, step by step)
and on the host ``repeat`` times (how long this kernel takes), giving one :class:`Point` per
sample step: the simulator's event counts and the host's times.

A host run counts its faults too, by the same machine code that times it.  A sample step whose
fault count differs from the simulator's did something the events do not describe (the kernel's
fault-around now and then skips a page-cache folio it finds locked, see
:mod:`ptshare.host.validate`), so that run's time for it is set aside, and counted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..cost import CostModel
from ..errors import PtshareError
from ..host.backend import run_on_host
from ..host.guest import pre_touch, run_footprint
from ..host.plan import host_scenario, make_plan
from ..scenario import run
from ..scenario.run import RunResult
from .families import Family, Sample


@dataclass
class Point:
    """One sample step: what the simulator counted and what the host measured."""

    family: str
    sample: Sample
    events: dict[str, int]
    times_ns: list[int] = field(default_factory=list)  # one per host run whose faults agreed
    set_aside: int = 0  # host runs whose fault count for this step differed from the simulator's

    @property
    def op(self) -> str:
        return self.sample.op

    @property
    def label(self) -> str:
        return f"{self.family} step {self.sample.step}"

    @property
    def measured_ns(self) -> float:
        """The median of the runs (robust to a run the machine disturbed)."""
        return float(statistics.median(self.times_ns))


def step_faults(result: RunResult) -> list[int]:
    """Faults taken in each step of a run (all processes; on the host, minor and major)."""
    out, before = [], 0
    for step in result.steps:
        total = sum(p["minflt"] + p.get("majflt", 0) for p in step.processes.values())
        out.append(total - before)
        before = total
    return out


class Experiment:
    """The families, their points, and their host runs."""

    def __init__(self, families: list[Family], cost: CostModel) -> None:
        self.families = families
        self.cost = cost
        self.points: dict[str, list[Point]] = {}
        self.skipped: dict[str, str] = {}  # optional families this host could not run, and why
        self._sim_faults: dict[str, list[int]] = {}
        self._footprint: dict[str, int] = {}

    def simulate(self, fam: Family) -> None:
        """Run ``fam`` on the simulator, at the addresses the host will use: its event counts."""
        sim = run(host_scenario(fam.scenario), "linux", cost=self.cost)
        self._sim_faults[fam.name] = step_faults(sim)
        self._footprint[fam.name] = run_footprint(make_plan(fam.scenario, self.cost))
        self.points[fam.name] = [Point(fam.name, s, dict(sim.steps[s.step].events)) for s in fam.samples]

    def run_once(self, fam: Family) -> None:
        """One host run of ``fam`` (simulated first); each sample step's time joins its point."""
        if fam.name in self.skipped:
            return
        pre_touch(self._footprint[fam.name])
        try:
            host, error = run_on_host(fam.scenario, self.cost)
        except PtshareError as exc:
            error = exc
        if error is not None:
            if not fam.optional:
                raise PtshareError(f"calibration scenario {fam.name!r} failed on this host: {error}"
                                   + (" (--quick runs smaller ones)" if "make the scenario smaller" in str(error)
                                      else "")) from None
            self.skipped[fam.name] = str(error)
            self.points[fam.name] = []
            return
        faults = step_faults(host)
        sim_faults = self._sim_faults[fam.name]
        for point in self.points[fam.name]:
            i = point.sample.step
            if faults[i] == sim_faults[i]:
                point.times_ns.append(host.steps[i].wall_ns)
            else:
                point.set_aside += 1

    def measured(self) -> list[Point]:
        """Every point with at least one accepted run."""
        return [p for pts in self.points.values() for p in pts if p.times_ns]

    def set_aside(self) -> list[Point]:
        return [p for pts in self.points.values() for p in pts if p.set_aside]
