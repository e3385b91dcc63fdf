"""``ptshare validate``: the simulator checked against the kernel it models.

Each scenario runs on the host (:mod:`.backend`) and on the simulator under ``linux`` with the
same layout (``mmap_base`` at the top of the host window, or as far below it as the scenario's
growth needs, no randomisation: the same addresses, so the same page tables), and every process's
counters are compared after every step:

========================  ===============================  ============================  =========
metric                    host                             simulator                     tolerance
========================  ===============================  ============================  =========
faults                    ``ru_minflt + ru_majflt``        ``minflt``                    0
vmpte_kb                  VmPTE                            VmPTE                         0
rss_kb (and its anon,     VmRSS (RssAnon, RssFile,         RSS (anon, file, shmem)       0
file and shmem parts)     RssShmem)
anon_huge_kb              AnonHugePages (smaps_rollup)     anonymous pages huge PMDs map 0
alive                     the process still runs           the same                      equal
layout                    its VMAs in /proc/PID/maps       its VMAs                      equal
signal (a killed one)     signal and si_addr of the bad    signal and address of the     equal
                          access, made in a traced copy    access it kills at
                          (:mod:`.probe`)
========================  ===============================  ============================  =========

With ``own_layout`` the kernel chooses every address on the host and the simulator predicts them
(:func:`_simulate_own_layout`); the same table is compared, the layouts at the kernel's addresses.

The tolerances are zero because the measurement has no noise floor: faults are counted by
machine code around each operation (:mod:`.measure`), and the interpreter's page tables and RSS
are measured separately and taken out (:mod:`.worker`).  A difference is a difference between the
model and Linux -- a bug in the simulator, to be fixed there, never here.  The run also fails if
the host measurement reports that a worker's interpreter changed its own part during the run
(``host.notes``), since the figures would then be off by that much.

The kernel is not quite deterministic here: fault-around maps only page-cache folios it can lock at
that instant and skips one that is locked or carries the readahead mark (``next_uptodate_folio()``
in mm/filemap.c), so now and then a reader takes a fault more than the same run takes at other
times.  A scenario whose counters differ, or whose host run was disturbed (``host.notes``), is
therefore run on the host again, up to ``runs`` times in all; it passes only if a run agrees
exactly, and the report lists every run that did not.

A scenario the host backend refuses (one that needs more memory than this host has to spare, a
hugetlb reservation the kernel cannot make, a layout outside the window, a step the simulator
itself rejects) is reported as refused, with the reason, and the others still run; a refused
scenario does not pass.

Not checked, shown: ``pagetables_kb`` (``/proc/meminfo`` PageTables counts every process on the
machine, so it is only as quiet as the machine), and time -- the cost model's estimate for each
fork and touch against the time measured on the host, as a ratio.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cost import CostModel, load_profile
from ..errors import PtshareError, ScenarioError
from ..scenario import Scenario, load, run
from ..scenario.run import RunResult, StepResult
from ..system import System
from .backend import run_on_host
from .layout import describe, mm_layout
from .objects import HostError
from .plan import make_plan
from .worker import WINDOW

SCHEMA = "ptshare.validate/1"
METRICS = ("faults", "vmpte_kb", "rss_kb", "rss_anon_kb", "rss_file_kb", "rss_shmem_kb", "anon_huge_kb")
TOLERANCE = dict.fromkeys(METRICS, 0)
TIMED_OPS = ("fork", "touch")
HOST_RUNS = 3


@dataclass
class Row:
    step: int
    op: str
    process: str
    metric: str
    host: Any
    sim: Any

    @property
    def diff(self) -> Any:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.host, self.sim)):
            return None
        return self.host - self.sim

    @property
    def ok(self) -> bool:
        if self.metric == "alive" or self.diff is None:
            return self.host == self.sim
        return abs(self.diff) <= TOLERANCE[self.metric]

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "op": self.op, "process": self.process, "metric": self.metric,
                "host": self.host, "sim": self.sim, "diff": self.diff, "ok": self.ok}


@dataclass
class Timing:
    step: int
    op: str
    pid: str
    predicted_ns: float
    measured_ns: int

    @property
    def ratio(self) -> float | None:
        return self.predicted_ns / self.measured_ns if self.measured_ns else None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "op": self.op, "pid": self.pid, "predicted_ns": round(self.predicted_ns),
                "measured_ns": self.measured_ns, "ratio": self.ratio}


@dataclass
class Verdict:
    """One scenario's comparison."""

    scenario: str
    path: str | None
    rows: list[Row] = field(default_factory=list)
    pagetables: list[tuple[int, str, int, int]] = field(default_factory=list)  # step, op, host, sim
    timing: list[Timing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # what was wrong with each earlier host run
    refused: str | None = None  # why the host backend would not run it

    @property
    def ok(self) -> bool:
        return self.refused is None and not self.errors and not self.notes and all(r.ok for r in self.rows)

    @property
    def host_runs(self) -> int:
        return len(self.rejected) + 1

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "file": self.path, "ok": self.ok, "refused": self.refused,
                "errors": self.errors,
                "notes": self.notes, "host_runs": self.host_runs,
                "rejected_runs": self.rejected,
                "rows": [r.to_json() for r in self.rows],
                "pagetables_kb": [{"step": s, "op": op, "host": h, "sim": m, "diff": h - m}
                                  for s, op, h, m in self.pagetables],
                "timing": [t.to_json() for t in self.timing]}


