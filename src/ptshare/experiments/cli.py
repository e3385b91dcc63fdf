"""``ptshare experiment``, ``ptshare results``, ``ptshare report`` and ``ptshare demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cli.helptext import RawDescriptionHelpFormatter
from ..cli.options import whole_number
from ..cli.output import check_output
from ..errors import UsageError
from .db import ResultsDB, default_path
from .executor import add_options, distributed_wanted, executor_for
from .registry import EXPERIMENTS

DEFAULT_OUT = "ptshare-report"
DB_HELP = f"the results database (default: $PTSHARE_DB, else {default_path()})"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run one experiment: a figure, a table and what they show",
                       description="Runs the experiment's simulator runs (reusing those already in the database), "
                       "stores each as it finishes, and prints its table and findings.",
                       epilog=_parameters(), formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a parameter (repeatable); lists are comma-separated: --set sizes_gib=0,1,2")
    p.add_argument("--quick", action="store_true", help="small sizes: seconds instead of up to a minute or two")
    p.add_argument("--with-host", action="store_true",
                   help="fork-vs-segment only: also measure fork on this machine's kernel (the host backend)")
    p.add_argument("--figure", metavar="FILE", help="also draw the figure to FILE (.png or .svg)")
    p.add_argument("--translation", action="store_true",
                   help="model address translation in every simulator run (TLBs, page walks, caches): runs of "
                   "their own, each stored with its translation figures, which a table after the experiment's shows")
    add_options(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("results", help="list, filter and export the stored runs")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--experiment", help="only this experiment's runs")
    p.add_argument("--policy", help="only this policy's runs")
    p.add_argument("--scenario", metavar="NAME", help="only runs of this scenario (a glob: 'fork-vs-segment-*')")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--export", metavar="FILE", help="write the runs to FILE.csv, or FILE.parquet (needs pyarrow)")
    p.add_argument("--sweep", type=whole_number("--sweep", 1), metavar="ID",
                   help="the grid of sweep ID instead: a row per run, a column per varied key and per metric")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="write the HTML report (and PNG figures) from the stored results",
                       description="Writes DIR/report.html from the experiments stored; with --x and --y, "
                       "draws a sweep's metric against one of its varied keys instead.")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default: ./{DEFAULT_OUT})")
    p.add_argument("--x", metavar="KEY", help="a sweep's varied key, across (with --y)")
    p.add_argument("--y", metavar="METRIC", help="a metric of its runs, up: est_ms, peak_pagetables_kb, ...")
    p.add_argument("--sweep", type=whole_number("--sweep", 1), metavar="ID",
                   help="the sweep to draw (default: the latest)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="run every experiment and write the report",
                       description="Runs every experiment on its default parameters, stores the runs in the "
                       "results database that 'ptshare results' and 'ptshare report' read (a re-run reuses them) "
                       "and writes DIR/report.html and DIR/figures/*.png.")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default: ./{DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="small sizes: the whole demo in well under a minute")
    p.add_argument("--with-host", action="store_true", help="also measure fork-vs-segment on this machine's kernel")
    add_options(p)
    p.set_defaults(func=cmd_demo)


def _parameters() -> str:
    from .params import as_text

    lines = ["experiments and their parameters (defaults; change them with --set KEY=VALUE):"]
    for name, exp in EXPERIMENTS.items():
        lines.append(f"  {name}: {exp.question}")
        lines += [f"      {key} = {as_text(value)}" for key, value in exp.defaults.items()]
    return "\n".join(lines)


def _db(path: str | None, *, create: bool = True) -> ResultsDB:
    return ResultsDB(Path(path) if path else default_path(), create=create)


def _params(name: str, sets: list[str], quick: bool, with_host: bool,
            distributed: bool = False) -> tuple[Any, dict[str, Any]]:
    from .params import parse_sets
    from .runner import host_unavailable

    exp = EXPERIMENTS.get(name)
    if exp is None:
        raise UsageError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    overrides = parse_sets(exp, sets)
    if with_host:
        if "with_host" not in exp.defaults:
            raise UsageError(f"--with-host applies to fork-vs-segment only, not to {name}")
        overrides["with_host"] = True
    params = exp.params(overrides, quick=quick)
    if params.get("with_host") and distributed:
        raise UsageError("--with-host measures this machine's kernel, one run at a time; it cannot run with "
                         "--workers or --cluster")
    if params.get("with_host"):
        why = host_unavailable()
        if why is not None:
            raise UsageError(f"the host backend is unavailable, so --with-host cannot run: {why}")
    return exp, params


def cmd_experiment(args: argparse.Namespace) -> int:
    from .runner import run_experiment

    exp, params = _params(args.name, args.set, args.quick, args.with_host, distributed_wanted(args))
    if args.figure:
        if Path(args.figure).suffix.lower() not in (".png", ".svg"):
            raise UsageError(f"--figure {args.figure}: the file name must end in .png or .svg")
        check_output(args.figure, "figure.png", "--figure")
    with _db(args.db) as db, executor_for(args) as executor:
        outcome, tally = run_experiment(exp, params, db, executor=executor, translation=args.translation)
        where = str(db.path)
        figures = _translation_figures(exp, params, db) if args.translation else None
    if args.figure:
        try:
            _figure(outcome, Path(args.figure))
        except OSError as exc:
            raise UsageError(f"cannot write {args.figure}: {exc.strerror or exc}; the runs are stored in {where}, "
                             "and the same command again reuses them") from None
    if args.format == "json":
        doc = {**outcome.to_json(), "runs": {"made": tally.ran, "reused": tally.reused}, "db": where,
               **({"translation": figures} if figures is not None else {})}
        print(json.dumps(doc, indent=1))
    else:
        print(_text(outcome))
        if figures is not None:
            print("\n" + _translation_text(figures))
        print(f"\n{tally.ran + tally.reused} runs ({tally.ran} made now, {tally.reused} reused) in {where}")
    return 0


def _translation_figures(exp: Any, params: dict[str, Any], db: ResultsDB) -> list[dict[str, Any]]:
    """Each simulator run's translation figures, summed over its steps, in the order planned."""
    from ..cost import load_profile
    from .runner import planned, run_key

    cost = load_profile()
    out = []
    for spec in planned(exp, params, translation=True):
        stored = db.metrics(run_key(exp, spec, cost)) if spec.backend == "sim" else None
        if stored is not None and "translation" in stored:
            out.append({"run": spec.label, "policy": spec.policy, **stored["translation"]})
    return out


