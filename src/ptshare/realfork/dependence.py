"""What fork's cost depends on, measured with the probe: ``python -m ptshare.realfork.dependence``.

Forks 1 GiB of written private anonymous memory (262,144 PTEs) with the frames laid out three ways
(``fresh``, ``recycled``, ``shuffled``: see ``forkprobe.c``), and with THP, the runs interleaved
so that a busy moment of the machine falls on all of them alike; prints per layout the median
CPU time of fork and of the child's teardown per PTE, and how many frames follow their
predecessor.  Then the same per size (64 MiB to 4 GiB, fresh frames), and the first fork of a
process whose child's page-table pages the hypervisor may not have backed yet (no warm-up fork).
docs/model.md quotes its output.
"""

from __future__ import annotations

import argparse
import statistics

from ..machine import describe
from .probe import LAYOUTS, run_probe

GIB = 1 << 30


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=GIB, help="bytes of memory written (default 1 GiB)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = p.parse_args(argv)
    kinds = [(layout, False) for layout in LAYOUTS] + [("fresh", True)]
    runs: dict[tuple[str, bool], list] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for layout, thp in kinds:
            runs[layout, thp].append(run_probe(args.size, layout=layout, thp=thp, forks=3))
    ptes = args.size // 4096
    print(f"{describe()}; {args.size >> 20} MiB written, {args.rounds} interleaved rounds of 3 forks, medians")
    print(f"{'layout':<16}{'frames in order':>16}{'fork ns/PTE cpu':>17}{'wall':>8}{'teardown ns/PTE cpu':>21}")
    for (layout, thp), rs in runs.items():
        forks_cpu = statistics.median(f.cpu_ns for r in rs for f in r.forks) / ptes
        forks_wall = statistics.median(f.wall_ns for r in rs for f in r.forks) / ptes
        exits = statistics.median(e.cpu_ns for r in rs for e in r.exits) / ptes
        adjacent = statistics.median(r.adjacent for r in rs)
        name = layout + (" + THP" if thp else "")
        print(f"{name:<16}{adjacent:>16.2f}{forks_cpu:>17.1f}{forks_wall:>8.1f}{exits:>21.1f}")
    sizes = [64 << 20, 256 << 20, GIB, 4 * GIB]
    by_size: dict[tuple[int, bool], list] = {(s, w): [] for s in sizes for w in (True, False)}
    for _ in range(args.rounds):
        for size, warm in by_size:
            by_size[size, warm].append(run_probe(size, forks=1 if not warm else 3, warm=warm))
    print(f"{'size':<16}{'fork ns/PTE cpu, warm':>22}{'first fork, no warm-up':>24}")
    for size in sizes:
        warm = statistics.median(f.cpu_ns for r in by_size[size, True] for f in r.forks) / (size // 4096)
        cold = statistics.median(f.cpu_ns for r in by_size[size, False] for f in r.forks) / (size // 4096)
        print(f"{f'{size >> 20} MiB':<16}{warm:>22.1f}{cold:>24.1f}")


if __name__ == "__main__":
    main()