def validate(scenario: Scenario, cost: CostModel | None = None, runs: int = HOST_RUNS,
             own_layout: bool = False) -> Verdict:
    """Run ``scenario`` on the simulator and on the host and compare them; a run on the host
    whose counters differ is repeated, up to ``runs`` host runs in all.  With ``own_layout`` the
    kernel chooses every address on the host (:func:`_simulate_own_layout`)."""
    if runs < 1:
        raise PtshareError(f"runs must be at least 1, not {runs}")
    cost = cost or load_profile()
    try:
        return _validate(scenario, cost, runs, own_layout)
    except (ScenarioError, HostError) as exc:
        return refusal(scenario, exc)


def refusal(scenario: Scenario, exc: PtshareError) -> Verdict:
    """The verdict on a scenario the host backend will not run: refused, with the reason."""
    return Verdict(scenario.name, scenario.path, refused=str(exc))


def _validate(scenario: Scenario, cost: CostModel, runs: int, own_layout: bool) -> Verdict:
    placed = make_plan(scenario, cost).scenario  # the layout the host will use, with room to grow
    if not own_layout:
        sim, sim_error = _simulate(placed, cost, WINDOW)
    rejected: list[str] = []
    while True:
        verdict = Verdict(scenario.name, scenario.path, rejected=rejected)
        host, host_error = run_on_host(placed, cost, own_layout)
        if isinstance(host_error, ScenarioError):
            raise host_error  # the scenario cannot be run here at all: a mistake in it, not a disagreement
        if own_layout:
            sim, sim_error = _simulate_own_layout(placed, cost, host)
        if host_error is not None:
            verdict.errors.append(f"host: {host_error}")
        if sim_error is not None and str(sim_error) != str(host_error):
            verdict.errors.append(f"simulator: {sim_error}")
        verdict.notes = list(host.notes)
        _compare(verdict, host, sim)
        _compare_signals(verdict, host, sim)
        _compare_layouts(verdict, host, sim)
        if verdict.ok or verdict.errors or verdict.host_runs >= runs:
            return verdict
        rejected.append(_what_differed(verdict))


def _simulate(scenario: Scenario, cost: CostModel, region: tuple[int, int],
              task_size: int | None = None) -> tuple[RunResult, ScenarioError | None]:
    """The simulator's run, each live process's layout of ``region`` added to every step."""
    def layouts(system: System, step: StepResult) -> None:
        for task in system.k.tasks:
            if task.alive:
                step.processes[task.name]["layout"] = mm_layout(task.mm, *region)

    try:
        return run(scenario, "linux", cost=cost, task_size=task_size, observe=layouts), None
    except ScenarioError as exc:
        return exc.partial, exc  # type: ignore[attr-defined]


