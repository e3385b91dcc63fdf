"""``ptshare validate --times``: the cost model's time for each step against the kernel's.

Each scenario runs on the simulator once (policy ``linux``, the host's layout: the same page
tables) for its events, and on the host ``runs`` times, the scenarios interleaved round by round
so that a busy moment of the machine falls on all of them alike; a step's measured time is the
median of its runs.  Times are the CPU time of the worker's thread (:func:`.measure.cpu_clock`):
the kernel's work for the step and the touch loop's, without the time other processes held the
CPU.  Guest memory is written and freed before every host run, as calibration does
(:mod:`.guest`).

What the worker adds to a step, beyond the kernel's work the model prices, is measured and
subtracted (:func:`worker_overhead`), not explained away:

* every measured call (one per touch, munmap, mprotect, mremap, madvise step or repetition)
  reads the clocks and ``getrusage`` twice: a measured call that does nothing gives its cost;
* a worker's fork also copies its Python interpreter (about 160 VMAs and thousands of PTEs): a
  worker with no scenario memory is forked, and what its fork takes beyond the model's fork of
  an empty process is subtracted from every fork;
* a worker's exit is timed as the munmap of the scenario's window: that munmap in a worker with
  no scenario memory gives its fixed part.  And the model's ``exit`` and PGD freeing happen after
  the host's measurement, so they are left out of the prediction (as calibration does).

Timed ops: ``fork``, ``touch``, ``exit``, ``munmap``, ``mprotect``, ``mremap``, ``madvise``.  Not
timed: ``spawn`` and ``exec`` (they start a Python interpreter), ``mmap`` (the model has no event
for it) and ``truncate`` (done by the backend itself, not by a worker).

A step's error is (predicted - measured) / measured.  Per op kind, the median and the worst
|error|; the check is the median per op kind against ``tolerance`` (default 15%).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from ..calibrate.fit import HOST_LEAVES_OUT
from ..cost import CostModel
from ..errors import PtshareError
from ..scenario import Scenario, run
from .backend import run_on_host
from .guest import pre_touch, run_footprint
from .measure import Meter, cpu_clock
from .plan import host_scenario, make_plan

TIMED = ("fork", "touch", "exit", "munmap", "mprotect", "mremap", "madvise")
TOLERANCE = 0.15
RUNS = 3


@dataclass
class StepTime:
    scenario: str
    step: int
    op: str
    pid: str
    calls: int
    predicted_ns: float
    measured_ns: list[int] = field(default_factory=list)  # one per host run
    overhead_ns: float = 0.0  # the worker's own part, subtracted from the median

    @property
    def kernel_ns(self) -> float:
        """The median measured time less the worker's own part."""
        return statistics.median(self.measured_ns) - self.overhead_ns

    @property
    def error(self) -> float | None:
        return None if self.kernel_ns <= 0 else (self.predicted_ns - self.kernel_ns) / self.kernel_ns

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "step": self.step, "op": self.op, "pid": self.pid, "calls": self.calls,
                "predicted_ns": round(self.predicted_ns), "measured_ns": self.measured_ns,
                "worker_overhead_ns": round(self.overhead_ns), "kernel_ns": round(self.kernel_ns),
                "error": None if self.error is None else round(self.error, 4)}


@dataclass
class OpSummary:
    op: str
    steps: int
    median_error: float  # median of |error|
    worst_error: float
    worst: str  # scenario and step of the worst
    unresolved: int = 0  # steps whose measured time was no more than the worker's own part: no error to give

    def ok(self, tolerance: float) -> bool:
        return self.median_error <= tolerance


@dataclass
class TimeReport:
    steps: list[StepTime]
    overhead: dict[str, float]
    tolerance: float
    runs: int
    profile: str
    profile_machine: str

    def summary(self) -> dict[str, OpSummary]:
        out = {}
        for op in TIMED:
            timed = [s for s in self.steps if s.op == op and s.error is not None]
            unresolved = sum(1 for s in self.steps if s.op == op and s.error is None)
            if timed:
                errors = [abs(s.error) for s in timed]  # type: ignore[arg-type]
                worst = max(timed, key=lambda s: abs(s.error))  # type: ignore[arg-type]
                out[op] = OpSummary(op, len(timed), float(statistics.median(errors)), max(errors),
                                    f"{worst.scenario} step {worst.step}", unresolved)
        return out

    @property
    def ok(self) -> bool:
        return all(s.ok(self.tolerance) for s in self.summary().values())

    def to_json(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "runs": self.runs, "clock": "thread CPU time", "ok": self.ok,
                "profile": self.profile, "profile_machine": self.profile_machine,
                "worker_overhead_ns": {k: round(v) for k, v in self.overhead.items()},
                "summary": {op: {"steps": s.steps, "median_abs_error": round(s.median_error, 4),
                                 "worst_abs_error": round(s.worst_error, 4), "worst": s.worst,
                                 "unresolved": s.unresolved, "ok": s.ok(self.tolerance)}
                            for op, s in self.summary().items()},
                "steps": [s.to_json() for s in self.steps]}


