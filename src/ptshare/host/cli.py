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
    p.add_argument("--runs", type=whole_number("--runs", 1), default=3, metavar="N",
                   help="host runs allowed for a scenario whose counters differ (the kernel's fault-around is "
                   "opportunistic); a scenario passes only if one agrees exactly (default 3; 1: no reruns)")
    p.add_argument("--own-layout", action="store_true",
                   help="let the host kernel choose every address (mmap without a hint, mremap with MREMAP_MAYMOVE) "
                   "and compare the layouts it makes, as /proc/PID/maps shows them, with the simulator's, as well "
                   "as the counters")
    p.add_argument("--profile", help="a cost profile (TOML) for the predicted times; default: the shipped one")
    p.add_argument("-o", "--output", help="write the report to this file instead of stdout")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
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
            verdicts.append(validate.validate(scenario, cost, runs=args.runs, own_layout=args.own_layout))
    finally:
        progress.close()
    text = validate.report_json(verdicts) if args.format == "json" else validate.report_text(verdicts, args.summary)
    write_output(text, args.output)
    return 0 if all(v.ok for v in verdicts) else 1
