"""``ptshare bench --vs-host``: the fork cases run by the simulator and by this machine's kernel.

Each case runs once on the host backend (real processes, real page tables) and once in the
simulator under ``linux``, in this process.  Compared per step are the simulator's wall time for
simulating the operation and the kernel's time for doing it (measured inside the worker around the
call or the touch loop: see :mod:`ptshare.host.backend`).  A ratio under 1 means simulating the
operation is faster than performing it.  Spawning a process is left out: on the host it starts
an interpreter, which is not the kernel's work.

Guest memory is written and freed just before each host run (:mod:`ptshare.host.guest`), so the
kernel's times are its own and not a hypervisor's first touch of fresh guest pages.

Where the host has too little memory free for a case at the requested size, it runs at a quarter
of that size (4 GiB cases at 1 GiB), on both sides, and the table says so.
"""

from __future__ import annotations

import sys

from ..cost import load_profile
from ..errors import PtshareError
from ..scenario import run
from ..units import format_ns
from .cases import ALL

COMPARED_OPS = ("mmap", "touch", "fork", "exit", "mprotect", "munmap")


def compare_with_host(names: list[str], scale: float) -> tuple[list[list], list[dict]]:
    """Table rows ``[case, step, sim wall, kernel wall, sim / kernel]`` and a JSON record per case."""
    from ..host.backend import host_problem
    from ..host.objects import TooLittleMemory

    problem = host_problem()
    if problem is not None:
        raise PtshareError(f"--vs-host: {problem}")
    rows: list[list] = []
    records: list[dict] = []
    for name in names:
        case = ALL[name]
        used = scale
        try:
            scenario = case.build(used)
            host, error = _on_host(scenario)
        except TooLittleMemory:
            used = scale / 4
            print(f"  {name}: too little memory free on this host at scale {scale:g}; "
                  f"comparing at scale {used:g}", file=sys.stderr)
            scenario = case.build(used)
            host, error = _on_host(scenario)
        if error is not None:
            raise PtshareError(f"--vs-host: {name} failed on the host: {error}")
        sim = run(scenario, "linux")
        pairs = [(s.op if s.repeat == 1 else f"{s.op} x{s.repeat:,}", s.pid, s.wall_ns, h.wall_ns)
                 for s, h in zip(sim.steps, host.steps, strict=True) if s.op in COMPARED_OPS]
        label = name if used == scale else f"{name} (scale {used:g})"
        record = {"case": name, "scale": used, "policy": "linux", "steps": []}
        for op, pid, sim_ns, kernel_ns in pairs:
            rows.append([label, f"{op} {pid}", format_ns(sim_ns), format_ns(kernel_ns), _ratio(sim_ns, kernel_ns)])
            record["steps"].append({"op": op, "pid": pid, "sim_ns": sim_ns, "kernel_ns": kernel_ns,
                                    "ratio": sim_ns / kernel_ns if kernel_ns else None})
        sim_total = sum(p[2] for p in pairs)
        kernel_total = sum(p[3] for p in pairs)
        rows.append([label, "all of the above", format_ns(sim_total), format_ns(kernel_total),
                     _ratio(sim_total, kernel_total)])
        record.update(sim_ns=sim_total, kernel_ns=kernel_total,
                      ratio=sim_total / kernel_total if kernel_total else None)
        records.append(record)
        print(f"  {label} vs host: {_ratio(sim_total, kernel_total)}", file=sys.stderr)
    return rows, records


def _on_host(scenario):
    """The scenario on this machine's kernel, on guest memory the hypervisor has just backed."""
    from ..host.backend import run_on_host
    from ..host.guest import pre_touch, run_footprint
    from ..host.plan import make_plan

    pre_touch(run_footprint(make_plan(scenario, load_profile())))
    return run_on_host(scenario)


def _ratio(sim_ns: int, kernel_ns: int) -> str:
    return f"{sim_ns / kernel_ns:.3f}" if kernel_ns else "-"
