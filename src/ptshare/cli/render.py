"""Turning run results into tables a person reads, and into CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from ..scenario.run import RunResult
from ..units import format_ns

MAX_PROCESS_ROWS = 20


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one of ``l``/``r`` per column (numbers right by default)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], int | float) else "l" for i in range(len(headers)))
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def run_table(result: RunResult) -> str:
    """Steps, then the processes at the end, for one (scenario, policy)."""
    out = [f"scenario {result.scenario} -- policy {result.policy} ({result.backend})"]
    rows = []
    prev_faults = 0
    for step in result.steps:
        faults = step.system.get("faults", 0)
        pid = step.pid if step.repeat == 1 else f"{step.pid} x{step.repeat}"
        rows.append([step.index, step.op, pid or "", faults - prev_faults, step.system["pagetables_kb"],
                     format_ns(step.est_ns), format_ns(step.wall_ns)])
        prev_faults = faults
    wall = "sim wall" if result.backend == "sim" else f"{result.backend} wall"
    head, align = ["step", "op", "pid", "faults in step", "PageTables kB", "est. time", wall], "rllrrrr"
    if any(step.est_ns_background for step in result.steps):  # a policy moved work off the caller's path
        for row, step in zip(rows, result.steps, strict=True):
            row.insert(6, format_ns(step.est_ns_background) if step.est_ns_background else "")
        head.insert(6, "est. background")
        align += "r"
    out.append(table(head, rows, align))
    final = result.final
    if final is not None:
        out.append("")
        out.append(process_table(final.processes))
        signals = [s for step in result.steps for s in step.signals]
        for sig in signals:
            out.append(f"{sig['pid']}: killed by {sig['signal']} at {sig['addr']} ({sig['reason']})")
    if not result.complete:
        out.append(f"INCOMPLETE: {result.error}")
    return "\n".join(out)


def process_table(processes: dict[str, dict]) -> str:
    names = list(processes)
    rows = []
    for name in names[:MAX_PROCESS_ROWS]:
        p = processes[name]
        rows.append([name, "yes" if p.get("alive") else "no", p["minflt"], p["vmpte_kb"], p["rss_kb"],
                     p.get("pt_shared_kb", 0)])
    text = table(["process", "alive", "minflt (total)", "VmPTE kB", "RSS kB", "shared PT kB"], rows, "llrrrr")
    if len(names) > MAX_PROCESS_ROWS:
        rest = [processes[n] for n in names[MAX_PROCESS_ROWS:]]
        text += (f"\n... and {len(rest):,} more processes: minflt {sum(p['minflt'] for p in rest):,} in all, "
                 f"VmPTE {sum(p['vmpte_kb'] for p in rest):,} kB in all (--format json lists every one)")
    return text


def _in_forks(r: RunResult, key: str) -> int:
    """How much of the cumulative system counter ``key`` grew in fork steps."""
    grew, before = 0, 0
    for s in r.steps:
        if s.op == "fork":
            grew += s.system[key] - before
        before = s.system[key]
    return grew


COMPARE_ROWS = [
    ("faults (minflt, all processes)", lambda r: r.final.system["faults"]),
    ("page tables at the end (kB)", lambda r: r.final.system["pagetables_kb"]),
    ("page tables at most (kB)", lambda r: max(s.system["pagetables_kb"] for s in r.steps)),
    ("PTEs copied at fork", lambda r: _in_forks(r, "ptes_copied")),
    ("PTEs copied later (shared tables copied)", lambda r: r.final.system["ptes_copied"] - _in_forks(r, "ptes_copied")),
    ("COW copies", lambda r: r.final.system["cow_copies"]),
    ("page tables shared", lambda r: r.final.system["pt_shared"]),
    ("page tables shared copy-on-write at fork", lambda r: r.final.system["pt_cow_shared"]),
    ("shared page tables copied", lambda r: r.final.system["pt_copied"]),
    ("tables a child copied off its parent's path", lambda r: r.final.system["pt_copied_background"]),
    ("tables a parent copied before changing them", lambda r: r.final.system["pt_copied_sync"]),
    ("shared tables at the end", lambda r: r.final.system["shared_tables"]),
    ("unshares", lambda r: r.final.system["pt_unshared"]),
    ("TLB flushes on all CPUs", lambda r: r.final.system["tlb_flush_all"]),
    ("estimated time", lambda r: format_ns(sum(s.est_ns for s in r.steps))),
    ("  of which in fork", lambda r: format_ns(sum(s.est_ns for s in r.steps if s.op == "fork"))),
    ("  of which in faults (touch)", lambda r: format_ns(sum(s.est_ns for s in r.steps if s.op == "touch"))),
    ("estimated time off the caller's path", lambda r: format_ns(sum(s.est_ns_background for s in r.steps))),
    ("simulator wall time", lambda r: format_ns(r.wall_ns)),
]


TRANSLATION_ROWS = [
    ("translation: accesses", "accesses"),
    ("  L1 dTLB misses", "tlb_misses"),
    ("  page walks", "walks"),
    ("  walk references", "walk_refs"),
    ("  walk references from DRAM", "walk_refs_llc_miss"),
    ("  data references from DRAM", "data_llc_miss"),
]


def translation_total(result: RunResult) -> dict[str, int] | None:
    """The run's translation figures summed over its steps (None when it ran without the model)."""
    steps = [s.translation for s in result.steps if s.translation is not None]
    if not steps:
        return None
    return {key: sum(t[key] for t in steps) for key in steps[0]}


