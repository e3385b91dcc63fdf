"""A calibration from start to end: the families, their runs, the fit, and what explains the fork
intercept."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..cost import CostModel
from ..errors import PtshareError
from ..host.backend import host_problem
from ..host.measure import cpu_clock
from ..host.objects import HostError
from ..host.times import measured_call_ns
from ..realfork.probe import compiler_problem
from .experiment import Experiment, Point
from .families import call, plan
from .fit import NO_EXPERIMENT, Fit, fit
from .probes import ProbeExperiment, probe_plan
from .profile import Provenance, provenance
from .worker_fork import worker_fork_events

FULL_REPEAT = 5
QUICK_REPEAT = 3
HUGETLB_EVENTS = ("fault_hugetlb", "hpage_alloc", "huge_pmds_copied")
SYSCALL_EVENTS = ("munmap", "mprotect", "mremap", "madvise")  # ops whose calls are events of the model


@dataclass
class Calibration:
    fit: Fit
    provenance: Provenance
    skipped: dict[str, str] = field(default_factory=dict)  # families this host could not run, and why
    worker_fork: dict[str, int] = field(default_factory=dict)  # see worker_fork_ns
    seconds: float = 0.0

    @property
    def worker_fork_ns(self) -> float | None:
        """What a host worker's own VMAs and PTEs add to each of its forks, priced with the fitted
        costs: the part of the fork intercept that is not the kernel's fixed cost."""
        if not self.worker_fork:
            return None
        return sum(n * self.fit.events[name].ns for name, n in self.worker_fork.items() if name != "fork")

    @property
    def fork_intercept_ns(self) -> float | None:
        cost = self.fit.pseudo.get(call("fork"))
        return None if cost is None else cost.ns + self.fit.events["fork"].ns


def less_measuring(point: Point, call_ns: float) -> Point:
    """``point`` with what measuring its calls added subtracted, for the ops whose fixed cost is an
    event of the model (``munmap``, ``mprotect``, ``mremap``, ``madvise``: one per call), as ``validate --times``
    subtracts it; the other ops' fits keep an intercept that takes it in."""
    calls = point.events.get(point.op, 0) if point.op in SYSCALL_EVENTS else 0
    if not calls:
        return point
    return replace(point, times_ns=[round(t - calls * call_ns) for t in point.times_ns])


def calibrate(base: CostModel, quick: bool = False, repeat: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Measure this machine's kernel and fit a cost profile; ``base`` gives what cannot be measured."""
    problem = host_problem()
    if problem is not None:
        raise HostError(f"calibration measures this machine's kernel with the host backend, and {problem}")
    no_cc = compiler_problem()
    if no_cc is not None:
        raise HostError(f"calibration times fork with a small C program, and {no_cc}")
    started = time.monotonic()
    repeat = repeat or (QUICK_REPEAT if quick else FULL_REPEAT)
    no_root = host_problem(need_root=True)
    families = plan(quick, hugetlb_ok=no_root is None)
    experiment = Experiment(families, base)
    if quick:
        experiment.skipped["hugetlb"] = "left out by --quick, as it reserves huge pages"
    elif no_root is not None:
        experiment.skipped["hugetlb"] = no_root
    # Work items, for the progress bar: each family simulated, each host run, the worker read.
    probes = ProbeExperiment(probe_plan(quick), base)
    work = [(experiment.simulate, f) for f in families] + [(probes.simulate, c) for c in probes.configs]
    for _ in range(repeat):  # interleaved: a busy moment of the machine falls on every kind of sample alike
        work += [(experiment.run_once, f) for f in families] + [(probes.run_once, c) for c in probes.configs]
    with cpu_clock():  # the worker families' times are CPU times too, as the probe's
        for done, (step, fam) in enumerate(work):
            if progress is not None:
                progress(done, len(work) + 1)
            step(fam)
        call_ns = measured_call_ns()
    points = [less_measuring(p, call_ns) for p in experiment.measured()] + probes.measured()
    if not points:
        raise PtshareError("no calibration sample could be measured on this host (every run's fault counts "
                           "differed from the model's)")
    try:
        worker = worker_fork_events()
    except (PtshareError, OSError):
        worker = {}  # only an explanation of the fork intercept: the profile does not depend on it
    if progress is not None:
        progress(len(work) + 1, len(work) + 1)
    result = fit(points, base)
    if "hugetlb" in experiment.skipped:
        for name in HUGETLB_EVENTS:
            if result.events[name].why == NO_EXPERIMENT:
                result.events[name].why = f"the hugetlb family did not run: {experiment.skipped['hugetlb']}"
    ran = [f.name for f in families if f.name not in experiment.skipped] + sorted({f"probe-{c.kind}"
                                                                                 for c in probes.configs})
    prov = provenance(ran, repeat, len(points), sum(p.set_aside for p in experiment.set_aside()), quick, base)
    return Calibration(result, prov, dict(experiment.skipped), worker, time.monotonic() - started)
