"""What would each page-table design cost the system a snapshot describes?

For every policy the snapshot is rebuilt in the simulator (:mod:`.replay`) and measured: the
page-table memory of each process and of the system, what forking each process would cost, and
what a new process attaching the same objects would take in faults to warm up to the same pages.
Under ``linux`` each process's simulated VmPTE is checked against the kernel's (:mod:`.bounds`).
The result is the ``ptshare.whatif/1`` JSON document.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..cost import CostModel
from ..policies import get_policy
from ..policies.base import Policy
from ..system import SimulationError, System
from . import bounds
from .model import ProcessSnap, Snapshot
from .pageset import PageSet
from .replay import exact_faults, map_vma, new_system, replay_process

SCHEMA = "ptshare.whatif/1"
BASELINE = "linux"
NO_PMD_SHARE = "linux-no-pmd-share"


@dataclass
class PolicyRun:
    """One policy's figures: per process (by pid string) and for the system."""

    policy: str
    processes: dict[str, dict] = field(default_factory=dict)
    system: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def run_policy(snapshot: Snapshot, policy: Policy, cost: CostModel, costs: bool = True) -> PolicyRun:
    """Rebuild ``snapshot`` under ``policy`` and measure it (with fork and warm-up costs if ``costs``)."""
    t0 = time.perf_counter()
    run = PolicyRun(policy.name)
    system = new_system(snapshot, policy)
    names = [str(p.pid) for p in snapshot.processes]
    with exact_faults(policy):
        for name, proc in zip(names, snapshot.processes, strict=True):
            replay_process(system, name, proc, run.warnings)
    for name in names:
        m = system.process(name)
        run.processes[name] = {k: m[k] for k in ("vmpte_kb", "rss_kb", "anon_huge_kb", "pt_shared_kb", "vmas")}
    # The replay's own event counts (faults, copies) describe the rebuilding, not the system: left out.
    measured = system.system()
    run.system = {k: measured[k] for k in ("pagetables_kb", "frames_used", "memory_used_kb", "shared_tables")}
    run.system["vmpte_total_kb"] = sum(p["vmpte_kb"] for p in run.processes.values())
    run.system["pt_shared_total_kb"] = sum(p["pt_shared_kb"] for p in run.processes.values())
    if costs:
        warm: dict[tuple, dict] = {}
        for name, proc in zip(names, snapshot.processes, strict=True):
            run.processes[name]["fork"] = fork_cost(system, name, cost)
            run.processes[name]["warmup"] = warmup_cost(system, name, proc, cost, warm)
        forks = [p["fork"] for p in run.processes.values()]
        run.system["fork_ptes_copied_total"] = sum(f["ptes_copied"] for f in forks)
        run.system["fork_est_ns_total"] = sum(f["est_ns"] for f in forks)
        run.system["fork_est_ns_background_total"] = sum(f["est_ns_background"] for f in forks)
    run.wall_s = round(time.perf_counter() - t0, 3)
    return run


def fork_cost(system: System, name: str, cost: CostModel) -> dict:
    """What fork() of process ``name`` costs now (the child exits again at once): ``est_ns`` on the
    caller's path, ``est_ns_background`` off it (the copy async-fork's child makes before it runs)."""
    before = system.k.events.snapshot()
    offpath = system.k.offpath.snapshot()
    child = f"{name}+fork"
    system.fork(name, child)
    delta = system.k.events.snapshot() - before
    events = system.k.events.as_dict(before)
    out = {"ptes_copied": events["ptes_copied"], "tables_copied": events["pte_tables_copied"],
           "est_ns": round(cost.estimate(delta)), "child_vmpte_kb": system.process(child)["vmpte_kb"]}
    system.exit(child)
    background = system.k.offpath.snapshot() - offpath
    copied = system.k.offpath.as_dict(offpath)
    out["ptes_copied"] += copied["ptes_copied"]
    out["tables_copied"] += copied["pte_tables_copied"]
    out["est_ns_background"] = round(cost.estimate(background))
    return out


def warmup_cost(system: System, name: str, proc: ProcessSnap, cost: CostModel, memo: dict[tuple, dict]) -> dict:
    """Faults a new process takes to map the objects of ``proc`` at the same addresses and read the
    page-cache pages ``proc`` has present in them (its private anonymous memory would be its own).
    Processes with the same mappings and pages share one measurement."""
    vmas = [(v, _page_cache_pages(v.mapped, v.written)) for v in proc.vmas if v.object >= 0]
    key = tuple((v.start, v.end, v.object, v.offset, v.perms, _digest(pages)) for v, pages in vmas)
    if key in memo:
        return memo[key]
    new = f"{name}+new"
    before = system.k.events.snapshot()
    system.spawn(new)
    for v, pages in vmas:
        try:
            map_vma(system, new, v, pages, PageSet.empty(pages.npages))
        except SimulationError:
            continue  # left out of the replay too, with a warning
    m = system.process(new)
    out = {"faults": m["minflt"], "est_ns": round(cost.estimate(system.k.events.snapshot() - before)),
           "vmpte_kb": m["vmpte_kb"]}
    system.exit(new)
    memo[key] = out
    return out


