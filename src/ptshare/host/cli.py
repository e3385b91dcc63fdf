"""``ptshare validate``: registered with the command line by ``ptshare.cli.main``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli.options import whole_number
from ..cli.output import check_output, write_output
from ..cli.progress import Progress

SUITE = Path(__file__).resolve().parents[3] / "scenarios" / "validate"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="run scenarios on this machine's kernel and on the simulator, and compare",
                       description="Runs each scenario on the host kernel and on the simulator (policy linux, "
                       "same addresses, or with --own-layout the kernel's choices) and compares every process's "
                       "faults, VmPTE, RSS and VMA layout after every step, and the signal of every bad access. "
                       "A scenario the host cannot run is reported as refused and the others still run. "
                       "Exit status 0 when all agree, 1 when any differs or is refused.")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"scenario files or directories (default: the validation suite, {SUITE})")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--summary", action="store_true", help="one line per passing scenario")
    p.add_argument("--runs", type=whole_number("--runs", 1), metavar="N",
                   help="host runs allowed for a scenario whose counters differ (the kernel's fault-around is "
                   "opportunistic); a scenario passes only if one agrees exactly (default 3; 1: no reruns); "
                   "with --translation, interleaved runs of each chase (default 8)")
    p.add_argument("--translation", action="store_true",
                   help="instead: time random pointer chases on this CPU (4 KiB and 2 MiB pages, processes and "
                   "threads) and check the translation model's ratios (root; a few minutes)")
    p.add_argument("--own-layout", action="store_true",
                   help="let the host kernel choose every address (mmap without a hint, mremap with MREMAP_MAYMOVE) "
                   "and compare the layouts it makes, as /proc/PID/maps shows them, with the simulator's, as well "
                   "as the counters")
    p.add_argument("--profile", help="a cost profile (TOML) for the predicted times; default: the shipped one")
    p.add_argument("--times", action="store_true",
                   help="also time every step on the host (CPU time, median of --time-runs interleaved runs, the "
                   "worker's own part measured and subtracted) against the cost model's prediction")
    p.add_argument("--time-tolerance", type=percentage, default=0.15, metavar="FRACTION",
                   help="with --times: the largest median |error| per op kind that passes, as 0.15 or 15%% "
                   "(default 15%%)")
    p.add_argument("--time-runs", type=whole_number("--time-runs", 1), default=3, metavar="N",
                   help="with --times: host runs of each scenario, whose median is compared (default 3)")
    p.add_argument("-o", "--output", help="write the report to this file instead of stdout")
    p.set_defaults(func=cmd_validate)


def percentage(text: str) -> float:
    """A tolerance: '0.15' or '15%'."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 10:
        raise argparse.ArgumentTypeError(f"takes a fraction such as 0.15 or a percentage such as 15%, not {text!r}")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    if args.translation:
        from ..translation.cli import validate_translation

        return validate_translation(args)
    from ..cost import load_profile
    from . import validate

    scenarios = validate.load_all(args.scenarios or [str(SUITE)])
    cost = load_profile(args.profile)
    if args.output:
        check_output(args.output)
    verdicts = []
    progress = Progress("validate")
    try:
        for n, scenario in enumerate(scenarios):
            progress(n, len(scenarios))
            verdicts.append(validate.validate(scenario, cost, runs=args.runs or 3, own_layout=args.own_layout))
    finally:
        progress.close()
    times = None
    if args.times:
        from .times import time_scenarios

        times = time_scenarios(scenarios, cost, runs=args.time_runs, tolerance=args.time_tolerance)
    text = validate.report_json(verdicts) if args.format == "json" else validate.report_text(verdicts, args.summary)
    if times is not None:
        text = _with_times(text, times, args.format)
    write_output(text, args.output)
    return 0 if all(v.ok for v in verdicts) and (times is None or times.ok) else 1


def _with_times(text: str, times, fmt: str) -> str:
    """The report with the times' report added (a "times" member of the JSON document)."""
    import json

    from .times import report_text

    if fmt == "json":
        doc = json.loads(text)
        doc["times"] = times.to_json()
        return json.dumps(doc, indent=1)
    return text + "\n\n" + report_text(times)