def compare_table(results: list[RunResult]) -> str:
    head = ["", *[r.policy for r in results]]
    rows = [[label, *[get(r) for r in results]] for label, get in COMPARE_ROWS]
    totals = [translation_total(r) for r in results]
    if all(t is not None for t in totals):
        rows += [[label, *[t[key] for t in totals]] for label, key in TRANSLATION_ROWS]
        rows.append(["  time of the accesses", *[format_ns(t["est_ns"]) for t in totals]])
    title = f"scenario {results[0].scenario}: policies side by side"
    return title + "\n" + table(head, rows, "l" + "r" * len(results))


def compare_json(results: list[RunResult]) -> dict:
    return {
        "schema": "ptshare.compare/1",
        "scenario": results[0].scenario,
        "policies": {
            r.policy: {
                "faults": r.final.system["faults"],
                "pagetables_kb": r.final.system["pagetables_kb"],
                "pagetables_peak_kb": max(s.system["pagetables_kb"] for s in r.steps),
                "ptes_copied": r.final.system["ptes_copied"],
                "cow_copies": r.final.system["cow_copies"],
                "pt_shared": r.final.system["pt_shared"],
                "shared_tables": r.final.system["shared_tables"],
                "pt_unshared": r.final.system["pt_unshared"],
                "pt_cow_shared": r.final.system["pt_cow_shared"],
                "pt_copied": r.final.system["pt_copied"],
                "tlb_flush_all": r.final.system["tlb_flush_all"],
                "est_ns": round(sum(s.est_ns for s in r.steps)),
                "est_fork_ns": round(sum(s.est_ns for s in r.steps if s.op == "fork")),
                "est_ns_background": round(sum(s.est_ns_background for s in r.steps)),
                "pt_copied_sync": r.final.system["pt_copied_sync"],
                "pt_copied_background": r.final.system["pt_copied_background"],
                "wall_ns": r.wall_ns,
                **({"translation": t} if (t := translation_total(r)) is not None else {}),
            }
            for r in results
        },
    }


RUN_CSV_FIELDS = ["scenario", "policy", "backend", "step", "op", "step_pid", "process", "alive", "minflt",
                  "vmpte_kb", "rss_kb", "pt_shared_kb", "pagetables_kb", "est_ns", "wall_ns"]


def run_csv(results: list[RunResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RUN_CSV_FIELDS)
    for r in results:
        for s in r.steps:
            for name, p in s.processes.items():
                writer.writerow([r.scenario, r.policy, r.backend, s.index, s.op, s.pid, name,
                                 int(bool(p.get("alive"))), p["minflt"], p["vmpte_kb"], p["rss_kb"],
                                 p.get("pt_shared_kb", 0), s.system["pagetables_kb"], round(s.est_ns), s.wall_ns])
    return buf.getvalue()


def compare_csv(results: list[RunResult]) -> str:
    data = compare_json(results)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    first = next(iter(data["policies"].values()))
    fields = [f for f in first if f != "translation"]
    extra = [f"translation_{k}" for k in first.get("translation", {})]
    writer.writerow(["scenario", "policy", *fields, *extra])
    for policy, values in data["policies"].items():
        writer.writerow([data["scenario"], policy, *[values[f] for f in fields],
                         *values.get("translation", {}).values()])
    return buf.getvalue()