def _page_cache_pages(mapped: PageSet, written: PageSet) -> PageSet:
    if written.count() == 0:
        return mapped
    return PageSet.from_mask(mapped.mask() & ~written.mask())


def _digest(pages: PageSet) -> str:
    return hashlib.blake2b(pages.payload().tobytes(), digest_size=16).hexdigest()


# --- the report ---------------------------------------------------------------------------------

def whatif(snapshot: Snapshot, policies: list[str], cost: CostModel, source: str = "",
           progress: Callable[[str], None] | None = None) -> dict:
    """The ``ptshare.whatif/1`` document for ``snapshot`` under ``policies`` (``linux`` always included)."""
    names = [BASELINE, *(p for p in policies if p != BASELINE)]
    runs: dict[str, PolicyRun] = {}
    for name in names:
        if progress is not None:
            progress(name)
        runs[name] = run_policy(snapshot, get_policy(name), cost)
    has_hugetlb = any(v.kind == "hugetlb" for p in snapshot.processes for v in p.vmas)
    no_share = None
    if has_hugetlb:
        no_share = runs.get(NO_PMD_SHARE) or run_policy(snapshot, get_policy(NO_PMD_SHARE), cost, costs=False)
    return {
        "schema": SCHEMA,
        "snapshot": _snapshot_info(snapshot, source),
        "policies": names,
        "cost_profile": {"name": cost.name, "machine": cost.machine},
        "processes": _processes(snapshot, runs),
        "system": _system(snapshot, runs, no_share),
        "warnings": sorted(set(runs[BASELINE].warnings)),
        "wall_s": {name: run.wall_s for name, run in runs.items()},
    }


def _snapshot_info(snapshot: Snapshot, source: str) -> dict:
    meta = snapshot.meta
    return {"file": source, "created": meta.get("created"), "host": meta.get("host"), "kernel": meta.get("kernel"),
            "method": meta.get("method"), "processes": len(snapshot.processes), "partial": snapshot.partial,
            "problems": snapshot.problems, "warnings": snapshot.warnings}


def _processes(snapshot: Snapshot, runs: dict[str, PolicyRun]) -> dict:
    out = {}
    for proc in snapshot.processes:
        pid = str(proc.pid)
        simulated = runs[BASELINE].processes[pid]["vmpte_kb"]
        out[pid] = {
            "comm": proc.comm,
            "ppid": proc.ppid,
            "command": proc.command,
            "measured_vmpte_kb": proc.vmpte_kb,
            "measured_rss_kb": proc.status.get("VmRSS", 0),
            "measured_anon_huge_kb": _anon_huge_kb(proc),
            "anon_shared_kb": proc.anon_shared_kb,
            "linux_check": bounds.verdict(simulated, proc.vmpte_kb, proc),
            "policies": {name: run.processes[pid] for name, run in runs.items()},
        }
    return out


def _system(snapshot: Snapshot, runs: dict[str, PolicyRun], no_share: PolicyRun | None) -> dict:
    base = runs[BASELINE].system["pagetables_kb"]
    savings = {}
    for name, run in runs.items():
        if name != BASELINE:
            savings[name] = _saving(base, run.system["pagetables_kb"])
    if no_share is not None:
        savings["hugetlb-pmd-sharing"] = _saving(no_share.system["pagetables_kb"], base)
    verdicts = [bounds.verdict(runs[BASELINE].processes[str(p.pid)]["vmpte_kb"], p.vmpte_kb, p)
                for p in snapshot.processes]
    return {
        "measured_pagetables_kb": snapshot.meta.get("meminfo", {}).get("PageTables"),
        "measured_vmpte_total_kb": sum(p.vmpte_kb for p in snapshot.processes),
        "policies": {name: run.system for name, run in runs.items()},
        "savings": savings,
        "linux_check": {
            "processes": len(verdicts),
            "exact": sum(v["verdict"] == "exact" for v in verdicts),
            "within_slack": sum(v["verdict"] == "within slack" for v in verdicts),
            "outside": sum(v["verdict"] == "outside" for v in verdicts),
            "slack_kb": sum(v["slack_kb"] for v in verdicts),
        },
    }


def _saving(before_kb: int, after_kb: int) -> dict:
    saved = before_kb - after_kb
    return {"pagetables_kb": saved, "percent": round(100 * saved / before_kb, 1) if before_kb else 0.0}


def _anon_huge_kb(proc: ProcessSnap) -> int:
    """AnonHugePages: pages of private anonymous memory mapped by huge PMDs, the huge zero page not counted."""
    return 4 * sum(PageSet.from_mask(v.thp.mask() & v.written.mask()).count()
                   for v in proc.vmas if v.kind == "anon" and v.thp is not None)
