"""fork-exec: a shell-like fork then exec from a large parent.

The parent holds a private heap and a shared segment, both written; its child execs at once, so
whatever fork did for the child's page tables is thrown away unused.  And fork write-protected
the parent's private pages for a child that never touched them: the parent's next write to each
takes a fault, whichever policy forked it.
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
    count,
    gib_bytes,
    gib_text,
    label,
    need_policies,
    need_positive,
    step_index,
    words,
)

PARTS = ("fork", "exec", "parent's write faults")


def scenario(gib: float) -> Scenario:
    half = gib_bytes(gib / 2)
    sc = Scenario(f"fork-exec-{gib_text(gib).replace(' ', '')}",
                  f"a parent with a {gib_text(gib / 2)} private heap and a {gib_text(gib / 2)} shared segment, both "
                  "written, forks a child that execs at once; then the parent writes its heap again",
                  Machine(aslr_bits=0))
    sc.object("segment", "shmem", half)
    sc.step("spawn", pid="app")
    sc.step("mmap", pid="app", vma="heap", size=half, align="2MiB")
    sc.step("touch", pid="app", vma="heap", access="write")
    sc.step("mmap", pid="app", vma="seg", object="segment", shared=True, align="2MiB")
    sc.step("touch", pid="app", vma="seg", access="write")
    sc.step("fork", pid="app", child="sh")
    sc.step("exec", pid="sh")
    sc.step("exit", pid="sh")
    sc.step("touch", pid="app", vma="heap", access="write")
    return sc


class ForkExec(Experiment):
    name = "fork-exec"
    title = "Fork then exec from a large parent"
    question = "What does each policy pay, at fork and after, for memory a child that execs never uses?"
    defaults: ClassVar[dict[str, Any]] = {
        "sizes_gib": [0.5, 1.0, 2.0, 4.0, 8.0], "policies": ["eager", "lazy", "linux", "shared-pt"]}
    quick: ClassVar[dict[str, Any]] = {"sizes_gib": [0.125, 0.25]}

    def check(self, params: dict[str, Any]) -> None:
        need_positive(params, "sizes_gib")
        need_policies(params, "policies")
        if sorted(set(params["sizes_gib"])) != params["sizes_gib"] or gib_bytes(params["sizes_gib"][0] / 2) == 0:
            raise UsageError("sizes_gib must be increasing sizes of at least 4 MiB (0.004)")

    def plan(self, params: dict[str, Any]) -> list[RunSpec]:
        return [RunSpec(f"{p}@{s:g}", scenario(s), p, {"size_gib": s})
                for p in params["policies"] for s in params["sizes_gib"]]

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        fork = result.steps[step_index(result, "fork")]
        execs = result.steps[step_index(result, "exec")]
        rewrite = result.steps[step_index(result, "touch", "app", 2)]
        return {"fork_ns": fork.est_ns, "exec_ns": execs.est_ns, "rewrite_ns": rewrite.est_ns,
                "rewrite_faults": rewrite.events.get("fault", 0), "ptes_copied": fork.events.get("ptes_copied", 0),
                "pt_shared": fork.events.get("pt_shared", 0), "tlb_flush_all": execs.events.get("tlb_flush_all", 0),
                "ptes_zapped": execs.events.get("ptes_zapped", 0)}

    def analyse(self, params: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> Outcome:
        sizes, policies = params["sizes_gib"], params["policies"]
        top = sizes[-1]
        child = {p: [(metrics[f"{p}@{s:g}"]["fork_ns"] + metrics[f"{p}@{s:g}"]["exec_ns"]) / 1e6 for s in sizes]
                 for p in policies}
        last = {p: metrics[f"{p}@{top:g}"] for p in policies}
        parts = {p: [last[p]["fork_ns"] / 1e6, last[p]["exec_ns"] / 1e6, last[p]["rewrite_ns"] / 1e6]
                 for p in policies}
        facts: dict[str, Any] = {"size": gib_text(top), "half": gib_text(top / 2)}
        for p in policies:
            facts[f"{p}_child_ms"] = child[p][-1]
            facts[f"{p}_total_ms"] = sum(parts[p])
            facts[f"{p}_ptes_copied"] = last[p]["ptes_copied"]
            facts[f"{p}_tlb_flush_all"] = last[p]["tlb_flush_all"]
            facts[f"{p}_rewrite_ms"] = parts[p][2]
            facts[f"{p}_rewrite_faults"] = last[p]["rewrite_faults"]
            facts[f"{p}_rewrite_pct"] = 100 * parts[p][2] / facts[f"{p}_total_ms"]
        facts["pt_shared"] = last.get("shared-pt", {}).get("pt_shared", 0)
        panels = [
            Panel("the child's part: fork + exec", "parent's memory (GiB, half heap, half shared segment)",
                  "estimated time (ms)", [Series(label(p), sizes, child[p]) for p in policies]),
            *[Panel(f"{part}, parent of {facts['size']}", "", "estimated time (ms)",
                    [Series(part, policies, [parts[p][i] for p in policies], "bar")])
              for i, part in enumerate(PARTS)],
        ]
        figure = Figure(self.name, panels, "A child that execs at once, and what the fork leaves the parent to pay.")
        rows = [[p, *parts[p], facts[f"{p}_total_ms"], last[p]["ptes_copied"],
                 last[p]["tlb_flush_all"]] for p in policies]
        headers = ["policy", "fork (ms)", "exec (ms)", "parent's write faults (ms)", "total (ms)", "PTEs copied",
                   "all-CPU TLB flushes"]
        return self.outcome(params, figure, Table(headers, rows), self._sentences(policies, facts), facts)

    def _sentences(self, policies: list[str], facts: dict[str, Any]) -> list[str]:
        costs = and_list([f"{facts[f'{p}_child_ms']:.1f} ms under {words(p)}" for p in policies])
        out = [f"A parent with a {facts['half']} private heap and a {facts['half']} shared segment forks a child "
               f"that execs at once: fork and exec cost {costs}, for page tables the child never uses."]
        lazy = [p for p in ("lazy", "linux") if p in policies]
        if lazy:
            p = lazy[0]
            extra = ""
            if "shared-pt" in policies:
                extra = (f"; shared page tables also attach the segment's {facts['pt_shared']:,} PTE tables and "
                         f"unshare them at exec, {count(facts['shared-pt_tlb_flush_all'], 'all-CPU TLB flush')}")
            out.append(f"Skipping the segment is all lazy copy saves: {words(p)} still copies the heap's "
                       f"{facts[f'{p}_ptes_copied']:,} PTEs, which exec frees unused{extra}.")
        p = "linux" if "linux" in policies else policies[0]
        out.append(f"Then the parent pays {facts[f'{p}_rewrite_faults']:,} write faults "
                   f"({facts[f'{p}_rewrite_ms']:.1f} ms) to make its own heap writable again, because fork "
                   f"write-protected it for a child that never wrote: {facts[f'{p}_rewrite_pct']:.0f}% of the "
                   f"total under {words(p)}.")
        return out
