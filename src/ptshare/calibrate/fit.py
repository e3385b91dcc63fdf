"""From points to nanoseconds per event: one weighted non-negative least-squares fit over every
sample of every op.

Each sample's measured time is modelled as the simulator's estimate would make it -- the sum over
events of count x cost -- plus what the measurement holds that the model has no event for
(*pseudo-events*, measured and reported but not written to the profile): the fixed cost per call
of a touch, a worker's exit and a worker's fork (the intercept; for fork, what a host worker's
fork adds to the kernel's ``fork``, see :mod:`.worker_fork`: fork's own fixed cost is measured by
the probe, :mod:`.probes`) and, for touches, a cost per read of a page that fault-around has just
mapped (:data:`PREFAULTED_READ`).  The calls of munmap, mprotect, mremap and madvise are events of
the model (their samples' times are taken less what measuring a call adds, see
:func:`ptshare.calibrate.run.less_measuring`).
(The cost of an access itself is the ``accesses`` event's.)  Events are of three kinds:

* *fitted*: their cost is a coefficient of the fit, and is what the profile gets;
* *kept*: their cost comes from the base profile and is subtracted from the measurement first,
  so that the fitted costs are those that make the model's estimate (which charges the kept ones
  too) match the kernel.  An event is kept when the host measurement cannot price it
  (:data:`UNMEASURABLE`), when the cost model prices it inside another event
  (:data:`NOT_CHARGED`), when no experiment made it happen, or when the fit cannot resolve it
  (see :func:`fit`);
* *left out*, per op: what the simulator counts but the host's measurement of that op does not
  contain (:data:`HOST_LEAVES_OUT`).

One fit for all ops, rather than one per op, because the same event happens in several (a
page-table page is allocated by fork and by faults) and one cost must serve both.  Rows are
weighted by 1 / measured time: a fork of 1 ms and a touch of 300 ms count alike, and the fit
minimises relative errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..cost import CostModel
from ..mm.events import NAMES
from .experiment import Point
from .families import call
from .nnls import covariance, nnls, r_squared, standard_errors

UNMEASURABLE: dict[str, str] = {
    "exec": "the host backend's exec starts a new Python interpreter, not a small binary",
    "exit": "the host times a worker's exit as munmap of its scenario memory: exit()'s own fixed cost is not in it",
    "tlb_flush_mm": "it comes once with every munmap, mprotect and mremap call, so it cannot be told from their "
                    "fixed cost",
    "tlb_flush_all": "only the sharing policies unshare tables; this kernel has none",
    "pt_shared": "only the sharing policies (and hugetlb PMD sharing) attach tables",
    "pt_unshared": "only the sharing policies (and hugetlb PMD sharing) unshare tables",
    "pt_cow_shared": "only on-demand fork shares tables copy-on-write; this kernel has none",
    "pt_copied": "only on-demand fork copies shared tables; this kernel has none",
    "cow_pte_counted": "only cow-pt counts the pages of shared tables at fork; this kernel has none",
    "cow_pte_duplicated": "only cow-pt copies tables whose pages fork counted; this kernel has none",
    "fault_spurious": "only after a shared table is attached",
}
NOT_CHARGED: dict[str, str] = {
    "fault": "every fault is also counted by its kind (fault_anon, fault_file...), which carries its cost",
    "page_zeroed": "comes with page_alloc (every allocation of an anonymous or shmem page clears it)",
    "vmas_skipped": "every VMA fork skips is also one of vmas_copied",
    "pt_copied_background": "the copy is counted in ptes_copied, pte_tables_copied and pgtable_alloc, which carry "
                            "its cost",
    "pt_copied_sync": "the copy is counted in ptes_copied, pte_tables_copied and pgtable_alloc, which carry its cost",
}
# Per op: counts of events per call that the simulator charges to the op and the host's
# measurement of it does not contain.
HOST_LEAVES_OUT: dict[str, dict[str, int]] = {
    # The host times a worker's exit as munmap of the scenario's address range: exit()'s fixed
    # cost and the freeing of the PGD happen after, untimed.
    "exit": {"exit": 1, "pgtable_free": 1},
}


# On the project's machines (Firecracker guests under a PVM hypervisor) reading the pages
# fault-around has just mapped costs far more than reading them later: in a C test on a cached
# shmem file, a fault then a read of the window's 15 other pages took 5.7-6.3 us per 64 KiB window,
# all the faults first and then all the reads 2.8-3.6 us, the faults alone 2.6-3.5 us.  The
# simulator has no event for it, so it is a pseudo-event here: reads of pages fault-around mapped
# in the same touch, in touches that read every page of their range (the others read none).
PREFAULTED_READ = "read of a page fault-around just mapped"
NO_EXPERIMENT = "no experiment made it happen"
UNRESOLVED = "the fit held it at 0, and no other event always comes with it: these experiments cannot resolve it"


@dataclass
class EventCost:
    name: str
    ns: float
    source: str  # "measured" or "kept"
    stderr: float | None = None
    why: str = ""  # for a kept event, why
    samples: int = 0  # samples in which the event happened


@dataclass
class OpFit:
    """How well the fitted costs explain one op's samples."""

    op: str
    samples: int
    r2: float
    median_rel_error: float  # median of |predicted - measured| / measured
    max_rel_error: float
    worst: str  # the sample with the largest relative error