def _overhead_scenario() -> Scenario:
    sc = Scenario("worker-overhead", "a worker with no scenario memory, forked; its child exits")
    sc.step("spawn", pid="w")
    sc.step("fork", pid="w", child="c")
    sc.step("exit", pid="c")
    return sc


def measured_call_ns(runs: int = 5) -> float:
    """What measuring a call adds to it (two clock reads, two ``getrusage``): the median time of a
    measured call that does nothing.  Call inside :func:`.measure.cpu_clock`."""
    meter = Meter()
    try:
        return float(statistics.median(meter.touch(0, 0, False).ns for _ in range(max(5, runs))))
    finally:
        meter.close()


def worker_overhead(cost: CostModel, runs: int) -> dict[str, float]:
    """What a worker adds to a step, per call: ``call`` (any measured call), ``fork``, ``exit``.
    Call inside :func:`.measure.cpu_clock`."""
    call = measured_call_ns(runs)
    sc = _overhead_scenario()
    sim = run(host_scenario(sc), "linux", cost=cost)
    forks, exits = [], []
    for _ in range(runs):
        host, error = run_on_host(sc, cost)
        if error is not None:
            raise PtshareError(f"cannot measure a worker's own fork: {error}")
        forks.append(host.steps[1].wall_ns)
        exits.append(host.steps[2].wall_ns)
    return {"call": call,
            "fork": max(0.0, statistics.median(forks) - sim.steps[1].est_ns),
            "exit": max(0.0, float(statistics.median(exits)))}


def _predicted(op: str, events: dict[str, int], calls: int, cost: CostModel) -> float:
    counts = dict(events)
    for name, n in HOST_LEAVES_OUT.get(op, {}).items():
        counts[name] = max(0, counts.get(name, 0) - n * calls)
    return sum(n * cost.ns.get(name, 0.0) for name, n in counts.items())


def time_scenarios(scenarios: list[Scenario], cost: CostModel, runs: int = RUNS,
                   tolerance: float = TOLERANCE) -> TimeReport:
    """Predicted and measured time of every timed step of ``scenarios`` (see the module docstring)."""
    steps: dict[str, list[StepTime]] = {}
    for sc in scenarios:
        sim = run(host_scenario(sc), "linux", cost=cost)
        steps[sc.name] = [StepTime(sc.name, s.index, s.op, s.pid or "", s.repeat,
                                   _predicted(s.op, s.events, s.repeat, cost))
                          for s in sim.steps if s.op in TIMED]
    with cpu_clock():
        overhead = worker_overhead(cost, runs)
        for _ in range(runs):
            for sc in scenarios:
                pre_touch(run_footprint(make_plan(sc, cost)))
                host, error = run_on_host(sc, cost)
                if error is not None:
                    raise PtshareError(f"{sc.name}: cannot be timed on this host: {error}")
                by_index = {h.index: h for h in host.steps}
                for st in steps[sc.name]:
                    st.measured_ns.append(by_index[st.step].wall_ns)
    for sts in steps.values():
        for st in sts:
            st.overhead_ns = st.calls * overhead.get(st.op, overhead["call"])
    return TimeReport([s for sts in steps.values() for s in sts], overhead, tolerance, runs, cost.name,
                      cost.machine)


def report_text(report: TimeReport) -> str:
    from ..cli.render import table
    from ..units import format_ns

    def pct(e: float | None) -> str:
        return "-" if e is None else f"{100 * e:+.0f}%"

    rows = [[s.scenario, s.step, s.op, s.pid, format_ns(s.predicted_ns), format_ns(statistics.median(s.measured_ns)),
             format_ns(s.overhead_ns), format_ns(s.kernel_ns), pct(s.error)] for s in report.steps]
    o = report.overhead
    out = [f"Time per step: the cost model (profile {report.profile!r}, measured on {report.profile_machine}) against "
           f"this host, CPU time of the worker's thread, median of {report.runs} interleaved runs.",
           f"The worker's own part, measured and subtracted: {format_ns(o['call'])} per measured call, "
           f"{format_ns(o['fork'])} per fork (its interpreter), {format_ns(o['exit'])} per exit.",
           table(["scenario", "step", "op", "pid", "predicted", "measured", "worker", "kernel", "error"], rows,
                 "lrllrrrrr"), ""]
    sums = [[op, s.steps, f"{100 * s.median_error:.0f}%", f"{100 * s.worst_error:.0f}% ({s.worst})", s.unresolved,
             "yes" if s.ok(report.tolerance) else "NO"] for op, s in report.summary().items()]
    out.append(f"Per op kind (|predicted - kernel| / kernel; the check: the median within "
               f"{100 * report.tolerance:.0f}%):")
    out.append(table(["op", "steps", "median |error|", "worst |error|", "no error*", "within"], sums, "lrrlrl"))
    out.append("* steps whose measured time was no more than the worker's own part, measured apart: the kernel's "
               "share is below what the worker's varies by, so these have no error and are not in the median")
    out.append(f"time: {'PASS' if report.ok else 'FAIL'}")
    return "\n".join(out)
