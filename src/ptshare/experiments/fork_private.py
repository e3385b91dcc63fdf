"""fork-private: fork of private memory, copied, shared copy-on-write, or copied off the parent's path.

A parent writes a private heap and forks; then the child writes part of the heap, then the parent
does.  Linux copies every PTE table at fork; on-demand fork (ODF) and the copy-on-write page-table
RFC share them copy-on-write and copy one at the first change in its 2 MiB span; async-fork copies
them at fork, but off the parent's path.  What each saves at fork, and what it pays later.
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
    gib_bytes,
    gib_text,
    label,
    need_linux,
    need_policies,
    need_positive,
    sig,
    step_index,
    words,
)

PUBLISHED_ODF_SPEEDUP_1GB = 65.0  # Zhao et al., EuroSys 2021: fork of a process with 1 GB of memory
PUBLISHED_RFC_PAGETABLES_KB = {"linux": 2076, "cow-pt": 92}  # RFC v1 cover letter: PageTables growth at a 1 GB fork
PUBLISHED_RFC_CHILD_VMPTE_KB = {"linux": 2096, "cow-pt": 44}  # RFC v4 cover letter: the child's VmPTE after it
COPIERS = ("odf", "cow-pt", "async-fork")


def scenario(gib: float, fraction: float) -> Scenario:
    size = gib_bytes(gib)
    writes = max(1, int(size // 4096 * fraction))
    sc = Scenario(f"fork-private-{gib_text(gib).replace(' ', '')}",
                  f"a parent writes a {gib_text(gib)} private heap and forks; the child writes {fraction:.0%} of "
                  f"its pages at random, then the parent does", Machine(aslr_bits=0))
    sc.step("spawn", pid="parent")
    sc.step("mmap", pid="parent", vma="heap", size=size, align="2MiB")
    sc.step("touch", pid="parent", vma="heap", access="write")
    sc.step("fork", pid="parent", child="child")
    sc.step("touch", pid="child", vma="heap", access="write", pattern="random", count=writes, seed=1)
    sc.step("touch", pid="parent", vma="heap", access="write", pattern="random", count=writes, seed=2)
    sc.step("exit", pid="child")
    return sc


class ForkPrivate(Experiment):
    name = "fork-private"
    title = "Fork of private memory: copied, shared copy-on-write, or copied in the background"
    question = ("What do on-demand fork, copy-on-write page tables and async-fork save at fork, and what do "
                "they pay when the child and the parent write afterwards?")
    defaults: ClassVar[dict[str, Any]] = {
        "sizes_gib": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], "write_fraction": 0.01,
        "policies": ["linux", "odf", "cow-pt", "async-fork"]}
    quick: ClassVar[dict[str, Any]] = {"sizes_gib": [0.0625, 0.125]}

    def check(self, params: dict[str, Any]) -> None:
        need_positive(params, "sizes_gib", "write_fraction")
        need_policies(params, "policies")
        need_linux(params, self.name)
        if sorted(set(params["sizes_gib"])) != params["sizes_gib"] or gib_bytes(params["sizes_gib"][0]) == 0:
            raise UsageError("sizes_gib must be increasing sizes of at least 2 MiB (0.002)")
        if params["write_fraction"] > 1:
            raise UsageError(f"write_fraction is a fraction of the heap's pages, at most 1 (got "
                             f"{params['write_fraction']!r})")

    def plan(self, params: dict[str, Any]) -> list[RunSpec]:
        return [RunSpec(f"{p}@{s:g}", scenario(s, params["write_fraction"]), p, {"size_gib": s})
                for p in params["policies"] for s in params["sizes_gib"]]

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        i = step_index(result, "fork")
        fork, before = result.steps[i], result.steps[i - 1]
        child = result.steps[step_index(result, "touch", "child")]
        parent = result.steps[step_index(result, "touch", "parent", 1)]
        return {"fork_ns": fork.est_ns, "background_ns": sum(s.est_ns_background for s in result.steps),
                "fork_pagetables_kb": fork.system["pagetables_kb"] - before.system["pagetables_kb"],
                "child_vmpte_kb": fork.processes["child"]["vmpte_kb"],
                "child_write_ns": child.est_ns, "parent_write_ns": parent.est_ns,
                "tables_copied_later": sum(s.events.get("pt_copied", 0) + s.events.get("pt_copied_sync", 0)
                                           for s in (child, parent))}

    def analyse(self, params: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> Outcome:
        sizes, policies = params["sizes_gib"], params["policies"]
        at = min(sizes, key=lambda s: abs(s - 1.0))  # the published figures are for 1 GB
        m = {p: [metrics[f"{p}@{s:g}"] for s in sizes] for p in policies}
        fork_ms = {p: [x["fork_ns"] / 1e6 for x in m[p]] for p in policies}
        tables_kb = {p: [x["fork_pagetables_kb"] for x in m[p]] for p in policies}
        later_ms = {p: [(x["child_write_ns"] + x["parent_write_ns"]) / 1e6 for x in m[p]] for p in policies}
        facts: dict[str, Any] = {"at": gib_text(at), "top": gib_text(sizes[-1]), "fraction": params["write_fraction"],
                                 "published_odf_speedup": PUBLISHED_ODF_SPEEDUP_1GB,
                                 "published_linux_kb": PUBLISHED_RFC_PAGETABLES_KB["linux"],
                                 "published_cowpt_kb": PUBLISHED_RFC_PAGETABLES_KB["cow-pt"]}
        k = sizes.index(at)
        for p in policies:
            facts[f"{p}_fork_ms"] = fork_ms[p][k]
            facts[f"{p}_speedup"] = fork_ms["linux"][k] / fork_ms[p][k]
            facts[f"{p}_tables_kb"] = tables_kb[p][k]
            facts[f"{p}_child_vmpte_kb"] = m[p][k]["child_vmpte_kb"]
            facts[f"{p}_background_ms"] = m[p][k]["background_ns"] / 1e6
            facts[f"{p}_speedup_top"] = fork_ms["linux"][-1] / fork_ms[p][-1]
            facts[f"{p}_later_extra_ms"] = later_ms[p][-1] - later_ms["linux"][-1]
            facts[f"{p}_tables_copied_later"] = m[p][-1]["tables_copied_later"]
        published = Series(f"ODF paper at 1 GB: {PUBLISHED_ODF_SPEEDUP_1GB:g}x faster than Linux (here)", [at],
                           [fork_ms["linux"][k] / PUBLISHED_ODF_SPEEDUP_1GB], "marker")
        panels = [
            Panel("fork() in the parent", "private heap written by the parent (GiB)",
                  "estimated fork time (ms, log scale)",
                  [*(Series(label(p), sizes, fork_ms[p]) for p in policies), published], logy=True),
            Panel("page tables the fork adds", "private heap written by the parent (GiB)",
                  "PageTables growth at fork (kB, log scale)",
                  [Series(label(p), sizes, tables_kb[p]) for p in policies],
                  logy=True, hlines=[("RFC v1, Linux at 1 GB: 2,076 kB", PUBLISHED_RFC_PAGETABLES_KB["linux"]),
                                     ("RFC v1, COW PTE at 1 GB: 92 kB", PUBLISHED_RFC_PAGETABLES_KB["cow-pt"])]),
            Panel(f"then the child and the parent each write {params['write_fraction']:.0%} of the pages",
                  "private heap written by the parent (GiB)", "estimated time of their writes (ms)",
                  [Series(label(p), sizes, later_ms[p]) for p in policies]),
        ]
        figure = Figure(self.name, panels, "Estimated from the cost model, per policy; the marker: ODF's published "
                        "speed-up applied to the model's Linux fork; horizontal lines: the copy-on-write page-table "
                        "RFC's published PageTables growth at a fork of 1 GB.")
        headers = ["heap", *[f"{p} fork (ms)" for p in policies], *[f"{p} PT at fork (kB)" for p in policies],
                   *[f"{p} writes after (ms)" for p in policies]]
        rows = [[gib_text(s), *[fork_ms[p][i] for p in policies], *[tables_kb[p][i] for p in policies],
                 *[later_ms[p][i] for p in policies]] for i, s in enumerate(sizes)]
        return self.outcome(params, figure, Table(headers, rows), self._sentences(policies, facts), facts)

    def _sentences(self, policies: list[str], facts: dict[str, Any]) -> list[str]:
        at, out = facts["at"], []
        if "odf" in policies:
            out.append(f"At {at} of written private memory, {words('odf')} forks in {sig(facts['odf_fork_ms'])} ms "
                       f"against Linux's {sig(facts['linux_fork_ms'])} ms, {sig(facts['odf_speedup'])} times faster "
                       f"(the paper: {facts['published_odf_speedup']:g} times at 1 GB; here "
                       f"{sig(facts['odf_speedup_top'])} times at {facts['top']}); the fork adds "
                       f"{facts['odf_tables_kb']:,} kB of page tables instead of {facts['linux_tables_kb']:,} kB (the "
                       f"RFC measured {facts['published_cowpt_kb']:,} kB against {facts['published_linux_kb']:,} kB, "
                       f"its test program's other mappings included).")
        if "cow-pt" in policies:
            out.append(f"The RFC's {words('cow-pt')} share the same tables but count every page for the child at "
                       f"fork: {sig(facts['cow-pt_fork_ms'])} ms, {sig(facts['cow-pt_speedup'])} times faster than "
                       f"Linux (its v4 cover letter: a fork of up to 512 MB takes about 10 ms with or without it); "
                       f"here the child's VmPTE counts the tables it shares, {facts['cow-pt_child_vmpte_kb']:,} kB "
                       f"(the v4 cover letter shows {PUBLISHED_RFC_CHILD_VMPTE_KB['cow-pt']} kB for its child).")
        if "async-fork" in policies:
            out.append(f"{words('async-fork').capitalize()} returns in {sig(facts['async-fork_fork_ms'])} ms and "
                       f"copies the tables off the parent's path ({sig(facts['async-fork_background_ms'])} ms), so "
                       f"the fork adds {facts['async-fork_tables_kb']:,} kB as Linux does.")
        later = [p for p in COPIERS if p in policies]
        if later:
            paid = ", ".join(f"{words(p)} {sig(facts[f'{p}_later_extra_ms'])} ms more than Linux "
                             f"({facts[f'{p}_tables_copied_later']:,} tables copied)" for p in later)
            out.append(f"When the child and then the parent each write {facts['fraction']:.0%} of a heap of "
                       f"{facts['top']} at random, the writes cost {paid}.")
        return out
