"""The host backend (DESIGN §7): a scenario run on this machine's kernel, reported in the JSON
contract of the simulator so that the two can be compared.

``ptshare run SCENARIO --backend host`` calls :func:`run_host`.  The run is planned on the simulator
(:mod:`.plan`: where every mapping goes), checked against the safety limits, then executed by one
worker process per scenario process (:mod:`.worker`, :mod:`.session`).  Each process's counters
are the kernel's own, with the interpreter's part taken out:

``minflt``, ``majflt``
    ``getrusage()`` inside the worker, summed over the windows in which it ran the scenario's
    operations (so the interpreter's own faults never count).  The simulator does no I/O, so its
    ``minflt`` corresponds to ``minflt + majflt`` here: a fault that reads a file page from disk
    (or from a hole of a sparse file) is a major fault in Linux.
``vmpte_kb``, ``rss_kb`` (and ``rss_anon_kb``, ``rss_file_kb``, ``rss_shmem_kb``, ``hugetlb_kb``)
    ``/proc/self/status`` minus what the worker's interpreter holds, measured when the worker ends
    by unmapping the whole scenario window first.
``anon_huge_kb``
    ``AnonHugePages`` of ``/proc/self/smaps_rollup``: anonymous memory mapped by huge PMDs (THP).
``system.pagetables_kb``
    ``/proc/meminfo`` PageTables since the run began, less the workers' interpreter tables and
    this process's own growth, plus one 4 KiB PGD per live process as the simulator counts it.
    PageTables counts every process on the machine, so this figure is only as quiet as the
    machine is; ``pagetables_raw_kb`` is the counter itself.

``wall_ns`` is the operation's time where it ran (inside the worker for system calls, touches and
the fork itself; in this process for spawn, exec, truncate); ``est_ns`` is the simulator's
estimate for the same step, from the cost model, so one run shows prediction and measurement.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..cost import CostModel, load_profile
from ..errors import PtshareError, UsageError
from ..scenario.model import Scenario
from ..scenario.run import RunResult, StepResult
from . import measure
from .objects import HostError, TooLittleMemory, meminfo
from .plan import Plan, make_plan
from .session import Incarnation, Session, StepRecord
from .thp import COLLAPSE_TRIES, check_thp_host, collapses
from .worker import read_status

SIM_PGD_KB = 4  # the simulator counts one 4 KiB PGD per process in pagetables_kb
HOST_PGD_KB = 4  # measured on Linux 6.18 x86-64 without PTI: an order-0 PGD
# What a worker costs the host beyond the scenario's own memory (measured: a worker's interpreter
# holds about 45 MiB, most of it shared with its forked children, which dirty a few MiB each).
SPAWNED_WORKER_KB = 64 << 10
FORKED_WORKER_KB = 8 << 10


@dataclass
class HostRunResult(RunResult):
    """A run on the host: the contract's fields, plus how the measurement went (``host``)."""

    notes: list[str] = field(default_factory=list)
    measurement: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["host"] = {**self.measurement, "notes": self.notes}
        return out


def run_host(scenario: Scenario, policies: list[str], args: Any) -> tuple[list[RunResult], PtshareError | None]:
    """``ptshare run --backend host``: the scenario on this machine's kernel."""
    if any(p != "linux" for p in policies):
        raise UsageError("the host backend runs this machine's kernel, whose policy is 'linux'; "
                         "use --policy linux (the default) with --backend host")
    result, error = run_on_host(scenario, load_profile(getattr(args, "profile", None)))
    return [result], error


def run_on_host(scenario: Scenario, cost: CostModel | None = None,
                own_layout: bool = False) -> tuple[HostRunResult, PtshareError | None]:
    """Run ``scenario`` on the host.  Returns what ran and the error that stopped it, if any.

    With ``own_layout`` the kernel chooses where every mapping goes (:class:`.session.Session`);
    ``measurement["floor"]`` is then the address below which the workers had it place them."""
    cost = cost or load_profile()
    check_host(scenario)
    plan = make_plan(scenario, cost)
    check_limits(plan)
    if not plan.uses_thp:
        return _run_plan(plan, cost, own_layout)
    check_thp_host()
    for _ in range(COLLAPSE_TRIES):
        before = collapses()
        result, error = _run_plan(plan, cost, own_layout)
        if collapses() == before:
            return result, error
    raise HostError(f"khugepaged collapsed huge pages during each of {COLLAPSE_TRIES} runs of {scenario.name!r} "
                    "(/proc/vmstat thp_collapse_alloc grew), which the simulator does not model; run it again "
                    "when the machine is quieter")


def _run_plan(plan: Plan, cost: CostModel, own_layout: bool) -> tuple[HostRunResult, PtshareError | None]:
    started = time.perf_counter_ns()
    own_start = read_status()["vmpte_kb"]
    with _signals_interrupt():
        session = Session(plan, own_layout)
        try:
            error = session.run()
            session.finish()
        finally:
            with _signals_held():
                session.close()
    error = error or plan.error
    return _result(plan, session, cost, own_start, time.perf_counter_ns() - started, error), error


def host_problem(need_root: bool = False) -> str | None:
    """Why this machine cannot run the host backend, or None if it can."""
    if sys.platform != "linux":
        return f"the host backend needs Linux; this is {sys.platform}"
    if not measure.supported():
        return "the host backend needs an x86-64 machine (its measured calls are x86-64 code)"
    if need_root and os.geteuid() != 0:
        return ("this needs root on the host (a hugetlbfs mount and vm.nr_hugepages for hugetlb objects, "
                "vm.stat_refresh for PageTables); run as root")
    return None


