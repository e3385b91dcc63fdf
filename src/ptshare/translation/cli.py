"""The command-line side of ``ptshare validate --translation`` and ``ptshare calibrate --translation``."""

from __future__ import annotations

import argparse
import json
import statistics

from ..cli.output import check_output, write_output
from ..cli.progress import Progress
from ..errors import UsageError

MIN_RUNS = 8
ACCESSES = 1_000_000  # timed loads per run
GUEST = "zen4-guest"  # this project's machines (see cpus.py)
CAL_SCHEMA = "ptshare.calibrate-translation/1"


def _runs(args: argparse.Namespace, value: int | None) -> int:
    runs = value or MIN_RUNS
    if runs < MIN_RUNS:
        raise UsageError(f"--runs {runs}: the translation chases need at least {MIN_RUNS} interleaved runs")
    if args.output:
        check_output(args.output)
    return runs


def _measure(cfgs, runs: int, what: str):
    from .hostcheck import measure

    progress = Progress(what)
    try:
        return measure(cfgs, runs, ACCESSES, progress)
    finally:
        progress.close()


def validate_translation(args: argparse.Namespace) -> int:
    from . import get_cpu
    from .caches import fit_hierarchy, line_configs
    from .hostcheck import cases, configs, fit, per_access, predict, priced, report_json, report_text

    if args.scenarios:
        raise UsageError("--translation runs its own measurements; give no scenario files with it")
    runs = _runs(args, args.runs)
    cfgs, lines = configs(), line_configs()
    times = _measure(cfgs + lines, runs, "validate --translation")
    hier = fit_hierarchy(get_cpu(GUEST), {c: times[c] for c in lines})
    cpu = hier.applied(get_cpu(GUEST))
    counts = {c: per_access(predict(c, cpu)) for c in cfgs}
    ns = fit(cfgs, counts, times, cpu)
    found = cases(cfgs, {c: times[c] for c in cfgs}, {c: priced(counts[c], ns) for c in cfgs})
    fmt = report_json if args.format == "json" else report_text
    write_output(fmt(found, runs, cpu.name, ns, hier), args.output)
    return 0 if all(c.ok for c in found) else 1


def calibrate_translation(args: argparse.Namespace) -> int:
    """Measure the effective LLC and the latencies of this machine (:mod:`.caches`) and print them."""
    from ..cli.render import table
    from ..units import format_size
    from . import get_cpu
    from .caches import fit_hierarchy, line_configs

    runs = _runs(args, args.repeat)
    lines = line_configs()
    times = _measure(lines, runs, "calibrate --translation")
    base = get_cpu(GUEST)
    hier = fit_hierarchy(base, times)
    rows = [[format_size(c.size), f"{statistics.median(times[c]):.1f}", f"{hier.predicted(base, c.size):.1f}"]
            for c in lines]
    if args.format == "json":
        sizes = [{"size": c.size, "measured_ns": statistics.median(times[c]), "runs_ns": times[c],
                  "predicted_ns": hier.predicted(base, c.size)} for c in lines]
        text = json.dumps({"schema": CAL_SCHEMA, "cpu": base.name, "runs": runs, "accesses": ACCESSES,
                           **hier.to_json(), "sizes": sizes}, indent=1)
    else:
        lat = ", ".join(f"{k} {v:.1f}" for k, v in hier.ns.items())
        text = "\n".join([
            f"the cache hierarchy of this machine, by a random chase over every line (medians of {runs} interleaved "
            f"runs, {ACCESSES:,} loads each)",
            table(["region", "ns per access", "fitted LRU"], rows, "lrr"),
            f"effective LLC: {format_size(hier.llc)} (CPU table {base.name}: {format_size(base.llc)}); ns per "
            f"reference: {lat}; fit error (rms, relative) {hier.residual:.0%}"])
    write_output(text, args.output)
    return 0
