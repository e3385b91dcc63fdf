"""Runs one benchmark case under one policy in this process and prints one JSON line.

``python -m ptshare.bench.worker CASE POLICY SCALE``; the parent runs it in a fresh interpreter so
that ``ru_maxrss`` is the case's own peak.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from ..scenario import run
from .cases import ALL


def main(argv: list[str]) -> None:
    name, policy, scale = argv[0], argv[1], float(argv[2])
    scenario = ALL[name].build(scale)
    start, cpu = time.perf_counter(), time.process_time()
    result = run(scenario, policy)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    final = result.final
    doc = {
        "case": name,
        "scenario": scenario.name,
        "policy": policy,
        "wall_s": wall,
        "cpu_s": cpu,  # what a busy machine inflates least
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "pagetables_kb": final.system["pagetables_kb"],
        "pagetables_peak_kb": max(s.system["pagetables_kb"] for s in result.steps),
        "faults": final.system["faults"],
        "ptes_copied": final.system["ptes_copied"],
        "pt_shared": final.system["pt_shared"],
        "processes": len(final.processes),
        "est_s": sum(s.est_ns for s in result.steps) / 1e9,
        "step_wall_s": {f"{s.index}:{s.op}": s.wall_ns / 1e9 for s in result.steps},
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main(sys.argv[1:])
