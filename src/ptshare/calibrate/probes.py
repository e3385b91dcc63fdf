"""Fork and its child's teardown, measured with the fork probe (:mod:`ptshare.realfork.probe`), a
C process whose own address space is negligible, rather than with a host-backend worker.

A worker is a Python interpreter: each of its forks also copies the interpreter's VMAs and PTEs
(a fixed cost ten times the kernel's own), and the memory it writes comes after the backend has
written and freed memory to keep the hypervisor's first touch out of its faults.  The probe writes
fresh memory as a program does and times its forks by their CPU time, so a busy machine does not
stretch them (see docs/model.md, "What fork's cost depends on").

Three kinds of probe runs, each varying one size: ``dense`` (every page of 2, 3 and 6 GiB written,
as much of it as the memory available now allows, and of 1 and 2 GiB written in a random order:
PTEs and their tables, the cost of a PTE whose frame follows its predecessor's and of one whose
frame does not -- see docs/model.md), ``sparse`` (one page per 2 MiB over 1 to 8 GiB: as many PTE
tables as PTEs), ``vmas`` (0 to 1,024 one-page VMAs: the cost per VMA, and with none, fork's
fixed cost).  Each run forks three times after a warm-up fork; its sample is the median of the
three.  Each run is a sample of its own, because which frames a run's pages get varies from run
to run: its events are the simulator's, with the PTEs whose frames are out of order
(``ptes_copied_scattered``, ``ptes_zapped_scattered``) counted from the frames the probe read in
``/proc/self/pagemap`` instead of from the simulator's allocator.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..arch import PAGE_SIZE
from ..cost import CostModel
from ..realfork.compare import affordable
from ..realfork.predict import probe_scenario
from ..realfork.probe import ProbeRun, run_probe
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
    layout: str = "fresh"

    @property
    def name(self) -> str:
        what = f"{self.vmas} VMAs" if self.kind == "vmas" else f"{self.size >> 20} MiB"
        return f"probe-{self.kind} {what}" + ("" if self.layout == "fresh" else f" {self.layout}")


def probe_plan(quick: bool) -> list[ProbeConfig]:
    if quick:
        return [*(ProbeConfig("dense", n * MIB) for n in (16, 64, 256)),
                ProbeConfig("dense", 64 * MIB, layout="shuffled"),
                *(ProbeConfig("sparse", n * MIB, 2 * MIB) for n in (256, 1024)),
                *(ProbeConfig("vmas", vmas=k) for k in (0, 64, 256))]
    # not bench --real's sizes (0.25, 1, 4, 8 GiB), which check the fit on programs it did not see
    dense, _ = affordable(tuple(n * GIB for n in (2, 3, 6)))
    return [*(ProbeConfig("dense", n) for n in dense),
            *(ProbeConfig("dense", n * GIB, layout="shuffled") for n in (1, 2)),
            *(ProbeConfig("sparse", n * GIB, 2 * MIB) for n in (1, 2, 4, 8)),
            *(ProbeConfig("vmas", vmas=k) for k in (0, 64, 256, 1024))]


class ProbeExperiment:
    """The probe runs: each config simulated once (its events), run on the host ``repeat`` times,
    each run a sample."""

    def __init__(self, configs: list[ProbeConfig], cost: CostModel) -> None:
        self.configs = configs
        self.cost = cost
        self.simulated: dict[ProbeConfig, tuple[Point, Point | None]] = {}
        self.points: list[Point] = []

    def simulate(self, cfg: ProbeConfig) -> None:
        sc = probe_scenario(cfg.size, cfg.stride, cfg.vmas)
        sim = run(sc, "linux", cost=self.cost)
        fork = next(s for s in sim.steps if s.op == "fork")
        exit_ = next(s for s in sim.steps if s.op == "exit")
        fork_point = Point(cfg.name, Sample(fork.index, "fork"), dict(fork.events))
        exit_point = None
        if cfg.size or cfg.vmas:  # with nothing mapped, the child's munmap times nothing
            exit_point = Point(cfg.name, Sample(exit_.index, "exit", {call("exit"): 1}), dict(exit_.events))
        self.simulated[cfg] = (fork_point, exit_point)

    def run_once(self, cfg: ProbeConfig) -> None:
        r = run_probe(cfg.size, stride=cfg.stride, vmas=cfg.vmas, layout=cfg.layout, forks=FORKS_PER_RUN)
        fork_point, exit_point = self.simulated[cfg]
        self.points.append(with_frames(fork_point, "ptes_copied_scattered", r, round(r.median_fork())))
        if exit_point is not None:
            exit_ns = round(statistics.median(e.cpu_ns for e in r.exits))
            self.points.append(with_frames(exit_point, "ptes_zapped_scattered", r, exit_ns))

    def measured(self) -> list[Point]:
        return list(self.points)


def with_frames(point: Point, event: str, r: ProbeRun, ns: int) -> Point:
    """``point`` for one probe run: its time, and for a dense run (every page of its memory written,
    no other VMAs) its PTEs out of order as the run's frames were."""
    events = dict(point.events)
    if r.stride == PAGE_SIZE and not r.vmas and r.adjacent >= 0:
        events[event] = round(r.pages * (1 - r.adjacent))
    return Point(point.family, point.sample, events, [ns])
