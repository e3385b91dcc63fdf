"""``ptshare validate --translation``: the translation model against this CPU, by time.

These guests expose no hardware counters, so translation is measured by its time: a dependent
random pointer chase (``host/chase.c``, compiled here with the system's ``cc``) over a shared
memory object, one node per page, at 4 KiB and 2 MiB (hugetlb) pages, over regions of several
sizes, and at one size by two processes with private page tables against two threads sharing one
set.  Single timings on a shared machine spread by tens of percent, so every configuration runs
``runs`` times, interleaved (round r runs each configuration once, in an order that rotates), and
what is checked are ratios -- 4 KiB / 2 MiB at each size, each size against the one before,
threads / processes -- taken per round and then their median, which cancels most of the noise.
Absolute ns per access are reported, not checked.

The model's prediction for a configuration is the same chase run through the simulator with
translation on (CPU table ``zen4-guest``: this machine, nested paging over 4 KiB host pages): the
object mapped and faulted in, one warming pass over every page, then random reads; what it
counts -- references served by L1d, L2, LLC and DRAM, L1 dTLB misses, walks -- priced per access.
The CPU table's LLC capacity and its L1d, L2, LLC and DRAM prices are first calibrated in the
same interleaved rounds by chases over every cache line of small regions (:mod:`.caches`: the
LLC a guest can count on is what the other tenants leave it); a walk's fixed part is then fitted
(non-negative least squares) to the 2 MiB chases alone.  Every checked ratio involves 4 KiB pages
or several workers, which neither fit saw, so the ratios are predictions.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PtshareError
from ..units import format_size

SCHEMA = "ptshare.validate-translation/1"
TOLERANCE = 0.25
MiB, GiB = 1 << 20, 1 << 30
SIZES = (16 * MiB, 64 * MiB, 256 * MiB, GiB)
PAIR_SIZE = GiB  # where processes and threads are compared
HPAGE = 2 * MiB
SOURCE = Path(__file__).with_name("host") / "chase.c"


class ChaseError(PtshareError):
    """The chase program could not be built or run here."""


@dataclass(frozen=True)
class Config:
    size: int
    huge: bool
    mode: str = "proc"  # proc | thread
    workers: int = 1
    stride: int = 4096  # bytes between nodes: 4096, one per page; 64, every cache line

    @property
    def name(self) -> str:
        if self.stride < 4096:
            return f"{format_size(self.size)} every line"
        page = "2MiB" if self.huge else "4KiB"
        who = "" if self.workers == 1 else f" {self.workers} {self.mode}s"
        return f"{format_size(self.size)} {page}{who}"


@dataclass
class Case:
    name: str
    kind: str  # ratio | ns
    predicted: float
    measured: float
    runs: list[float] = field(default_factory=list)

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1 if self.measured else float("inf")

    @property
    def ok(self) -> bool:
        return self.kind != "ratio" or abs(self.error) <= TOLERANCE

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "predicted": round(self.predicted, 4),
                "measured": round(self.measured, 4), "error": round(self.error, 4),
                "checked": self.kind == "ratio", "ok": self.ok, "runs": [round(r, 4) for r in self.runs]}


def configs(sizes: tuple[int, ...] = SIZES) -> list[Config]:
    out = [Config(s, huge) for s in sizes for huge in (False, True)]
    out += [Config(PAIR_SIZE, False, "proc", 2), Config(PAIR_SIZE, False, "thread", 2)]
    return out


# --- the host -------------------------------------------------------------------------------------

def build(workdir: Path) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        raise ChaseError("no C compiler: 'cc' is not on PATH (install gcc)")
    out = workdir / "chase"
    done = subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(SOURCE)], capture_output=True, text=True)
    if done.returncode:
        raise ChaseError(f"cc could not build {SOURCE.name}: {done.stderr.strip()}")
    return out


def run_chase(exe: Path, cfg: Config, accesses: int, seed: int) -> float:
    """One run: the median over its workers of ns per access."""
    done = subprocess.run([str(exe), str(cfg.size), str(int(cfg.huge)), cfg.mode, str(cfg.workers),
                           str(accesses), str(seed), str(cfg.stride)], capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise ChaseError(f"the chase over {cfg.name} failed: {done.stderr.strip() or done.returncode}")
    values = [float(x) for x in done.stdout.split()]
    if len(values) != cfg.workers:
        raise ChaseError(f"the chase over {cfg.name} printed {done.stdout!r}")
    return statistics.median(values)


class HugePages:
    """vm.nr_hugepages raised for the measurement and given back, under the host backend's lock."""

    def __init__(self, pages: int) -> None:
        from ..host.objects import HostError, _take_lock, _write_nr_hugepages, meminfo

        self.pages = 0
        self._lock = _take_lock()
        before, free_before = meminfo()["HugePages_Total"], meminfo()["HugePages_Free"]
        _write_nr_hugepages(before + pages)
        self.pages = meminfo()["HugePages_Total"] - before
        if meminfo()["HugePages_Free"] - free_before < pages:
            self.close()
            raise HostError(f"the 2 MiB chases need {pages} huge pages; the kernel could reserve only "
                            f"{self.pages}: free some memory, or give smaller --sizes")

    def close(self) -> None:
        from ..host.objects import _write_nr_hugepages, meminfo

        if self.pages:
            _write_nr_hugepages(max(0, meminfo()["HugePages_Total"] - self.pages))
            self.pages = 0
        self._lock.close()


