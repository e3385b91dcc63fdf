"""lazy-tradeoff: what lazy copy saves at fork, and what the child's faults give back.

Lazy copy moves the cost of a shared segment's PTEs from fork to the child's first touch of each
page, where a fault costs far more than copying one PTE.  So it wins when the child touches
little of the segment and loses when it touches much; fault-around (Linux 3.15 on) maps 16 pages
per read fault and moves the break-even point.  Eager copy, lazy copy and Linux 6.18 are exactly
the three cases: copy, no copy without fault-around, no copy with it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import UsageError
from ..scenario import Machine, RunResult, Scenario
from .base import (
    Experiment,
    Figure,
    Outcome,
    Panel,
    RunSpec,
    Series,
    Table,
    and_list,
    crossing,
    gib_bytes,
    gib_text,
    label,
    need_policies,
    need_positive,
    step_index,
    words,
)


def scenario(gib: float, fraction: float) -> Scenario:
    size = gib_bytes(gib)
    touched = max(1, round(size * fraction / 4096)) * 4096 if fraction > 0 else 0
    sc = Scenario(f"lazy-tradeoff-{gib_text(gib).replace(' ', '')}-{fraction:g}",
                  f"a parent writes a {gib_text(gib)} shared segment and forks; the child reads the first "
                  f"{fraction:.0%} of it, then exits", Machine(aslr_bits=0))
    sc.object("segment", "shmem", size)
    sc.step("spawn", pid="parent")
    sc.step("mmap", pid="parent", vma="seg", object="segment", shared=True, align="2MiB")
    sc.step("touch", pid="parent", vma="seg", access="write")
    sc.step("fork", pid="parent", child="child")
    if touched:
        sc.step("touch", pid="child", vma="seg", length=touched)
    sc.step("exit", pid="child")
    return sc


class LazyTradeoff(Experiment):
    name = "lazy-tradeoff"
    title = "Lazy copy's trade: fork time against the child's faults"
    question = "When does skipping the copy at fork pay, and when do the child's faults cost more?"
    defaults: ClassVar[dict[str, Any]] = {
        "segment_gib": 1.0, "fractions": [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0],
        "policies": ["eager", "lazy", "linux", "shared-pt"]}
    quick: ClassVar[dict[str, Any]] = {"segment_gib": 0.0625, "fractions": [0.0, 0.05, 0.25, 1.0]}

    def check(self, params: dict[str, Any]) -> None:
        need_positive(params, "segment_gib")
        need_policies(params, "policies")
        fr = params["fractions"]
        if len(fr) < 2 or sorted(set(fr)) != fr or fr[0] < 0 or fr[-1] > 1:
            raise UsageError("fractions must be at least two increasing numbers from 0 to 1")
        if "eager" not in params["policies"]:
            raise UsageError("lazy-tradeoff compares with eager copy: keep eager among its policies")
        if gib_bytes(params["segment_gib"]) == 0:
            raise UsageError("segment_gib must be at least 2 MiB (0.002)")

    def plan(self, params: dict[str, Any]) -> list[RunSpec]:
        return [RunSpec(f"{p}@{f:g}", scenario(params["segment_gib"], f), p, {"fraction": f})
                for p in params["policies"] for f in params["fractions"]]

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        fork = result.steps[step_index(result, "fork")]
        out = {"fork_ns": fork.est_ns, "ptes_copied": fork.events.get("ptes_copied", 0),
               "touch_ns": 0.0, "child_faults": 0,
               "exit_ns": result.steps[step_index(result, "exit", "child")].est_ns}
        if spec.params["fraction"] > 0:
            touch = result.steps[step_index(result, "touch", "child")]
            out["touch_ns"], out["child_faults"] = touch.est_ns, touch.events.get("fault", 0)
        return out

    def analyse(self, params: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> Outcome:
        fr, policies = params["fractions"], params["policies"]
        total = {p: [(metrics[f"{p}@{f:g}"]["fork_ns"] + metrics[f"{p}@{f:g}"]["touch_ns"]) / 1e6 for f in fr]
                 for p in policies}
        pct = [100 * f for f in fr]
        facts: dict[str, Any] = {"segment": gib_text(params["segment_gib"]), "eager_ms": total["eager"][-1]}
        vlines = []
        for p in policies:
            facts[f"{p}_ms_at_all"] = total[p][-1]
            facts[f"{p}_ms_max"] = max(total[p])
            facts[f"{p}_faults_max"] = max(metrics[f"{p}@{f:g}"]["child_faults"] for f in fr)
            if p != "eager":
                facts[f"{p}_breakeven_pct"] = crossing(pct, total[p], total["eager"])
                if facts[f"{p}_breakeven_pct"] is not None:
                    vlines.append((f"{words(p)} = eager copy", facts[f"{p}_breakeven_pct"]))
        panel = Panel(f"fork, then the child reads part of a {facts['segment']} shared segment",
                      "part of the segment the child reads (%)", "fork + the child's faults (ms, estimated)",
                      [Series(label(p), pct, total[p]) for p in policies], vlines=vlines)
        figure = Figure(self.name, [panel], "Estimated time of fork plus the child's page faults; vertical lines: "
                        "where a lazy policy starts to cost more than eager copy.")
        rows = [[f"{100 * f:g}%", *(total[p][i] for p in policies),
                 *(metrics[f"{p}@{f:g}"]["child_faults"] for p in policies)] for i, f in enumerate(fr)]
        headers = ["child reads", *(f"{p} (ms)" for p in policies), *(f"{p} faults" for p in policies)]
        return self.outcome(params, figure, Table(headers, rows), self._sentences(policies, facts), facts)

    def _sentences(self, policies: list[str], facts: dict[str, Any]) -> list[str]:
        def while_(p: str, first: bool) -> str:
            x = facts[f"{p}_breakeven_pct"]
            if x is None:
                return "at every fraction measured"
            return f"{'while the child reads ' if first else ''}less than {x:,.1f}%" + (
                f" of the {facts['segment']} segment" if first else "")

        out = []
        lazy = [p for p in ("lazy", "linux") if p in policies]
        if lazy:
            how = {"lazy": "without fault-around (lazy copy, 2.6.14)", "linux": "with fault-around (Linux 6.18)"}
            parts = [f"{while_(p, i == 0)} {how[p]}" for i, p in enumerate(lazy)]
            out.append(f"Skipping the copy beats eager copy {', and '.join(parts)}.")
            costs = and_list([f"{facts[f'{p}_ms_at_all']:.1f} ms under {words(p)}" for p in lazy])
            out.append(f"Past that, the child's faults cost more than the copy fork skipped: reading all of it "
                       f"costs {costs}, against {facts['eager_ms']:,.1f} ms for eager copy's fork.")
        if "shared-pt" in policies:
            out.append(f"Shared page tables pay neither: at most {facts['shared-pt_ms_max']:,.2f} ms and "
                       f"{facts['shared-pt_faults_max']:,} faults, whatever part the child reads.")
        return out
