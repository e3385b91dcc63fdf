"""What ``ptshare calibrate`` prints: a table for people, or the ``ptshare.calibrate/1`` JSON
document."""

from __future__ import annotations

import json
import math
from typing import Any

from ..cli.render import table
from ..cost import CostModel
from ..mm.events import NAMES
from ..units import format_ns
from .run import Calibration

SCHEMA = "ptshare.calibrate/1"


def _round(value: float | None, digits: int = 1) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def report_json(cal: Calibration, base: CostModel, profile_text: str, written: str | None) -> str:
    f, prov = cal.fit, cal.provenance
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "date": prov.date,
        "machine": prov.machine,
        "quick": prov.quick,
        "repeat": prov.repeat,
        "families": prov.families,
        "skipped_families": cal.skipped,
        "samples": prov.samples,
        "runs_set_aside": prov.set_aside,
        "seconds": round(cal.seconds, 1),
        "events": {n: {"ns": _round(e.ns), "stderr": _round(e.stderr), "source": e.source, "why": e.why or None,
                       "samples": e.samples, "base_ns": base.ns.get(n, 0.0)} for n, e in f.events.items()},
        "not_in_profile": {n: {"ns": _round(e.ns), "stderr": _round(e.stderr), "samples": e.samples}
                        for n, e in f.pseudo.items()},
        "ops": {op: {"samples": o.samples, "r2": _round(o.r2, 4), "median_rel_error": _round(o.median_rel_error, 4),
                     "max_rel_error": _round(o.max_rel_error, 4), "worst": o.worst} for op, o in f.ops.items()},
        "entangled": [{"events": [e.a, e.b], "correlation": _round(e.correlation, 3), "sum_ns": _round(e.total),
                       "sum_stderr": _round(e.stderr)} for e in f.entangled],
        "worker_fork": {"events": cal.worker_fork, "predicted_ns": _round(cal.worker_fork_ns),
                        "fork_intercept_ns": _round(cal.fork_intercept_ns)},
        "residuals": f.residuals,
        "profile": {"path": written, "text": profile_text},
    }
    return json.dumps(doc, indent=1)


def report_text(cal: Calibration, base: CostModel, written: str | None) -> str:
    prov = cal.provenance
    out = [f"ptshare calibrate: {prov.machine}",
           f"{prov.samples} samples from {len(prov.families)} families ({', '.join(prov.families)}), "
           f"{prov.repeat} host runs each, in {cal.seconds:.0f} s"
           + (f"; {prov.set_aside} runs of a sample set aside (fault counts differed from the model's)"
              if prov.set_aside else "")]
    out += [f"not run: {name} ({why})" for name, why in cal.skipped.items()]
    out += ["", _events_table(cal, base), "", _ops_table(cal), "", *_not_in_profile(cal), *_kept(cal, base), ""]
    out.append(f"wrote {written}" if written else "profile not written (give -o FILE to write it)")
    return "\n".join(out)


def _events_table(cal: Calibration, base: CostModel) -> str:
    rows = []
    for n in NAMES:
        e = cal.fit.events[n]
        old = base.ns.get(n, 0.0)
        if e.source == "kept" and e.ns == 0 and not old:
            continue
        change = f"{e.ns / old:.2f}x" if e.source == "measured" and old else ""
        source = f"measured ({e.samples} sample{'s' if e.samples != 1 else ''})" if e.source == "measured" else "kept"
        rows.append([n, f"{e.ns:,.0f}", "" if e.stderr is None else f"{e.stderr:,.0f}", f"{old:,.0f}", change, source])
    return table(["event", "ns", "+-", "base ns", "change", "source"], rows, "lrrrrl")


def _ops_table(cal: Calibration) -> str:
    rows = [[op, o.samples, f"{o.r2:.4f}", f"{100 * o.median_rel_error:.1f}%",
             f"{100 * o.max_rel_error:.1f}% ({o.worst})"] for op, o in cal.fit.ops.items()]
    return ("Fit quality per op (R^2 over its samples; errors relative to the measured time):\n"
            + table(["op", "samples", "R^2", "median |error|", "largest |error|"], rows, "lrrrl"))


def _not_in_profile(cal: Calibration) -> list[str]:
    f = cal.fit
    out = ["Measured, not in the profile (no event of the model stands for them):"]
    for n, e in f.pseudo.items():
        se = "" if e.stderr is None else f" +- {format_ns(e.stderr)}"
        out.append(f"  {n}: {format_ns(e.ns)}{se}")
    intercept, worker = cal.fork_intercept_ns, cal.worker_fork_ns
    if intercept is not None and worker is not None:
        w = cal.worker_fork
        fork = f.events["fork"]
        out.append(f"  A host worker's fork costs {format_ns(intercept)} before the scenario's own work: the kernel's "
                   f"fixed cost ({fork.source}: {format_ns(fork.ns)}) and the worker's Python interpreter "
                   f"({w.get('vmas_copied', 0)} VMAs, {w.get('ptes_copied', 0):,} PTEs copied), which the fitted "
                   f"costs price at {format_ns(worker)}.")
    out += [f"Only the sum is well determined: {e.a} + {e.b} = {e.total:,.0f} +- {e.stderr:,.0f} ns "
            f"(correlation {e.correlation:+.2f})." for e in f.entangled]
    out += [f"{n}: {f.events[n].why}." for n in NAMES if f.events[n].source == "measured" and f.events[n].why]
    return out


def _kept(cal: Calibration, base: CostModel) -> list[str]:
    kept = [n for n in NAMES if cal.fit.events[n].source == "kept" and (cal.fit.events[n].ns or base.ns.get(n))]
    if not kept:
        return []
    return ["", "Kept from the base profile:", *(f"  {n}: {cal.fit.events[n].why}" for n in kept)]


__all__ = ["SCHEMA", "report_json", "report_text"]