@dataclass
class Entangled:
    """Two fitted costs only their sum is well determined for: the events nearly always come
    together in the experiments (a write fault and its page allocation)."""

    a: str
    b: str
    correlation: float
    total: float
    stderr: float


@dataclass
class Fit:
    events: dict[str, EventCost]
    pseudo: dict[str, EventCost]  # intercepts and prefaulted reads: measured, not profile events
    ops: dict[str, OpFit]
    entangled: list[Entangled] = field(default_factory=list)
    residuals: list[dict] = field(default_factory=list)  # per sample: op, label, measured, predicted


def events_of(point: Point) -> dict[str, int]:
    """The counts that explain ``point``'s measured time: the simulator's, less what the host
    does not time (:data:`HOST_LEAVES_OUT`)."""
    counts = dict(point.events)
    calls = point.sample.pseudo.get(call(point.op), 1)
    for name, n in HOST_LEAVES_OUT.get(point.op, {}).items():
        counts[name] = max(0, counts.get(name, 0) - n * calls)
    return counts


def fit(points: list[Point], base: CostModel) -> Fit:
    """Fit nanoseconds per event to ``points``; events not fitted keep ``base``'s cost.

    An event the experiments cannot resolve is kept too, and the rest fitted again without it:
    one whose standard error exceeds its cost (unless it is entangled with another: then their sum
    is what the data determine, and what estimates use), and one the fit holds at 0 unless another
    event always comes with it, in proportion.  Such an event keeps 0: the other carries its cost
    (an anonymous write fault always allocates a page), and charging it besides would count that
    cost twice.
    """
    if not points:
        raise ValueError("no measured points to fit")
    unresolved: dict[str, str] = {}
    while True:
        result = _solve(points, base, unresolved)
        entangled = {name for e in result.entangled for name in (e.a, e.b)}
        found = {}
        for name, e in result.events.items():
            if e.source != "measured":
                continue
            if e.ns == 0:
                partners = _companions(points, name, result)
                if partners:
                    e.why = (f"held at 0: {' and '.join(partners)}, always with it in proportion, "
                             f"carr{'ies' if len(partners) == 1 else 'y'} its cost")
                else:
                    found[name] = UNRESOLVED
            elif e.stderr is not None and e.stderr > e.ns and name not in entangled:
                found[name] = f"the fit could not resolve it ({e.ns:,.0f} +- {e.stderr:,.0f} ns)"
        if not found:
            return result
        unresolved.update(found)