def measure(cfgs: list[Config], runs: int, accesses: int, progress=None) -> dict[Config, list[float]]:
    """ns per access of every configuration, ``runs`` interleaved rounds."""
    if os.geteuid() != 0:
        raise ChaseError("validate --translation needs root (it reserves huge pages for the 2 MiB chases)")
    times: dict[Config, list[float]] = {c: [] for c in cfgs}
    huge = max((c.size for c in cfgs if c.huge), default=0) // HPAGE
    with tempfile.TemporaryDirectory(prefix="ptshare-chase-") as tmp:
        exe = build(Path(tmp))
        pages = HugePages(huge) if huge else None
        try:
            for r in range(runs):
                order = cfgs[r % len(cfgs):] + cfgs[: r % len(cfgs)]
                for n, cfg in enumerate(order):
                    if progress is not None:
                        progress(r * len(cfgs) + n, runs * len(cfgs))
                    times[cfg].append(run_chase(exe, cfg, accesses, seed=r + 1))
        finally:
            if pages is not None:
                pages.close()
    return times


# --- the model ------------------------------------------------------------------------------------

def predict(cfg: Config, cpu=None, accesses: int = 1 << 17):
    """The model's figures for the chase ``cfg`` (see the module docstring)."""
    from ..scenario.patterns import accesses as pattern
    from ..system import System
    from . import DEFAULT

    s = System("linux", aslr_bits=0, translation={"cpu": cpu or DEFAULT})
    s.create_object("obj", "hugetlb" if cfg.huge else "shmem", cfg.size)
    s.spawn("main")
    seg = s.mmap("main", cfg.size, object="obj", shared=True, align=str(GiB))
    s.touch("main", seg, write=True)
    workers = ["main"] if cfg.mode == "thread" else []
    if cfg.mode == "proc":
        for w in range(cfg.workers):
            s.fork("main", f"w{w}")
            workers.append(f"w{w}")
    pages = cfg.size >> 12
    slice_ = s.translation.slice
    for w in workers:  # each worker's warming pass (its own faults, where its tables are its own)
        for _ in range(cfg.workers if cfg.mode == "thread" else 1):
            s.access(w, pattern(seg, cfg.size, "random", count=pages, seed=7))
    s.translation.take_step()
    rounds = max(1, accesses // (slice_ * cfg.workers))
    for r in range(rounds):  # the workers' slices alternate, one per CPU, as they run at once
        for w in range(cfg.workers):
            who = workers[w] if cfg.mode == "proc" else "main"
            s.access(who, pattern(seg, cfg.size, "random", count=slice_, seed=1000 * r + w))
    return s.translation.take_step()


FITTED = ("walk",)


def per_access(fig) -> np.ndarray:
    """What one access of the chase counts: (L1d, L2, LLC, DRAM references, L1 dTLB misses, walks)."""
    return np.array([*fig.served, fig.tlb_misses, fig.walks]) / fig.accesses


def fit(cfgs: list[Config], counts: dict[Config, np.ndarray], times: dict[Config, list[float]],
        cpu) -> dict[str, float]:
    """Latencies: the CPU's (as the line chases calibrated them) for every reference and the L2
    TLB; a walk's fixed part fitted to the median ns of the 2 MiB chases."""
    from ..calibrate.nnls import nnls

    lat = cpu.latency
    used = [c for c in cfgs if c.huge]
    fixed = np.array([lat.l1, lat.l2, lat.llc, lat.dram, lat.tlb_l2, 0.0])
    a = np.array([counts[c][[5]] for c in used])
    b = np.array([statistics.median(times[c]) - counts[c] @ fixed for c in used])
    x = nnls(a, b) if len(used) else np.array([lat.walk])
    return {**{k: float(v) for k, v in lat.as_dict().items() if k not in FITTED},
            **dict(zip(FITTED, map(float, x), strict=True))}


def priced(count: np.ndarray, ns: dict[str, float]) -> float:
    return float(count @ np.array([ns["l1"], ns["l2"], ns["llc"], ns["dram"], ns["tlb_l2"], ns["walk"]]))


# --- the cases ------------------------------------------------------------------------------------

def cases(cfgs: list[Config], times: dict[Config, list[float]], predicted: dict[Config, float]) -> list[Case]:
    def ratio(name: str, a: Config, b: Config) -> Case:
        per_round = [x / y for x, y in zip(times[a], times[b], strict=True)]
        return Case(name, "ratio", predicted[a] / predicted[b], statistics.median(per_round), per_round)

    out = []
    sizes = sorted({c.size for c in cfgs if c.workers == 1})
    single = {(c.size, c.huge): c for c in cfgs if c.workers == 1}
    for size in sizes:
        if (size, True) in single:
            out.append(ratio(f"4KiB/2MiB pages at {format_size(size)}", single[size, False], single[size, True]))
    for small, large in itertools.pairwise(sizes):
        out.append(ratio(f"{format_size(large)}/{format_size(small)} at 4KiB pages", single[large, False],
                         single[small, False]))
    procs = [c for c in cfgs if c.mode == "proc" and c.workers > 1]
    threads = [c for c in cfgs if c.mode == "thread" and c.workers > 1]
    for p, t in zip(procs, threads, strict=False):
        out.append(ratio(f"{t.workers} threads/{p.workers} processes at {format_size(p.size)}", t, p))
    for c in cfgs:
        out.append(Case(f"ns per access, {c.name}", "ns", predicted[c], statistics.median(times[c]), times[c]))
    return out


def report_json(found: list[Case], runs: int, cpu: str, ns: dict[str, float], hier) -> str:
    return json.dumps({"schema": SCHEMA, "cpu": cpu, "runs": runs, "tolerance": TOLERANCE,
                       "latency_ns": {k: round(v, 2) for k, v in ns.items()}, "fitted": list(FITTED),
                       "calibrated": hier.to_json(),
                       "ok": all(c.ok for c in found), "cases": [c.to_json() for c in found]}, indent=1)


def report_text(found: list[Case], runs: int, cpu: str, ns: dict[str, float], hier) -> str:
    from ..cli.render import table

    prices = ", ".join(f"{k} {v:.1f}" + (" (fitted)" if k in FITTED else "") for k, v in ns.items())
    rows = [[c.name, c.kind, f"{c.predicted:.3g}", f"{c.measured:.3g}", f"{c.error:+.0%}",
             ("ok" if c.ok else "OUTSIDE") if c.kind == "ratio" else "(not checked)"] for c in found]
    head = (f"translation on this CPU against the model ({cpu}): medians of {runs} interleaved runs; "
            f"ratios must be within {TOLERANCE:.0%}")
    bad = sum(not c.ok for c in found)
    tail = "every ratio within tolerance" if not bad else f"{bad} ratio case(s) outside tolerance"
    return "\n".join([head, f"effective LLC (calibrated by the line chases): {format_size(hier.llc)}",
                      f"ns per reference: {prices}",
                      table(["case", "kind", "model", "measured", "error", ""], rows, "llrrrl"), tail])