def _simulate_own_layout(scenario: Scenario, cost: CostModel,
                         host: RunResult) -> tuple[RunResult, ScenarioError | None]:
    """The simulator's side of an own-layout comparison.  Every host worker had the kernel place
    the scenario's mappings below its floor, the top of the free address space (see
    :func:`.worker.reserve_above`); the simulator gets the same: ``mmap_base`` at the floor and
    nothing mappable above it.  The addresses are then the kernel's choices and the simulator's
    predictions of them, and must agree."""
    floors = host.measurement["floor"]  # type: ignore[attr-defined]
    if len(floors) != 1:
        raise HostError(f"the host workers had different floors ({', '.join(map(hex, floors))}); an own-layout run "
                        "needs them equal (is address randomisation still on?)")
    floor = floors[0]
    placed = dataclasses.replace(scenario, machine=dataclasses.replace(scenario.machine, mmap_base=floor))
    return _simulate(placed, cost, (WINDOW[0], floor), task_size=floor)


def _compare_layouts(verdict: Verdict, host: RunResult, sim: RunResult) -> None:
    """Where every mapping is, where it ends and which merged: each live process's VMAs of the
    scenario's region, from ``/proc/PID/maps`` on the host and from the simulator's mm, after
    every step (metric ``layout``, values as ``start-end perms, ...``)."""
    for h, s in zip(host.steps, sim.steps, strict=False):
        for name, hp in h.processes.items():
            sp = s.processes.get(name)
            if sp is None or not hp["alive"] or not sp["alive"]:
                continue
            verdict.rows.append(Row(h.index, h.op, name, "layout", describe(hp.get("layout")),
                                    describe(sp.get("layout"))))


def _compare_signals(verdict: Verdict, host: RunResult, sim: RunResult) -> None:
    """A process the simulator kills at a bad access made that access on the host, in a traced
    copy of itself (:mod:`.probe`): the signal and the faulting address the kernel reported must
    be the simulator's.  One row per process killed, metric ``signal``, value ``SIGNAL@ADDRESS``."""
    for h, s in zip(host.steps, sim.steps, strict=False):
        host_sig = {x["pid"]: f"{x['signal']}@{x['addr']}" for x in h.signals}
        sim_sig = {x["pid"]: f"{x['signal']}@{x['addr']}" for x in s.signals}
        for pid in dict.fromkeys([*sim_sig, *host_sig]):
            verdict.rows.append(Row(h.index, h.op, pid, "signal", host_sig.get(pid), sim_sig.get(pid)))


def _what_differed(v: Verdict) -> str:
    bad = [r for r in v.rows if not r.ok]
    parts = [f"step {r.step} {r.process} {r.metric} {r.host} (simulator {r.sim})" for r in bad[:4]]
    if len(bad) > 4:
        parts.append(f"and {len(bad) - 4} more")
    return "; ".join(parts + [f"host measurement: {note}" for note in v.notes])


def _compare(verdict: Verdict, host: RunResult, sim: RunResult) -> None:
    if len(host.steps) != len(sim.steps):
        verdict.errors.append(f"the host ran {len(host.steps)} steps and the simulator {len(sim.steps)}")
    for h, s in zip(host.steps, sim.steps, strict=False):
        names = list(dict.fromkeys([*s.processes, *h.processes]))
        for name in names:
            hp, sp = h.processes.get(name), s.processes.get(name)
            if hp is None or sp is None:
                verdict.errors.append(f"step {h.index}: process {name!r} exists on "
                                      f"{'the host' if sp is None else 'the simulator'} only")
                continue
            verdict.rows.append(Row(h.index, h.op, name, "alive", hp["alive"], sp["alive"]))
            for metric in METRICS:
                hv = hp["minflt"] + hp["majflt"] if metric == "faults" else hp[metric]
                sv = sp["minflt"] if metric == "faults" else sp[metric]
                verdict.rows.append(Row(h.index, h.op, name, metric, hv, sv))
        verdict.pagetables.append((h.index, h.op, h.system["pagetables_kb"], s.system["pagetables_kb"]))
        if h.op in TIMED_OPS:
            verdict.timing.append(Timing(h.index, h.op, h.pid or "", s.est_ns, h.wall_ns))


