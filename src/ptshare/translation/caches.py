"""The cache hierarchy this machine actually gives a process: capacities and latencies, by time.

A guest shares its last-level cache with the other tenants of its host, so the LLC a process can
count on is smaller than the part's, and it moves with their load.  It is measured as any cache
size is measured without counters: a dependent random chase over every cache line of a region
(``host/chase.c`` with a 64-byte stride, 4 KiB pages), at region sizes from inside the L1d to
beyond the LLC, each size run ``runs`` times, interleaved, taking the median ns per access.

Every size the chase reaches is priced by a fully associative LRU hierarchy, the same the
translation model simulates: under uniformly random references over ``S`` bytes, an LRU of ``C``
bytes holds a fraction ``min(1, C/S)`` of them, so a reference costs

    l1 h1 + l2 (h2 - h1) + llc (h3 - h2) + dram (1 - h3)  (+ the L2 TLB past the L1 dTLB's reach)

with ``h1 = min(1, L1d/S)``, ``h2 = min(1, L2/S)``, ``h3 = min(1, LLC/S)``.  The L1d and L2 sizes
are the part's (CPUID; they are per core and not shared); ``l1`` and ``l2`` are the medians at a
size that fits each; the effective LLC capacity is the one (on a grid of 256 KiB steps) whose
non-negative least-squares fit of ``llc`` and ``dram`` to the sizes past the L2 leaves the least
squared relative error.  Every size stays inside the L2 TLB's reach (3,072 entries of 4 KiB), so
no page walk enters the chase.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

import numpy as np

from .cpus import Cpu
from .hostcheck import Config

KiB, MiB = 1 << 10, 1 << 20
LINE_SIZES = (16 * KiB, 256 * KiB, 512 * KiB, 768 * KiB, MiB, 3 * MiB // 2, 2 * MiB, 3 * MiB, 4 * MiB, 5 * MiB,
              6 * MiB, 8 * MiB)
GRID = 256 * KiB


def line_configs() -> list[Config]:
    return [Config(size, False, stride=64) for size in LINE_SIZES]


@dataclass(frozen=True)
class Hierarchy:
    """What the line chases measured: the effective LLC and ns per reference served by each level."""

    llc: int
    ns: dict[str, float]
    residual: float  # the fit's root-mean-square relative error over the sizes past the L2

    def applied(self, cpu: Cpu) -> Cpu:
        """``cpu`` with this machine's LLC capacity and latencies."""
        return replace(cpu, llc=self.llc, latency=replace(cpu.latency, **self.ns))

    def predicted(self, cpu: Cpu, size: int) -> float:
        return float(_columns(cpu, size, self.llc) @ [self.ns["l1"], self.ns["l2"], self.ns["llc"], self.ns["dram"]]
                     + _tlb(cpu, size) * cpu.latency.tlb_l2)

    def to_json(self) -> dict:
        return {"llc_bytes": self.llc, "latency_ns": {k: round(v, 2) for k, v in self.ns.items()},
                "fit_rms_relative_error": round(self.residual, 4)}


def _columns(cpu: Cpu, size: int, llc: int) -> np.ndarray:
    h1, h2, h3 = (min(1.0, c / size) for c in (cpu.l1d, cpu.l2, llc))
    return np.array([h1, h2 - h1, h3 - h2, 1 - h3])


def _tlb(cpu: Cpu, size: int) -> float:
    """L1 dTLB misses per access of a random chase over ``size`` bytes of 4 KiB pages."""
    return 1 - min(1.0, cpu.tlb_l1 * 4096 / size)


def fit_hierarchy(cpu: Cpu, times: dict[Config, list[float]]) -> Hierarchy:
    """The effective LLC and the latencies, from the line chases in ``times`` (see the module doc)."""
    from ..calibrate.nnls import nnls

    med = {c.size: statistics.median(t) for c, t in times.items() if c.stride < 4096}
    l1 = med[min(med)]
    inside_l2 = [s for s in med if cpu.l1d < s <= cpu.l2 // 4]
    l2 = statistics.median([(med[s] - _tlb(cpu, s) * cpu.latency.tlb_l2 - l1 * _columns(cpu, s, cpu.llc)[0])
                            / _columns(cpu, s, cpu.llc)[1] for s in inside_l2]) if inside_l2 else cpu.latency.l2
    past = sorted(s for s in med if s > cpu.l2 // 2)
    best = None
    for llc in range(cpu.l2 + GRID, max(past) + GRID, GRID):
        cols = np.array([_columns(cpu, s, llc) for s in past])
        rest = np.array([med[s] - _tlb(cpu, s) * cpu.latency.tlb_l2 for s in past]) - cols[:, :2] @ [l1, l2]
        weight = 1 / np.array([med[s] for s in past])  # relative error: every size counts alike
        x = nnls(cols[:, 2:] * weight[:, None], rest * weight)
        err = float(np.sqrt(np.mean(((cols[:, 2:] @ x - rest) * weight) ** 2)))
        if best is None or err < best[0] - 1e-9:
            best = (err, llc, x)
    err, llc, (llc_ns, dram_ns) = best
    return Hierarchy(llc, {"l1": l1, "l2": l2, "llc": float(llc_ns), "dram": float(dram_ns)}, err)