def check_host(scenario: Scenario) -> None:
    """Refuse a host this backend cannot run on, with the reason."""
    problem = host_problem(need_root=any(o.kind == "hugetlb" for o in scenario.objects))
    if problem is not None:
        raise HostError(problem)


def check_limits(plan: Plan) -> None:
    """Refuse a scenario that would use more than half of the memory available now."""
    info = meminfo()
    available = info["MemAvailable"]
    huge_kb = plan.hugepages * 2048
    workers_kb = plan.spawned * SPAWNED_WORKER_KB + plan.forked * FORKED_WORKER_KB
    need = plan.peak_kb + huge_kb + workers_kb
    if need > available // 2:
        mib = 1024
        raise TooLittleMemory(
            f"scenario {plan.scenario.name!r} would use about {need // mib:,} MiB on this host "
            f"({plan.peak_kb // mib:,} MiB of scenario memory at its peak, {huge_kb // mib:,} MiB of huge pages, "
            f"{workers_kb // mib:,} MiB for {plan.spawned + plan.forked} worker processes): more than half of the "
            f"{available // mib:,} MiB available now, which is the host backend's limit; make the scenario smaller")


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end a host run the way Ctrl-C does, so that its cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and friends while cleaning up; they take effect just after."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --- results ------------------------------------------------------------------------------------

def _metrics(inc: Incarnation, status: dict[str, Any], alive: bool) -> dict[str, Any]:
    raw, interp = status["raw"], inc.interp or {}
    out: dict[str, Any] = {
        "minflt": inc.base_minflt + status["minflt"],
        "majflt": inc.base_majflt + status["majflt"],
    }
    for key in ("vmpte_kb", "rss_kb", "rss_anon_kb", "rss_file_kb", "rss_shmem_kb", "hugetlb_kb", "anon_huge_kb"):
        out[key] = raw.get(key, 0) - interp.get(key, 0)
    out["alive"] = alive
    out["pid"] = inc.pid
    out["layout"] = status.get("layout", [])
    if not alive and inc.killed_by:
        out["killed_by"] = inc.killed_by
    return out


def _pagetables(session: Session, record: StepRecord, own_start: int) -> int:
    live = [inc for inc, _, alive in record.processes.values() if alive]
    interp = sum((inc.interp or {}).get("vmpte_kb", 0) + HOST_PGD_KB for inc in live)
    return (record.pagetables_kb - session.pagetables_start - interp - (record.own_vmpte_kb - own_start)
            + SIM_PGD_KB * len(live))


def _result(plan: Plan, session: Session, cost: CostModel, own_start: int, wall: int,
            error: PtshareError | None) -> HostRunResult:
    steps = []
    for record in session.records:
        step = record.planned.step
        processes = {name: _metrics(inc, status, alive) for name, (inc, status, alive) in record.processes.items()}
        system = {
            "pagetables_kb": _pagetables(session, record, own_start),
            "pagetables_raw_kb": record.pagetables_kb,
            "faults": sum(p["minflt"] + p["majflt"] for p in processes.values()),
        }
        steps.append(StepResult(index=step.index, op=step.op, pid=step.fields.get("pid"), repeat=step.repeat,
                                line=step.line, processes=processes, system=system, est_ns=record.planned.est_ns,
                                wall_ns=record.wall_ns, signals=record.signals))
    notes = _drift_notes(session)
    measurement = {
        "mmap_base": hex(plan.scenario.machine.mmap_base or 0),
        # interp_start: a spawned worker's own part before the scenario began (a forked one starts
        # with the scenario's tables already copied, so it has none); interp_end: what was taken out
        "workers": [{"process": inc.name, "pid": inc.pid, "forked": inc.popen is None,
                     "interp_start": inc.hello.get("interp") if inc.popen is not None else None,
                     "interp_end": inc.interp} for inc in session.everyone],
        "hugepages_reserved": plan.hugepages,
        "floor": sorted({inc.hello.get("floor", 0) for inc in session.everyone}),
        "kernel": os.uname().release,
    }
    return HostRunResult(scenario=plan.scenario.name, policy="linux", backend="host", steps=steps,
                         profile=cost.name, wall_ns=wall, events={}, complete=error is None,
                         error=None if error is None else str(error), notes=notes, measurement=measurement)


def _drift_notes(session: Session) -> list[str]:
    """Evidence that a worker's interpreter changed its own page tables or RSS during the run, which
    would shift that process's figures: a spawned worker's part at the start differs from its part
    at the end, or a process's counters moved in a step in which nothing touched it."""
    notes = []
    for inc in session.everyone:
        if inc.popen is not None and inc.interp is not None:
            start, end = inc.hello["interp"], inc.interp
            for key in ("vmpte_kb", "rss_kb"):
                if start[key] != end[key]:
                    notes.append(f"{inc.name} (pid {inc.pid}): the interpreter's own {key} went from {start[key]} "
                                 f"to {end[key]} during the run")
    prev: dict[int, dict[str, Any]] = {}
    for record in session.records:
        truncated = any(op.kind == "truncate" for op in record.planned.ops)
        for name, (inc, status, alive) in record.processes.items():
            before = prev.get(id(inc))
            if alive and before is not None and name not in record.acted and not truncated:
                for key in ("vmpte_kb", "rss_kb"):
                    if before["raw"][key] != status["raw"][key]:
                        notes.append(f"{name} (pid {inc.pid}): {key} changed from {before['raw'][key]} to "
                                     f"{status['raw'][key]} in step {record.planned.step.index}, in which it "
                                     "did nothing: the interpreter's own part moved")
            prev[id(inc)] = status
    return notes
