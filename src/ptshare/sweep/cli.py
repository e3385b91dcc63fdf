"""``ptshare sweep``; and what ``ptshare results --sweep`` and ``ptshare report --x --y`` do with a sweep."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..experiments.db import ResultsDB, SweepRecord, default_path
from ..experiments.executor import add_options, executor_for
from . import grid

# The metrics the table shows (all of them are in the CSV, the JSON and the export).
SHOWN = ("est_ms", "peak_pagetables_kb", "peak_vmpte_kb", "minflt")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of one scenario: fields varied, under several policies",
                       description="Runs SCENARIO once for every combination of the --vary values under every "
                       "policy, stores each run in the results database as it finishes (a run stored before is "
                       "reused), and prints the grid.",
                       epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", help="a scenario file (TOML)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a scenario field and its values (repeatable: the grid is every combination)")
    p.add_argument("--policy", default="linux", help="policies, comma-separated (default: linux)")
    p.add_argument("--profile", help="a cost profile (TOML) for est_ns; default: the shipped one")
    p.add_argument("--db", help=f"the results database (default: $PTSHARE_DB, else {default_path()})")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_options(p)
    p.set_defaults(func=cmd_sweep)


def _epilog() -> str:
    return """keys (KEY in --vary KEY=V1,V2,...):
  machine.FIELD          memory, cpus, aslr_bits, seed, levels, mmap_base
  objects.NAME.FIELD     size or kind of the object named NAME
  steps.N.FIELD          a field of the N-th [[steps]] table (from 0, as the JSON's "index"): any field
                         its op takes, and repeat
  steps.NAME.FIELD       the same, for the step with name = "NAME"
values are written as in TOML (2, 1.5, true); anything else is a string (1GiB, rw).

example:
  ptshare sweep scenarios/fork-shared-segment.toml --vary objects.sga.size=1GiB,2GiB,4GiB \\
      --vary steps.helper-reads.count=1000,10000 --policy linux,shared-pt --workers 2
  ptshare report --x objects.sga.size --y step.fork.est_ms"""


def _db(path: str | None, *, create: bool = True) -> ResultsDB:
    return ResultsDB(Path(path) if path else default_path(), create=create)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..cli.options import load_cost, load_scenario, policy_names
    from .keys import parse_axes

    scenario = load_scenario(args.scenario)
    policies = policy_names(args.policy)
    axes = parse_axes(scenario, args.vary)
    points = grid.plan(scenario, axes, policies)  # every point checked before the database is opened
    cost = load_cost(args.profile)
    with _db(args.db) as db, executor_for(args) as executor:
        record, tally = grid.run_sweep(scenario, axes, policies, db, cost, points=points, executor=executor)
        out, total = grid.rows(record, db)
        where = str(db.path)
    if args.format == "json":
        print(json.dumps(_json(record, out, where), indent=1))
    else:
        print(_table(record, out))
        print(f"\nsweep {record.id}: {total} runs ({tally.ran} made now, {tally.reused} reused) in {where}\n"
              f"the whole grid: ptshare results --sweep {record.id} --db {where} --export grid.csv")
    return 0


def _json(record: SweepRecord, out: list[dict[str, Any]], where: str) -> dict[str, Any]:
    keys = [k for k, _ in record.vary]
    return {"schema": "ptshare.sweep/1", "sweep": record.id, "db": where, "scenario": record.scenario,
            "source": record.source, "vary": {k: v for k, v in record.vary}, "policies": record.policies,
            "runs": [{"run": r["run"], "policy": r["policy"], "values": {k: r[k] for k in keys},
                      "metrics": {k[len("metric."):]: v for k, v in r.items() if k.startswith("metric.")}}
                     for r in out]}


def _table(record: SweepRecord, out: list[dict[str, Any]]) -> str:
    from ..cli.render import table
    from ..experiments.base import sig

    keys = [k for k, _ in record.vary]
    body = [[r["policy"], *(grid.text(r[k]) for k in keys),
             *(sig(r[f"metric.{m}"]) if isinstance(r[f"metric.{m}"], float) else r[f"metric.{m}"] for m in SHOWN)]
            for r in out]
    return table(["policy", *keys, *SHOWN], body, "l" * (1 + len(keys)) + "r" * len(SHOWN))


def show_sweep(args: argparse.Namespace) -> int:
    """``ptshare results --sweep ID``: the grid as a table, CSV or JSON, or exported to a file."""
    from ..experiments.export import write_rows

    if args.export:
        from ..cli.output import check_output

        check_output(args.export, "grid.csv", "--export")
    with _db(args.db, create=False) as db:
        record = grid.find(db, args.sweep)
        out, total = grid.rows(record, db)
        where = str(db.path)
    if len(out) < total:
        print(f"ptshare: sweep {record.id} is incomplete: {len(out)} of {total} runs are stored; the same "
              "'ptshare sweep' command again makes the others", file=sys.stderr)
    if args.export:
        try:
            write_rows(out, Path(args.export), ["sweep", "run", "policy", *(k for k, _ in record.vary)])
        except OSError as exc:
            raise UsageError(f"cannot write {args.export}: {exc.strerror or exc}") from None
        print(f"{len(out)} runs of sweep {record.id} written to {args.export}")
    elif args.format == "json":
        print(json.dumps(_json(record, out, where), indent=1))
    elif args.format == "csv":
        import csv

        if out:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(out[0]))
            writer.writeheader()
            writer.writerows(out)
    else:
        print(_table(record, out))
        print(f"sweep {record.id}: {len(out)} of {total} runs stored")
    return 0


def plot_sweep(args: argparse.Namespace) -> int:
    """``ptshare report --x KEY --y METRIC [--sweep ID]``: one metric against one varied key, a line per
    policy (and per value of every other varied key); written as PNG and SVG in ``--out``."""
    from .plot import draw_sweep

    if not args.x or not args.y:
        raise UsageError("--x KEY and --y METRIC go together: the varied key across, the metric up")
    with _db(args.db, create=False) as db:
        record = grid.find(db, args.sweep)
        out, total = grid.rows(record, db)
    if not out:
        raise UsageError(f"sweep {record.id} has no stored runs yet; the 'ptshare sweep' command makes them")
    png = draw_sweep(record, out, args.x, args.y, Path(args.out))
    if len(out) < total:
        print(f"ptshare: sweep {record.id} is incomplete: the figure shows {len(out)} of {total} runs",
              file=sys.stderr)
    print(png)
    return 0
