"""``ptshare bench``: run the benchmark cases, print a table, write JSON."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from ..cli.output import check_output, write_output
from ..cli.render import table
from ..errors import UsageError
from ..machine import describe
from .cases import ALL, CASES, CURVE


def register(sub) -> None:
    p = sub.add_parser("bench", help="time the benchmark cases (simulator wall time, peak memory, results)")
    p.add_argument("--case", action="append", help=f"a case to run (repeatable); default: all. Cases: {', '.join(ALL)}")
    p.add_argument("--no-curve", action="store_true", help="skip the pgbench-like curve over backends")
    p.add_argument("--repeat", type=int, default=1, help="runs per (case, policy); the table shows medians")
    p.add_argument("--scale", type=float, default=1.0, help="shrink the cases (0 < scale <= 1) for a quick check")
    p.add_argument("--vs-host", action="store_true",
                   help="also run the fork cases on this machine's kernel and print simulator/kernel time ratios")
    p.add_argument("--real", action="store_true",
                   help="a C program's fork of 0.25, 1, 4 and 8 GiB, measured (median of 5) and predicted by the cost "
                        "model; with --real the simulator's cases run only if --case names them")
    p.add_argument("--profile", metavar="PROFILE.toml", help="the cost profile --real predicts with (default: shipped)")
    p.add_argument("-o", "--output", default="bench-results.json", help="where to write the JSON results")
    p.set_defaults(func=cmd_bench)


def _one(name: str, policy: str, scale: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ptshare.bench.worker", name, policy, str(scale)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"bench case {name} under {policy} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _real(profile: str | None) -> dict:
    """The C fork at each size, measured and predicted: printed, and returned for the JSON."""
    from ..cost import load_profile
    from ..realfork.compare import RUNS, SIZES, affordable, compare
    from ..realfork.probe import compiler_problem
    from ..units import format_ns, format_size

    problem = compiler_problem()
    if problem is not None:
        raise UsageError(f"--real: {problem}")
    cost = load_profile(profile)
    sizes, left_out = affordable(SIZES)
    for size in left_out:
        print(f"  --real: {format_size(size)} left out: more than half of the memory available now", file=sys.stderr)
    load_before = os.getloadavg()[0]
    results = compare(sizes, RUNS, cost)
    load_after = os.getloadavg()[0]
    rows = [[format_size(r.size), f"{r.ptes:,}", format_ns(r.measured_ns), format_ns(r.to_json()["measured_wall_ns"]),
             f"{r.measured_ns / r.ptes:.1f}", format_ns(r.predicted_ns), f"{r.ratio:.2f}",
             f"{r.adjacent:.2f} / {r.predicted_adjacent:.2f}", f"{r.ratio_with_frames:.2f}"] for r in results]
    print(f"fork of a C program that wrote N of private anonymous memory (median of {RUNS}), against the cost "
          f"model (profile {cost.name!r}, measured on {cost.machine}); load average {load_before:.1f} before, "
          f"{load_after:.1f} after")
    print(table(["memory", "PTEs", "fork (CPU)", "fork (wall)", "ns/PTE", "predicted", "predicted / measured",
                 "frames in order, measured / model", "ratio with measured frames"], rows, "lrrrrrrrr"))
    print()
    return {"runs": RUNS, "profile": cost.name, "profile_machine": cost.machine, "clock": "thread CPU time",
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "sizes": [r.to_json() for r in results], "left_out": left_out}


def _previous(path: str) -> dict[tuple[str, str], dict]:
    """The results of the last run written to ``path`` (kept so that a run shows what changed), by
    (case, policy); nothing if there is none or it is not a bench results file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("schema") != "ptshare.bench/1":
        return {}
    return {(r["case"], r["policy"]): {**r, "scale": doc.get("scale")} for r in doc.get("results", [])
            if isinstance(r, dict) and "case" in r and "policy" in r}


