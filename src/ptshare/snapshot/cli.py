"""``ptshare snapshot`` and ``ptshare whatif``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..cli.output import check_output, write_output
from ..errors import PtshareError, UsageError
from ..policies import POLICIES
from .store import load, save
from .take import select_pids, take

MAX_MESSAGES = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="read live processes (maps, smaps, status, pagemap) into a snapshot file",
                       description="Read the VMAs, present pages and page-table figures of live processes "
                       "into a snapshot file for 'ptshare whatif'.  Run as root to read other users' "
                       "processes and to see frame numbers.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="the process to read")
    which.add_argument("--match", metavar="NAME",
                       help="every process whose command name (comm) or program name (argv[0]) contains NAME")
    p.add_argument("--children", action="store_true", help="with --pid: its descendants too")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the snapshot file to write")
    p.add_argument("--method", choices=("auto", "scan", "read"), default="auto",
                   help="how to read pagemap: the PAGEMAP_SCAN ioctl (Linux 6.7+), reading every entry, or "
                   "the first that works (default)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes read at once (default: the number of CPUs, at most 4)")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("whatif", help="what each page-table design would cost the system a snapshot describes",
                       description="Rebuild a snapshot in the simulator under each policy and report page-table "
                       "memory, fork costs and warm-up faults; linux is checked against the kernel's VmPTE.")
    p.add_argument("snapshot", help="a file written by 'ptshare snapshot'")
    p.add_argument("--policy", default=",".join(POLICIES),
                   help="policies, comma-separated (default: all); linux is always included")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--profile", help="a cost profile (TOML) for estimated times; default: the shipped one")
    p.add_argument("-o", "--output", help="write the report to this file instead of stdout")
    p.set_defaults(func=cmd_whatif)


def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.children and args.pid is None:
        raise UsageError("--children needs --pid")
    if args.pid is not None and args.pid <= 0:
        raise UsageError(f"--pid must be a positive process id, not {args.pid}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {args.jobs}")
    where = Path(args.output).resolve().parent
    if not where.is_dir():
        raise UsageError(f"cannot write {args.output}: {where} is not a directory")
    pids = select_pids(args.pid, args.children, args.match)
    snapshot = take(pids, args.method, args.jobs)
    if not snapshot.processes:
        raise PtshareError("nothing to snapshot: " + "; ".join(snapshot.problems))
    save(snapshot, args.output)
    _messages("warning", snapshot.warnings)
    _messages("partial snapshot", snapshot.problems)
    vmas = sum(len(p.vmas) for p in snapshot.processes)
    present = sum(v.mapped.count() for p in snapshot.processes for v in p.vmas) * 4
    print(f"{args.output}: {len(snapshot.processes)} processes, {vmas:,} VMAs, {len(snapshot.objects)} objects, "
          f"{present:,} kB mapped; VmPTE {sum(p.vmpte_kb for p in snapshot.processes):,} kB; "
          f"read in {snapshot.meta['read_seconds']} s ({snapshot.meta['method']})"
          + (" -- PARTIAL" if snapshot.partial else ""))
    return 0


def _messages(kind: str, messages: list[str]) -> None:
    for text in messages[:MAX_MESSAGES]:
        print(f"ptshare: {kind}: {text}", file=sys.stderr)
    if len(messages) > MAX_MESSAGES:
        print(f"ptshare: {kind}: ... and {len(messages) - MAX_MESSAGES} more (in the snapshot file)", file=sys.stderr)


def cmd_whatif(args: argparse.Namespace) -> int:
    from ..cli.options import policy_names
    from ..cost import load_profile
    from .render import whatif_table
    from .whatif import whatif

    policies = policy_names(args.policy)
    cost = load_profile(args.profile)
    if args.output:
        check_output(args.output)
    snapshot = load(args.snapshot)
    if not snapshot.processes:
        raise UsageError(f"{args.snapshot} holds no process")
    doc = whatif(snapshot, policies, cost, source=args.snapshot)
    text = json.dumps(doc, indent=1) if args.format == "json" else whatif_table(doc)
    write_output(text, args.output)
    if snapshot.partial:
        _messages("partial snapshot", snapshot.problems)
    return 0
