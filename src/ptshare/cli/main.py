"""The ``ptshare`` command.

Every error a user can cause ends in one line on stderr and exit status 2; what was computed
before the error is still printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence

from ..errors import PtshareError, ScenarioError, UsageError
from ..policies import POLICIES
from . import render
from .helptext import ArgumentParser
from .options import load_cost, load_scenario, policy_names
from .output import check_output, write_output
from .progress import Progress

FORMATS = ("table", "json", "jsonl", "csv")


def _run_all(scenario, policies: list[str], args) -> tuple[list, PtshareError | None]:
    """Run every policy; on an error, keep what finished (and the partial run) and return the error."""
    from ..scenario import run

    cost = load_cost(args.profile)
    results = []
    for policy in policies:
        progress = Progress(f"{scenario.name} [{policy}]")
        try:
            results.append(run(scenario, policy, cost=cost, check=args.check, progress=progress,
                               translation=getattr(args, "translation", False)))
        except ScenarioError as exc:
            partial = getattr(exc, "partial", None)
            if partial is not None:
                results.append(partial)
            return results, exc
        finally:
            progress.close()
    return results, None


def cmd_run(args) -> int:
    scenario = load_scenario(args.scenario)
    policies = policy_names(args.policy)
    if args.output:
        check_output(args.output)
    if args.backend == "host":
        from ..host.backend import run_host

        if args.translation:
            raise UsageError("--translation is modelled on the simulator only; on this machine's kernel, "
                             "'ptshare validate --translation' measures it")
        results, error = run_host(scenario, policies, args)
    else:
        results, error = _run_all(scenario, policies, args)
    _emit_runs(results, args.format, args.output)
    if error is not None:
        raise error
    return 0


def _emit_runs(results: list, fmt: str, output: str | None) -> None:
    if fmt == "json":
        docs = [r.to_json() for r in results]
        text = json.dumps(docs[0] if len(docs) == 1 else docs, indent=1)
    elif fmt == "jsonl":
        text = "\n".join(json.dumps(r.to_json()) for r in results)
    elif fmt == "csv":
        text = render.run_csv(results)
    else:
        text = "\n\n".join(render.run_table(r) for r in results)
    if text:
        write_output(text, output)


def cmd_compare(args) -> int:
    scenario = load_scenario(args.scenario)
    policies = policy_names(args.policy)
    if args.output:
        check_output(args.output)
    results, error = _run_all(scenario, policies, args)
    complete = [r for r in results if r.complete]
    if complete:
        if args.format in ("json", "jsonl"):
            text = json.dumps(render.compare_json(complete), indent=1 if args.format == "json" else None)
        elif args.format == "csv":
            text = render.compare_csv(complete)
        else:
            text = render.compare_table(complete)
        write_output(text, args.output)
    if error is not None:
        raise error
    return 0


def cmd_policies(args) -> int:
    rows = [[cls.name, cls.kernel, cls.summary] for cls in POLICIES.values()]
    if args.format == "json":
        print(json.dumps([{"name": n, "kernel": k, "summary": s} for n, k, s in rows], indent=1))
    else:
        print(render.table(["policy", "models", "what it does"], rows, "lll"))
    return 0


# Modules that add their own subcommands: each has register(subparsers) -> None.
COMMAND_MODULES = ("ptshare.host.cli", "ptshare.snapshot.cli", "ptshare.calibrate.cli", "ptshare.bench.cli",
                   "ptshare.experiments.cli", "ptshare.sweep.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ptshare", description="What do page tables cost a system of many "
                            "processes, and what does sharing them save?")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True

    def common(p: argparse.ArgumentParser, default_policy: str) -> None:
        p.add_argument("scenario", help="a scenario file (TOML)")
        p.add_argument("--policy", default=default_policy,
                       help=f"policies, comma-separated (default: {default_policy}); see 'ptshare policies'")
        p.add_argument("--format", choices=FORMATS, default="table")
        p.add_argument("--profile", help="a cost profile (TOML) for est_ns; default: the shipped one")
        p.add_argument("--check", action="store_true", help="check every invariant after every operation (slow)")
        p.add_argument("--translation", action="store_true",
                       help="model address translation of every touch (TLBs, page walks, caches)")
        p.add_argument("-o", "--output", help="write the output to this file instead of stdout")

    p = sub.add_parser("run", help="run a scenario under one or more policies")
    common(p, "linux")
    p.add_argument("--backend", choices=("sim", "host"), default="sim",
                   help="sim: the simulator; host: the real kernel of this machine")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="policies side by side on one scenario")
    common(p, ",".join(POLICIES))
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("policies", help="list the page-table designs")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_policies)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that part of ptshare is not installed
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except PtshareError as exc:
        print(f"ptshare: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ptshare: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
