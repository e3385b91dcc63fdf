"""Running an experiment: each planned run is made (or found in the database), stored, then analysed."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..cost import CostModel, load_profile
from ..errors import PtshareError, ScenarioError
from ..machine import describe
from ..scenario import RunResult, run
from .base import Experiment, Outcome, RunSpec, scenario_hash, scenario_json
from .db import ResultsDB
from .progress import RunsBar


@dataclass
class Tally:
    """How many of an experiment's runs were made now, and how many were found already stored."""

    ran: int = 0
    reused: int = 0


def run_key(exp: Experiment, spec: RunSpec, cost: CostModel) -> str:
    """What identifies a run: two runs with the same key give the same metrics.  The model's
    source and the profile's values are part of it, so a changed model or a recalibrated profile
    of the same name never reuses a stale run."""
    ident = [exp.name, exp.revision, scenario_hash(spec.scenario), spec.policy, spec.backend, spec.params,
             __version__, model_fingerprint(), cost.name, sorted(cost.ns.items())]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


@functools.cache
def model_fingerprint() -> str:
    """A hash of the sources that decide what a simulated run computes."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "arch.py", root / "system.py", root / "cost.py"]
    for part in ("mm", "policies", "scenario"):
        files += sorted((root / part).glob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def host_unavailable() -> str | None:
    """Why the host backend cannot run here, or None when it can."""
    try:
        from ..host.backend import check_host
    except ImportError as exc:
        return f"ptshare.host cannot be imported ({exc})"
    from ..scenario import Scenario

    try:
        check_host(Scenario("probe"))
    except PtshareError as exc:
        return str(exc)
    return None


def execute(spec: RunSpec, cost: CostModel, progress: Callable[[int, int], None]) -> RunResult:
    """Make one run on its backend.  A run that stops early is an error naming the run."""
    if spec.backend == "host":
        from ..host.backend import run_on_host

        result, error = run_on_host(spec.scenario, cost)
        if error is not None:
            raise ScenarioError(f"run {spec.label} on the host kernel: {error}")
        return result
    try:
        return run(spec.scenario, spec.policy, cost=cost, progress=progress)
    except ScenarioError as exc:
        raise ScenarioError(f"run {spec.label} ({spec.policy}): {exc.message}") from None


def run_experiment(exp: Experiment, params: dict[str, Any], db: ResultsDB, *, cost: CostModel | None = None,
                   progress: bool | None = None) -> tuple[Outcome, Tally]:
    """Make every run ``exp`` plans for ``params`` that ``db`` does not hold yet, storing each one as
    it finishes; then analyse them all.  ``progress``: True draws a bar, False shows nothing, None (the
    default) draws a bar on a terminal and prints a line per finished run elsewhere."""
    cost = cost or load_profile()
    specs = exp.plan(params)
    keys = {spec.label: run_key(exp, spec, cost) for spec in specs}
    record = db.start_experiment(exp.name, params, __version__, cost.name, keys)
    bar = RunsBar(exp.name, len(specs), enabled=progress)
    metrics: dict[str, dict[str, Any]] = {}
    tally = Tally()
    try:
        for index, spec in enumerate(specs):
            stored = db.metrics(keys[spec.label])
            if stored is not None:
                metrics[spec.label] = stored
                tally.reused += 1
                continue
            started = time.perf_counter()
            step = bar.run(index, spec.label)
            result = execute(spec, cost, step)
            metrics[spec.label] = exp.measure(spec, result)
            db.put_run({"key": keys[spec.label], "experiment": exp.name, "label": spec.label,
                        "scenario": spec.scenario.name, "scenario_hash": scenario_hash(spec.scenario),
                        "scenario_json": scenario_json(spec.scenario), "policy": spec.policy,
                        "backend": spec.backend, "params": spec.params, "profile": cost.name,
                        "machine": describe() if spec.backend == "host" else cost.machine,
                        "version": __version__, "metrics": metrics[spec.label],
                        "wall_s": time.perf_counter() - started})
            tally.ran += 1
            step(1, 1)  # finished (a host run reports no steps)
    finally:
        bar.close()
    db.finish_experiment(record)
    return exp.analyse(params, metrics), tally


def analyse_stored(exp: Experiment, params: dict[str, Any], keys: dict[str, str],
                   db: ResultsDB) -> tuple[Outcome | None, int]:
    """The outcome from the runs ``db`` holds, or None while any is missing; and how many are stored."""
    stored = db.stored(list(keys.values()))
    if len(stored) < len(keys):
        return None, len(stored)
    return exp.analyse(params, {label: stored[key] for label, key in keys.items()}), len(stored)
