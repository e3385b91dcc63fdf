"""Running an experiment: each planned run is made (or found in the database), stored, then analysed."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .. import __version__
from ..cost import CostModel, load_profile
from ..errors import PtshareError, ScenarioError, UsageError
from ..machine import describe
from ..scenario import RunResult, run
from .base import Experiment, Outcome, RunSpec, scenario_hash, scenario_json
from .db import ResultsDB
from .executor import Executor, SerialExecutor
from .progress import RunsBar


@dataclass
class Tally:
    """How many of an experiment's runs were made now, and how many were found already stored."""

    ran: int = 0
    reused: int = 0


def run_key(exp: Measures, spec: RunSpec, cost: CostModel) -> str:
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
    for part in ("mm", "policies", "scenario", "translation"):
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
        raise ScenarioError(f"run {spec.label} ({spec.policy}): {exc.message}", exc.file, exc.line) from None


class Measures(Protocol):
    """What keeps a run's metrics: an :class:`Experiment`, or a sweep's metrics.  Picklable, since a
    cluster's workers call ``measure`` where the run was made."""

    name: str
    revision: int

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Job:
    """One run to make, with all a worker needs to make it and nothing of the database."""

    key: str
    spec: RunSpec
    measures: Measures
    cost: CostModel


@dataclass(frozen=True)
class Made:
    """A finished run as a worker returns it: its metrics, its wall time, and what computed it."""

    metrics: dict[str, Any]
    wall_s: float
    version: str
    model: str


def make_run(job: Job, progress: Callable[[int, int], None] | None = None) -> Made:
    """Make ``job``'s run and keep its metrics: what a worker process does, or this one when serial."""
    from ..cli.render import translation_total

    started = time.perf_counter()
    result = execute(job.spec, job.cost, progress or _no_progress)
    metrics = job.measures.measure(job.spec, result)
    total = translation_total(result)
    if total is not None:  # the translation model was on: the run's figures, whatever the experiment keeps
        metrics.setdefault("translation", total)
    return Made(metrics, time.perf_counter() - started, __version__, model_fingerprint())


def _no_progress(done: int, total: int) -> None:
    pass


def make_runs(jobs: list[Job], db: ResultsDB, executor: Executor | None = None,
              bar: str | None = None, progress: bool | None = None) -> tuple[dict[str, dict[str, Any]], Tally]:
    """``{key: metrics}`` of every job: those ``db`` holds are reused, the others are made on ``executor``
    (default: one after the other, here) and stored, each in a transaction of its own, as it finishes --
    by this process only, so a run is stored once, whichever worker made it.  ``bar``: the progress bar's
    label (drawn by default on a terminal)."""
    metrics: dict[str, dict[str, Any]] = {}
    tally = Tally()
    todo: dict[str, Job] = {}
    for job in jobs:
        if job.key in metrics or job.key in todo:
            continue  # two points of one grid that are the same run
        stored = db.metrics(job.key)
        if stored is None:
            todo[job.key] = job
        else:
            metrics[job.key] = stored
            tally.reused += 1
    runs = RunsBar(bar or "runs", len(todo), enabled=progress)
    try:
        for job, made in (executor or SerialExecutor()).map(make_run, list(todo.values()), runs):
            if (made.version, made.model) != (__version__, model_fingerprint()):
                raise UsageError(f"run {job.spec.label} was made by ptshare {made.version} (model {made.model}), "
                                 f"not this ptshare {__version__} (model {model_fingerprint()}): install the "
                                 "same ptshare on every worker")
            db.put_run({"key": job.key, "experiment": job.measures.name, "label": job.spec.label,
                        "scenario": job.spec.scenario.name, "scenario_hash": scenario_hash(job.spec.scenario),
                        "scenario_json": scenario_json(job.spec.scenario), "policy": job.spec.policy,
                        "backend": job.spec.backend, "params": job.spec.params, "profile": job.cost.name,
                        "machine": describe() if job.spec.backend == "host" else job.cost.machine,
                        "version": __version__, "metrics": made.metrics,
                        "wall_s": made.wall_s})
            metrics[job.key] = made.metrics
            tally.ran += 1
    finally:
        runs.close()
    return metrics, tally


def planned(exp: Experiment, params: dict[str, Any], translation: bool = False) -> list[RunSpec]:
    """The runs ``exp`` plans for ``params``; with ``translation``, every simulator run models
    address translation (``[machine] translation = true``: runs of their own, apart from those without)."""
    specs = exp.plan(params)
    if not translation:
        return specs
    return [replace(spec, scenario=replace(spec.scenario, machine=replace(spec.scenario.machine, translation=True)))
            if spec.backend == "sim" else spec for spec in specs]


def run_experiment(exp: Experiment, params: dict[str, Any], db: ResultsDB, *, cost: CostModel | None = None,
                   progress: bool | None = None, executor: Executor | None = None,
                   translation: bool = False) -> tuple[Outcome, Tally]:
    """Make every run ``exp`` plans for ``params`` that ``db`` does not hold yet (on ``executor``; default
    here, one after the other), storing each one as it finishes; then analyse them all.  ``progress``:
    True draws a bar, False shows nothing, None (the default) draws a bar on a terminal and prints a
    line per finished run elsewhere.  ``translation``: see :func:`planned`."""
    cost = cost or load_profile()
    specs = planned(exp, params, translation)
    keys = {spec.label: run_key(exp, spec, cost) for spec in specs}
    record = db.start_experiment(exp.name, params, __version__, cost.name, keys)
    jobs = [Job(keys[spec.label], spec, exp, cost) for spec in specs]
    metrics, tally = make_runs(jobs, db, executor, exp.name, progress)
    db.finish_experiment(record)
    return exp.analyse(params, {label: metrics[key] for label, key in keys.items()}), tally


def analyse_stored(exp: Experiment, params: dict[str, Any], keys: dict[str, str],
                   db: ResultsDB) -> tuple[Outcome | None, int]:
    """The outcome from the runs ``db`` holds, or None while any is missing; and how many are stored."""
    stored = db.stored(list(keys.values()))
    if len(stored) < len(keys):
        return None, len(stored)
    return exp.analyse(params, {label: stored[key] for label, key in keys.items()}), len(stored)
