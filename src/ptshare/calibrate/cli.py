"""``ptshare calibrate``: registered with the command line by ``ptshare.cli.main``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.options import whole_number
from ..cli.output import check_output, write_output
from ..cli.progress import Progress
from ..errors import UsageError

MAX_REPEAT = 100


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure this machine's kernel and write a cost profile",
                       description="Runs families of small scenarios on this machine's kernel (the host backend) and "
                       "on the simulator, and fits nanoseconds per event by regression over sizes: per PTE copied at "
                       "fork, per page-table page allocated and freed, per fault of each kind, per PTE fault-around "
                       "maps, per PTE zapped and page freed.  Events the host cannot measure keep the base "
                       "profile's cost.  Needs Linux on x86-64; root adds the hugetlb experiments.")
    p.add_argument("-o", "--output", metavar="PROFILE.toml", help="write the profile (TOML) to this file")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few runs: under a minute, coarser (no hugetlb experiments)")
    p.add_argument("--repeat", type=whole_number("--repeat", 1, MAX_REPEAT), metavar="N",
                   help="host runs of each scenario, whose median is fitted (default 5; 3 with --quick)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--base", metavar="PROFILE.toml",
                   help="where the costs calibration cannot measure come from (default: the shipped profile)")
    p.add_argument("--name", default="calibrated", help="the profile's name (default: calibrated)")
    p.add_argument("--translation", action="store_true",
                   help="instead: measure the cache hierarchy the translation model prices (the effective LLC "
                   "capacity and ns per reference at each level) by random chases over every cache line (root; "
                   "about a minute); --repeat is then the interleaved runs (default and least 8)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..cost import load_profile
    from . import profile, report
    from .run import calibrate

    if args.translation:
        from ..translation.cli import calibrate_translation

        return calibrate_translation(args)
    if not args.name.strip():
        raise UsageError("--name must not be empty")
    if args.output:
        check_output(args.output, "profile.toml")
    base = load_profile(args.base)
    base_text = _profile_text(args.base)
    progress = Progress("calibrate")
    try:
        cal = calibrate(base, quick=args.quick, repeat=args.repeat, progress=progress)
    finally:
        progress.close()
    text = profile.render(cal.fit, cal.provenance, args.name, base_text)
    if args.output:
        write_output(text, args.output)  # should it fail, the profile is printed, not lost
    if args.format == "json":
        print(report.report_json(cal, base, text, args.output))
    else:
        print(report.report_text(cal, base, args.output))
    sys.stdout.flush()
    return 0


def _profile_text(path: str | None) -> str:
    if path is None:
        from importlib import resources

        return resources.files("ptshare.data").joinpath("profile-default.toml").read_text()
    return Path(path).read_text()