def _was(old: dict | None, scale: float) -> str:
    if old is None or old.get("scale") != scale or "wall_s_median" not in old:
        return "-"
    cpu = old.get("cpu_s_median")
    return f"{old['wall_s_median']:.2f} s" + (f" ({cpu:.2f} s)" if cpu is not None else "")


def _translation_ratio(docs: list[dict]) -> dict[str, float]:
    """Per policy: the median CPU time of pgbench-like with the translation model over without."""
    cpu = {(d["case"], d["policy"]): d["cpu_s_median"] for d in docs}
    return {p: cpu["pgbench-like+translation", p] / cpu["pgbench-like", p]
            for (case, p) in cpu if case == "pgbench-like+translation" and ("pgbench-like", p) in cpu}


def cmd_bench(args) -> int:
    if not 0 < args.scale <= 1:
        raise UsageError("--scale must be more than 0 and at most 1")
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    names = args.case or ([] if args.real else [*CASES, *([] if args.no_curve else CURVE)])
    for name in names:
        if name not in ALL:
            raise UsageError(f"unknown bench case {name!r}; cases: {', '.join(ALL)}")
    check_output(args.output, "bench-results.json")
    previous = _previous(args.output)
    rows, docs = [], []
    for name in names:
        case = ALL[name]
        for policy in case.policies:
            runs = [_one(name, policy, args.scale) for _ in range(args.repeat)]
            wall = statistics.median(r["wall_s"] for r in runs)
            cpu = statistics.median(r["cpu_s"] for r in runs)
            peak = statistics.median(r["peak_rss_kb"] for r in runs) / 2**20
            last = runs[-1]
            ok = (case.target_s is None or wall <= case.target_s) and \
                (case.target_gib is None or peak <= case.target_gib)
            target = " / ".join(t for t in (f"< {case.target_s:g} s" if case.target_s else "",
                                            f"< {case.target_gib:g} GiB" if case.target_gib else "") if t)
            rows.append([name, policy, f"{wall:.2f} s ({cpu:.2f} s)", _was(previous.get((name, policy)), args.scale),
                         f"{peak:.2f} GiB", f"{last['pagetables_kb'] / 2**20:.2f} GiB",
                         last["faults"], last["ptes_copied"], target or "-", "yes" if ok else "NO" if target else ""])
            docs.append({**last, "wall_s_median": wall, "cpu_s_median": cpu, "peak_gib_median": peak, "runs": len(runs),
                         "wall_s_all": [r["wall_s"] for r in runs], "target": target, "met": ok})
            print(f"  {name} [{policy}]: {wall:.2f} s, {peak:.2f} GiB", file=sys.stderr)
    host, host_records = [], []
    if args.vs_host:
        from .vshost import compare_with_host

        host, host_records = compare_with_host([n for n in names if ALL[n].host], args.scale)
    real = _real(args.profile) if args.real else None
    headers = ["case", "policy", "sim wall (CPU)", "before", "sim peak RSS", "page tables (simulated)", "faults",
               "PTEs copied", "target", "met"]
    print(f"ptshare bench on {describe()}, median of {args.repeat}")
    if rows:
        print(table(headers, rows, "llrrrrrrll"))
        print("before: the last results written to " + args.output + " at the same scale; CPU time is what a busy "
              "machine inflates least")
    slower = _translation_ratio(docs)
    if slower:
        print()
        print("pgbench-like+translation / pgbench-like, CPU time (the bound: < 2): "
              + ", ".join(f"{p} {r:.2f}" for p, r in slower.items()))
    if host:
        print()
        print("simulating under linux against this machine's kernel doing it (under 1: the simulator is faster)")
        print(table(["case", "step", "sim wall", "kernel wall", "sim / kernel"], host, "llrrr"))
    write_output(json.dumps({"schema": "ptshare.bench/1", "machine": describe(), "repeat": args.repeat,
                             "scale": args.scale, "results": docs, "vs_host": host_records,
                             "translation_cpu_ratio": slower,
                             **({"real": real} if real is not None else {})}, indent=1), args.output)
    print(f"results written to {args.output}")
    return 0
