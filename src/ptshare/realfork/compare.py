"""``ptshare bench --real``: a C program's fork at several sizes, measured and predicted.

For each size, the fork probe (:mod:`.probe`) writes that much private anonymous memory and forks
(after a warm-up fork); runs of every size are interleaved, ``runs`` of each, so that a busy
moment of the machine falls on all sizes alike.  Measured is the median over the runs of the
fork's CPU time (the kernel's work; on an idle machine its wall time is the same, and the median
wall time is shown beside it); predicted is the cost model's time for the same fork
(:mod:`.predict`).  The ratio is predicted / measured.

The model's time depends on where the simulated allocator put the frames (``[machine]
scattered``, ``frames_in_order``); the run's own frames are known too (the probe reads them), so
beside the ratio is the one the model gives with the run's frames instead of its own: the first
says how well ptshare predicts the fork, the second how well it prices a fork whose frames it
knows.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..cost import CostModel, load_profile
from ..host.objects import meminfo
from .predict import predict
from .probe import run_probe

GIB = 1 << 30
SIZES = (GIB // 4, GIB, 4 * GIB, 8 * GIB)
RUNS = 5


@dataclass(frozen=True)
class RealFork:
    size: int
    ptes: int
    cpu_ns: list[int]  # one per run
    wall_ns: list[int]
    predicted_ns: float
    adjacent: float  # median share of frames next to their predecessor's (see forkprobe.c)
    predicted_adjacent: float  # the same share in the simulator's allocator
    scattered_ns: float  # the profile's ptes_copied_scattered: what a PTE out of order costs more

    @property
    def with_frames_ns(self) -> float:
        """The model's time for the fork with the measured frames' order instead of its own."""
        return self.predicted_ns + (self.predicted_adjacent - self.adjacent) * self.ptes * self.scattered_ns

    @property
    def measured_ns(self) -> float:
        return float(statistics.median(self.cpu_ns))

    @property
    def ratio(self) -> float:
        return self.predicted_ns / self.measured_ns

    @property
    def ratio_with_frames(self) -> float:
        return self.with_frames_ns / self.measured_ns

    def to_json(self) -> dict:
        return {"size": self.size, "ptes": self.ptes, "measured_cpu_ns": round(self.measured_ns),
                "measured_wall_ns": round(statistics.median(self.wall_ns)), "cpu_ns_all": self.cpu_ns,
                "wall_ns_all": self.wall_ns, "predicted_ns": round(self.predicted_ns), "ratio": round(self.ratio, 4),
                "frames_adjacent": self.adjacent, "predicted_frames_adjacent": round(self.predicted_adjacent, 4),
                "predicted_with_measured_frames_ns": round(self.with_frames_ns),
                "ratio_with_measured_frames": round(self.ratio_with_frames, 4)}


def affordable(sizes: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """The sizes this machine has the memory for now (at most half of what is available), and the rest."""
    limit = meminfo()["MemAvailable"] * 1024 // 2
    return [s for s in sizes if s <= limit], [s for s in sizes if s > limit]


def compare(sizes: list[int], runs: int = RUNS, cost: CostModel | None = None) -> list[RealFork]:
    cost = cost or load_profile()
    done: dict[int, list] = {s: [] for s in sizes}
    for _ in range(runs):
        for size in sizes:
            done[size].append(run_probe(size, forks=1))
    out = []
    for size in sizes:
        p = predict(size, cost=cost)
        rs = done[size]
        in_order = 1 - p.fork_events.get("ptes_copied_scattered", 0) / p.ptes
        out.append(RealFork(size, p.ptes, [r.forks[0].cpu_ns for r in rs], [r.forks[0].wall_ns for r in rs],
                            p.fork_ns, float(statistics.median(r.adjacent for r in rs)), in_order,
                            cost.ns.get("ptes_copied_scattered", 0.0)))
    return out