def _translation_text(figures: list[dict[str, Any]]) -> str:
    from ..cli.render import table

    keys = ("accesses", "tlb_misses", "walks", "walk_refs", "walk_refs_llc_miss", "data_llc_miss")
    rows = [[f["run"], *(f"{f[k]:,}" for k in keys), f"{f['est_ns'] / 1e6:.2f}"] for f in figures]
    return "address translation, each run's touches (summed over its steps)\n" + table(
        ["run", *keys, "est ms"], rows, "l" + "r" * (len(keys) + 1))


def _figure(outcome: Any, path: Path) -> None:
    from .figures import draw

    if path.suffix.lower() == ".svg":
        path.write_text(draw(outcome.figure))
    else:
        draw(outcome.figure, path)


def _text(outcome: Any) -> str:
    from ..cli.render import table
    from .base import sig

    rows = [[sig(v) if isinstance(v, float) else v for v in row] for row in outcome.table.rows]
    align = "".join("r" if isinstance(v, int | float) else "l" for v in outcome.table.rows[0])
    lines = [f"{outcome.experiment}: {outcome.title}", outcome.question, "",
             table(outcome.table.headers, rows, align), ""]
    lines += [f"* {s}" for s in outcome.sentences]
    lines += [f"  note: {n}" for n in outcome.notes]
    return "\n".join(lines)


def cmd_results(args: argparse.Namespace) -> int:
    from .export import export, flatten

    if args.sweep is not None:
        from ..sweep.cli import show_sweep

        return show_sweep(args)
    if args.experiment is not None and args.experiment not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {args.experiment!r}; experiments: {', '.join(EXPERIMENTS)}")
    if args.export:
        check_output(args.export, "runs.csv", "--export")
    with _db(args.db, create=False) as db:
        runs = db.runs(args.experiment, args.policy, args.scenario)
    if args.export:
        try:
            export(runs, Path(args.export))
        except OSError as exc:
            raise UsageError(f"cannot write {args.export}: {exc.strerror or exc}") from None
        print(f"{len(runs)} runs written to {args.export}")
        return 0
    if args.format == "json":
        print(json.dumps(runs, indent=1))
    elif args.format == "csv":
        import csv

        rows = flatten(runs)
        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        from ..cli.render import table

        rows = [[r["id"], r["experiment"], r["label"], r["policy"], r["backend"], r["scenario"], r["created"],
                 f"{r['wall_s']:.2f}"] for r in runs]
        print(table(["id", "experiment", "run", "policy", "backend", "scenario", "stored", "wall s"], rows,
                    "rlllllll"))
        print(f"{len(runs)} runs")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if args.x or args.y or args.sweep is not None:
        from ..sweep.cli import plot_sweep

        return plot_sweep(args)
    with _db(args.db, create=False) as db:
        try:
            path = write_report(db, out)
        except OSError as exc:
            raise UsageError(f"cannot write the report in {out}: {exc.strerror or exc}") from None
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .report import write_report
    from .runner import run_experiment

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    plans = [_params(name, [], args.quick, args.with_host and name == "fork-vs-segment", distributed_wanted(args))
             for name in EXPERIMENTS]
    with _db(args.db) as db, executor_for(args) as executor:
        for exp, params in plans:
            outcome, tally = run_experiment(exp, params, db, executor=executor)
            print(_text(outcome))
            print(f"({tally.ran} runs made, {tally.reused} reused)\n")
            sys.stdout.flush()
        path = write_report(db, out)
        where = db.path
    print(f"The runs are stored in {where}: 'ptshare results' lists them and 'ptshare report' writes the report "
          "again from them" + ("" if args.db is None else f" (with --db {where})") + ".")
    print(path)  # last, alone on its line, as 'ptshare report' prints it
    return 0