def load_all(paths: list[str]) -> list[Scenario]:
    """Every scenario named (a directory: its *.toml files), loaded and checked before any runs."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.toml"))
            if not found:
                raise PtshareError(f"no scenarios (*.toml) in {p}")
            files.extend(found)
        else:
            files.append(p)
    return [load(f) for f in files]


# --- reports ----------------------------------------------------------------------------------------

def report_json(verdicts: list[Verdict]) -> str:
    doc = {"schema": SCHEMA, "ok": all(v.ok for v in verdicts), "tolerance": TOLERANCE,
           "scenarios": [v.to_json() for v in verdicts],
           "timing_summary": {op: {"steps": n, "geomean_ratio": mean}
                              for op, (n, mean) in _timing_summary(verdicts).items()}}
    return json.dumps(doc, indent=1)


def report_text(verdicts: list[Verdict], summary_only: bool = False) -> str:
    from ..cli.render import table
    from ..units import format_ns

    out = []
    for v in verdicts:
        if v.refused is not None:
            out.append(f"REFUSED  {v.scenario}  ({v.path}): {v.refused}")
            out.append("")
            continue
        out.append(f"{'PASS' if v.ok else 'FAIL'}  {v.scenario}  ({v.path})")
        for n, what in enumerate(v.rejected, 1):
            out.append(f"  host run {n} of {v.host_runs} differed, and was run again: {what}")
        if summary_only and v.ok:
            continue
        for error in v.errors:
            out.append(f"  error: {error}")
        for note in v.notes:
            out.append(f"  host measurement: {note}")
        out.append(_indent(table(*_metric_table(v))))
        bad = [r for r in v.rows if not r.ok and r.metric not in ("faults", "vmpte_kb", "rss_kb")]
        for r in bad:
            out.append(f"  step {r.step} {r.process}: {r.metric} host {r.host}, simulator {r.sim}"
                       + ("" if r.diff is None else f", difference {r.diff}"))
        if v.timing:
            rows = [[t.step, t.op, t.pid, format_ns(t.predicted_ns), format_ns(t.measured_ns),
                     "" if t.ratio is None else f"{t.ratio:.2f}"] for t in v.timing]
            out.append("  time (cost model's estimate / measured on this host; informative, not checked):")
            out.append(_indent(table(["step", "op", "pid", "predicted", "measured", "ratio"], rows, "rllrrr")))
        pt = ", ".join(f"{h - m:+}" for _s, _op, h, m in v.pagetables)
        out.append(f"  PageTables host - simulator per step, kB (machine-wide, not checked): {pt}")
        out.append("")
    passed = sum(v.ok for v in verdicts)
    out.append(f"{passed} of {len(verdicts)} scenarios agree with the kernel (tolerance: "
               f"{', '.join(f'{m} {t}' for m, t in TOLERANCE.items())}).")
    refused = [v.scenario for v in verdicts if v.refused is not None]
    if refused:
        out.append(f"{len(refused)} refused by the host backend (not run): {', '.join(refused)}.")
    rerun = [v for v in verdicts if v.rejected]
    if rerun:
        out.append(f"{len(rerun)} needed more than one host run: {', '.join(v.scenario for v in rerun)}.")
    for op, (n, mean) in _timing_summary(verdicts).items():
        out.append(f"time, {op}: the cost model's estimate is {mean:.2f}x the measured time "
                   f"(geometric mean over {n} steps)")
    return "\n".join(out)


def _metric_table(v: Verdict) -> tuple[list[str], list[list[Any]], str]:
    headers = ["step", "op", "process"]
    for metric in ("faults", "VmPTE kB", "RSS kB"):
        headers += [metric, "sim", "diff"]
    headers.append("")
    by_key: dict[tuple[int, str], dict[str, Row]] = {}
    for r in v.rows:
        by_key.setdefault((r.step, r.process), {})[r.metric] = r
    rows = []
    for (step, process), metrics in by_key.items():
        row: list[Any] = [step, metrics["alive"].op, process + ("" if metrics["alive"].host else " (exited)")]
        for m in ("faults", "vmpte_kb", "rss_kb"):
            r = metrics[m]
            row += [r.host, r.sim, r.diff]
        row.append("" if all(r.ok for r in metrics.values()) else "<-- differs")
        rows.append(row)
    return headers, rows, "rll" + "r" * 9 + "l"


def _timing_summary(verdicts: list[Verdict]) -> dict[str, tuple[int, float]]:
    out = {}
    for op in TIMED_OPS:
        ratios = [t.ratio for v in verdicts for t in v.timing if t.op == op and t.ratio]
        if ratios:
            out[op] = (len(ratios), math.exp(sum(math.log(r) for r in ratios) / len(ratios)))
    return out


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


__all__ = ["HOST_RUNS", "SCHEMA", "TOLERANCE", "Verdict", "load_all", "refusal", "report_json", "report_text",
           "validate"]
