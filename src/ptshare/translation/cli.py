"""The command-line side of ``ptshare validate --translation``."""

from __future__ import annotations

import argparse

from ..cli.output import check_output, write_output
from ..cli.progress import Progress
from ..errors import UsageError

MIN_RUNS = 8
ACCESSES = 1_000_000  # timed loads per run
GUEST = "zen4-guest"  # this project's machines (see cpus.py)


def validate_translation(args: argparse.Namespace) -> int:
    from . import get_cpu
    from .hostcheck import cases, configs, fit, measure, per_access, predict, priced, report_json, report_text

    if args.scenarios:
        raise UsageError("--translation runs its own measurements; give no scenario files with it")
    runs = args.runs or MIN_RUNS
    if runs < MIN_RUNS:
        raise UsageError(f"--runs {runs}: the translation chases need at least {MIN_RUNS} interleaved runs")
    if args.output:
        check_output(args.output)
    cfgs = configs()
    progress = Progress("validate --translation")
    try:
        times = measure(cfgs, runs, ACCESSES, progress)
    finally:
        progress.close()
    cpu = get_cpu(GUEST)
    counts = {c: per_access(predict(c, cpu)) for c in cfgs}
    ns = fit(cfgs, counts, times, cpu)
    found = cases(cfgs, times, {c: priced(counts[c], ns) for c in cfgs})
    fmt = report_json if args.format == "json" else report_text
    write_output(fmt(found, runs, cpu.name, ns), args.output)
    return 0 if all(c.ok for c in found) else 1
