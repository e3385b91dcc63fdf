"""Fork and its child's teardown, measured with the fork probe (:mod:`ptshare.realfork.probe`), a
C process whose own address space is negligible, rather than with a host-backend worker.

A worker is a Python interpreter: each of its forks also copies the interpreter's VMAs and PTEs
(a fixed cost ten times the kernel's own), and the memory it writes comes after the backend has
written and freed memory to keep the hypervisor's first touch out of its faults.  The probe writes
fresh memory as a program does and times its forks by their CPU time, so a busy machine does not
stretch them (see docs/model.md, "What fork's cost depends on").

Three kinds of probe runs, each varying one size: ``dense`` (every page of 2 to 8 GiB written,
as much of it as the memory available now allows: PTEs and their tables; the cost is per PTE
whose frame follows its predecessor's, as most of a large program's do -- the first few hundred
MiB a program writes get frames the allocator had just freed, out of order, which cost more per
PTE, see docs/model.md), ``sparse`` (one page per 2 MiB over 1 to 8 GiB: as many PTE
tables as PTEs), ``vmas`` (0 to 1,024 one-page VMAs: the cost per VMA, and with none, fork's
fixed cost).  Each run forks three times after a warm-up fork; its sample is the median of the
three, and a point's time the median over the runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..cost import CostModel
from ..realfork.compare import affordable
from ..realfork.predict import probe_scenario
from ..realfork.probe import run_probe
from ..scenario import run
from .experiment import Point
from .families import Sample, call

MIB = 1 << 20
GIB = 1 << 30
FORKS_PER_RUN = 3


@dataclass(frozen=True)
class ProbeConfig:
    kind: str
    size: int = 0
    stride: int = 4096
    vmas: int = 0

    @property
    def name(self) -> str:
        what = f"{self.vmas} VMAs" if self.kind == "vmas" else f"{self.size >> 20} MiB"
        return f"probe-{self.kind} {what}"


def probe_plan(quick: bool) -> list[ProbeConfig]:
    if quick:
        return [*(ProbeConfig("dense", n * MIB) for n in (16, 64, 256)),
                *(ProbeConfig("sparse", n * MIB, 2 * MIB) for n in (256, 1024)),
                *(ProbeConfig("vmas", vmas=k) for k in (0, 64, 256))]
    dense, _ = affordable(tuple(n * GIB for n in (2, 4, 8)))
    return [*(ProbeConfig("dense", n) for n in dense),
            *(ProbeConfig("sparse", n * GIB, 2 * MIB) for n in (1, 2, 4, 8)),
            *(ProbeConfig("vmas", vmas=k) for k in (0, 64, 256, 1024))]


class ProbeExperiment:
    """The probe runs: each config simulated once (its events), run on the host ``repeat`` times."""

    def __init__(self, configs: list[ProbeConfig], cost: CostModel) -> None:
        self.configs = configs
        self.cost = cost
        self.points: dict[ProbeConfig, tuple[Point, Point | None]] = {}

    def simulate(self, cfg: ProbeConfig) -> None:
        sc = probe_scenario(cfg.size, cfg.stride, cfg.vmas)
        sim = run(sc, "linux", cost=self.cost)
        fork = next(s for s in sim.steps if s.op == "fork")
        exit_ = next(s for s in sim.steps if s.op == "exit")
        fork_point = Point(cfg.name, Sample(fork.index, "fork"), dict(fork.events))
        exit_point = None
        if cfg.size or cfg.vmas:  # with nothing mapped, the child's munmap times nothing
            exit_point = Point(cfg.name, Sample(exit_.index, "exit", {call("exit"): 1}), dict(exit_.events))
        self.points[cfg] = (fork_point, exit_point)

    def run_once(self, cfg: ProbeConfig) -> None:
        r = run_probe(cfg.size, stride=cfg.stride, vmas=cfg.vmas, forks=FORKS_PER_RUN)
        fork_point, exit_point = self.points[cfg]
        fork_point.times_ns.append(round(r.median_fork()))
        if exit_point is not None:
            exit_point.times_ns.append(round(statistics.median(e.cpu_ns for e in r.exits)))

    def measured(self) -> list[Point]:
        return [p for pair in self.points.values() for p in pair if p is not None and p.times_ns]