def _companions(points: list[Point], name: str, result: Fit) -> list[str]:
    """The other fitted events that came with ``name`` in every sample, in proportion to it (the
    ratio of their counts varies by under 10%): its column is all but a multiple of theirs."""
    counts = [c for c in map(events_of, points) if c.get(name)]
    out = []
    for other, e in result.events.items():
        if other == name or e.source != "measured" or e.ns == 0 or not counts:
            continue
        ratios = [c.get(other, 0) / c[name] for c in counts]
        if min(ratios) > 0 and max(ratios) <= 1.1 * min(ratios):
            out.append(other)
    return out


def _solve(points: list[Point], base: CostModel, unresolved: dict[str, str]) -> Fit:
    counts = [events_of(p) for p in points]
    seen = {name: sum(1 for c in counts if c.get(name)) for name in NAMES}
    fitted = [n for n in NAMES if n not in UNMEASURABLE and n not in NOT_CHARGED and n not in unresolved and seen[n]]
    ops = sorted({p.op for p in points})
    pseudo = [call(op) for op in ops if any(call(op) in p.sample.pseudo for p in points)]
    pseudo += [PREFAULTED_READ] if "touch" in ops else []
    columns = fitted + pseudo
    a = np.zeros((len(points), len(columns)))
    offset = np.zeros(len(points))
    for i, (p, c) in enumerate(zip(points, counts, strict=True)):
        for j, name in enumerate(fitted):
            a[i, j] = c.get(name, 0)
        for j, name in enumerate(pseudo, len(fitted)):
            a[i, j] = p.sample.pseudo.get(name, 0)
        if p.sample.every_page and "touch" in ops:
            a[i, columns.index(PREFAULTED_READ)] = c.get("fault_around_ptes", 0)
        offset[i] = sum(n * base.ns.get(name, 0.0) for name, n in c.items() if name not in fitted)
    y = np.array([p.measured_ns for p in points])
    w = 1.0 / np.maximum(y, 1.0)
    x = nnls(a * w[:, None], (y - offset) * w)
    cov = covariance(a * w[:, None], (y - offset) * w, x)
    se = standard_errors(cov)
    predicted = a @ x + offset
    result = Fit(events={}, pseudo={}, ops={}, entangled=_entangled(columns[:len(fitted)], x, cov))
    for j, name in enumerate(columns):
        cost = EventCost(name, float(x[j]), "measured", None if np.isnan(se[j]) else float(se[j]),
                         samples=int(np.count_nonzero(a[:, j])))
        (result.events if name in fitted else result.pseudo)[name] = cost
    for name in NAMES:
        if name not in result.events:
            why = (UNMEASURABLE.get(name) or NOT_CHARGED.get(name)
                   or unresolved.get(name, NO_EXPERIMENT))
            result.events[name] = EventCost(name, base.ns.get(name, 0.0), "kept", why=why, samples=seen[name])
    rel = (predicted - y) / y
    for op in ops:
        rows = np.array([p.op == op for p in points])
        worst = int(np.argmax(np.where(rows, np.abs(rel), -1.0)))
        result.ops[op] = OpFit(op, int(rows.sum()), r_squared(y[rows], predicted[rows]),
                               float(np.median(np.abs(rel[rows]))), float(np.abs(rel[worst])), points[worst].label)
    result.residuals = [{"op": p.op, "sample": p.label, "measured_ns": round(float(y[i])),
                         "predicted_ns": round(float(predicted[i])), "rel_error": round(float(rel[i]), 4)}
                        for i, p in enumerate(points)]
    return result


def _entangled(names: list[str], x: np.ndarray, cov: np.ndarray, threshold: float = 0.9) -> list[Entangled]:
    """Pairs of fitted costs whose estimates are correlated beyond ``threshold`` (in magnitude)."""
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if not (np.isfinite(cov[i, j]) and cov[i, i] > 0 and cov[j, j] > 0):
                continue
            corr = cov[i, j] / np.sqrt(cov[i, i] * cov[j, j])
            if abs(corr) >= threshold:
                var = cov[i, i] + cov[j, j] + 2 * cov[i, j]
                out.append(Entangled(names[i], names[j], float(corr), float(x[i] + x[j]),
                                     float(np.sqrt(max(var, 0.0)))))
    return out
