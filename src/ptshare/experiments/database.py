"""database: a postmaster, its shared buffer pool and backends that come and go.

Two parts.  Churn: backends fork from the postmaster, run zipf-distributed transactions over the
pool, and the oldest group disconnects after every round while a new group connects -- page-table
memory over time, faults and estimated time per transaction, per policy.  And a configuration like
IBM's 2006 OLTP run of shared page tables (a 4-way x86_64 machine with 64 GB, "over 14 GB" of page
tables freed): a large pool on a 64 GiB machine, agents that have each read all of it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import UsageError
from ..scenario import Machine, RunResult, Scenario
from ..scenario.model import ZIPF_S_MAX
from .base import (
    LABELS,
    WORDS,
    Experiment,
    Figure,
    Outcome,
    Panel,
    RunSpec,
    Series,
    Table,
    and_list,
    count,
    crossing,
    gib_bytes,
    gib_text,
    need_policies,
    need_positive,
    sig,
)

IBM_FREED_GB = 14.0  # "over 14 GB" of page tables freed (x86_64, 4 KiB pages)


def churn_scenario(p: dict[str, Any]) -> Scenario:
    size = gib_bytes(p["pool_gib"])
    groups, m = p["groups"], p["group_size"]
    sc = Scenario("database-churn", f"a postmaster loads a {gib_text(p['pool_gib'])} buffer pool; {groups * m} "
                  f"backends in {groups} groups run zipf transactions, the oldest group is replaced every round",
                  Machine(aslr_bits=0))
    sc.object("shared_buffers", "shmem", size)
    sc.step("spawn", pid="postmaster")
    sc.step("mmap", pid="postmaster", vma="buffers", object="shared_buffers", shared=True, align="2MiB")
    sc.step("touch", pid="postmaster", vma="buffers", access="write")
    sc.step("mmap", pid="postmaster", vma="heap", size=p["heap_mib"] << 20)
    sc.step("touch", pid="postmaster", vma="heap", access="write")
    live = list(range(groups))
    for g in live:
        sc.step("fork", pid="postmaster", child=f"g{g}_{{i}}", repeat=m)
    for r in range(p["rounds"]):
        for g in live:
            sc.step("touch", pid=f"g{g}_{{i}}", vma="buffers", pattern="zipf", zipf_s=p["zipf_s"],
                    count=p["txn_per_round"] * p["pages_per_txn"], seed=f"{{i}}{r:03d}{g:04d}", repeat=m)
        old, new = live.pop(0), groups + r
        sc.step("exit", pid=f"g{old}_{{i}}", repeat=m)
        sc.step("fork", pid="postmaster", child=f"g{new}_{{i}}", repeat=m)
        live.append(new)
    return sc


def ibm_scenario(pool_gib: float, memory_gib: float, agents: int) -> Scenario:
    sc = Scenario(f"database-oltp-{agents}", f"a {gib_text(pool_gib)} buffer pool on a {gib_text(memory_gib)} "
                  f"machine; {agents} agents forked from the server, each has read all of the pool",
                  Machine(memory=gib_bytes(memory_gib), aslr_bits=0))
    sc.object("bufferpool", "shmem", gib_bytes(pool_gib))
    sc.step("spawn", pid="server")
    sc.step("mmap", pid="server", vma="pool", object="bufferpool", shared=True, align="2MiB")
    sc.step("touch", pid="server", vma="pool", access="write")
    sc.step("fork", pid="server", child="agent{i}", repeat=agents)
    sc.step("touch", pid="agent{i}", vma="pool", repeat=agents)
    return sc


class Database(Experiment):
    name = "database"
    title = "A database: shared buffers, many backends, connection churn"
    question = "What do page tables cost a database with many backends, and what does sharing them free?"
    revision = 2  # measure() keeps the all-CPU flushes
    defaults: ClassVar[dict[str, Any]] = {
        "pool_gib": 2.0, "groups": 4, "group_size": 16, "rounds": 8, "txn_per_round": 4, "pages_per_txn": 400,
        "zipf_s": 1.1, "heap_mib": 16, "policies": ["eager", "lazy", "linux", "shared-pt"],
        "ibm_pool_gib": 40.0, "ibm_memory_gib": 64.0, "ibm_agents": [25, 50, 100, 150, 200],
        "ibm_policies": ["linux", "shared-pt"]}
    quick: ClassVar[dict[str, Any]] = {
        "pool_gib": 0.25, "groups": 2, "group_size": 4, "rounds": 3, "txn_per_round": 2, "pages_per_txn": 100,
        "ibm_pool_gib": 1.0, "ibm_memory_gib": 4.0, "ibm_agents": [4, 8]}

    def check(self, params: dict[str, Any]) -> None:
        need_positive(params, "pool_gib", "groups", "group_size", "rounds", "txn_per_round", "pages_per_txn",
                      "zipf_s", "heap_mib", "ibm_pool_gib", "ibm_memory_gib", "ibm_agents")
        need_policies(params, "policies", "ibm_policies")
        if params["zipf_s"] > ZIPF_S_MAX:
            raise UsageError(f"zipf_s must be at most {ZIPF_S_MAX}, as a scenario's zipf_s (got {params['zipf_s']:g})")
        if params["ibm_policies"] != ["linux", "shared-pt"]:
            raise UsageError("ibm_policies must be linux,shared-pt: the IBM figure is what shared-pt frees")
        if sorted(set(params["ibm_agents"])) != params["ibm_agents"]:
            raise UsageError("ibm_agents must be increasing numbers of agents")

    def plan(self, params: dict[str, Any]) -> list[RunSpec]:
        churn = churn_scenario(params)
        point = {"transactions_per_touch": params["group_size"] * params["txn_per_round"]}
        specs = [RunSpec(f"churn:{p}", churn, p, point) for p in params["policies"]]
        for n in params["ibm_agents"]:
            sc = ibm_scenario(params["ibm_pool_gib"], params["ibm_memory_gib"], n)
            specs += [RunSpec(f"oltp:{p}@{n}", sc, p, {"agents": n}) for p in params["ibm_policies"]]
        return specs

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        if spec.label.startswith("oltp:"):
            final = result.final.system
            return {"pagetables_kb": final["pagetables_kb"], "memory_used_kb": final["memory_used_kb"],
                    "faults": final["faults"]}
        first = next(i for i, s in enumerate(result.steps) if s.op == "fork")
        out: dict[str, Any] = {"transactions": 0, "txn_faults": 0, "txn_ns": 0.0, "fork_ns": 0.0, "exit_ns": 0.0,
                               "series_txns": [0], "series_pt_kb": [result.steps[first - 1].system["pagetables_kb"]],
                               "pt_unshared": result.final.system["pt_unshared"],
                               "tlb_flush_all": result.final.system["tlb_flush_all"]}
        for step in result.steps[first:]:
            if step.op == "touch":
                out["transactions"] += spec.params["transactions_per_touch"]
                out["txn_faults"] += step.events.get("fault", 0)
                out["txn_ns"] += step.est_ns
            else:
                out[f"{step.op}_ns"] += step.est_ns
            out["series_txns"].append(out["transactions"])
            out["series_pt_kb"].append(step.system["pagetables_kb"])
        return out

    def analyse(self, params: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> Outcome:
        policies = params["policies"]
        churn = {p: metrics[f"churn:{p}"] for p in policies}
        names = [LABELS.get(p, p) for p in policies]
        facts: dict[str, Any] = {}
        for p, m in churn.items():
            facts[f"{p}_peak_mib"] = max(m["series_pt_kb"]) / 1024
            facts[f"{p}_faults_per_txn"] = m["txn_faults"] / m["transactions"]
            facts[f"{p}_us_per_txn"] = (m["txn_ns"] + m["fork_ns"] + m["exit_ns"]) / m["transactions"] / 1e3
            facts[f"{p}_exit_pct"] = 100 * m["exit_ns"] / (m["txn_ns"] + m["fork_ns"] + m["exit_ns"])
            facts[f"{p}_unshared"] = m["pt_unshared"]
            facts[f"{p}_flushes_all"] = m["tlb_flush_all"]
        facts["cheapest"] = min(policies, key=lambda p: facts[f"{p}_us_per_txn"])
        agents = params["ibm_agents"]
        freed = [(metrics[f"oltp:linux@{n}"]["pagetables_kb"] - metrics[f"oltp:shared-pt@{n}"]["pagetables_kb"])
                 * 1024 / 1e9 for n in agents]
        facts["ibm_freed_gb"] = freed[-1]
        facts["ibm_linux_gb"] = metrics[f"oltp:linux@{agents[-1]}"]["pagetables_kb"] * 1024 / 1e9
        facts["ibm_agents_for_14gb"] = crossing(agents, freed, [IBM_FREED_GB] * len(agents))
        if freed[0] > IBM_FREED_GB:
            facts["ibm_agents_for_14gb"] = agents[0]
        panels = [
            Panel("page-table memory under connection churn", "transactions completed", "PageTables (MiB, log scale)",
                  [Series(n, churn[p]["series_txns"], [kb / 1024 for kb in churn[p]["series_pt_kb"]])
                   for n, p in zip(names, policies, strict=True)], logy=True),
            Panel("faults per transaction", "", "faults", [Series("faults per transaction", policies,
                  [facts[f"{p}_faults_per_txn"] for p in policies], "bar")]),
            Panel("estimated time per transaction, forks and exits included", "", "µs",
                  [Series("µs per transaction", policies, [facts[f"{p}_us_per_txn"] for p in policies], "bar")]),
            Panel(f"IBM-2006-like: {gib_text(params['ibm_pool_gib'])} pool, {gib_text(params['ibm_memory_gib'])} "
                  "machine", "agents", "page tables (GB)",
                  [Series("Linux 6.18", agents, [metrics[f"oltp:linux@{n}"]["pagetables_kb"] * 1024 / 1e9
                                                 for n in agents]),
                   Series("shared page tables (2006)", agents,
                          [metrics[f"oltp:shared-pt@{n}"]["pagetables_kb"] * 1024 / 1e9 for n in agents]),
                   Series("freed by sharing", agents, freed, "dashed")],
                  hlines=[("IBM 2006: over 14 GB freed", IBM_FREED_GB)] if facts["ibm_linux_gb"] > 1 else []),
        ]
        figure = Figure(self.name, panels, "Churn: backends fork from the postmaster, read zipf samples of the "
                        "buffer pool, and the oldest group is replaced after every round.  Right: the IBM-like run.")
        rows = [[p, facts[f"{p}_peak_mib"], facts[f"{p}_faults_per_txn"], facts[f"{p}_us_per_txn"]]
                for p in policies]
        table = Table(["policy", "peak PageTables (MiB)", "faults per transaction", "est. µs per transaction"], rows)
        return self.outcome(params, figure, table, self._sentences(params, facts), facts,
                            [f"IBM-like run, {n:,} agents: {f:,.2f} GB freed"
                             for n, f in zip(agents, freed, strict=True)])

    def _sentences(self, params: dict[str, Any], facts: dict[str, Any]) -> list[str]:
        policies = params["policies"]
        n = params["groups"] * params["group_size"]
        peaks = and_list([f"{sig(facts[f'{p}_peak_mib'])} MiB under {WORDS.get(p, p)}" for p in policies])
        per = and_list([f"{sig(facts[f'{p}_faults_per_txn'])} faults and {sig(facts[f'{p}_us_per_txn'])} µs under "
                        f"{WORDS.get(p, p)}" for p in policies])
        unshare = ""
        if "shared-pt" in policies and facts["shared-pt_unshared"]:
            unshare = (f" (shared page tables spend {facts['shared-pt_exit_pct']:,.0f}% of their time in exits, which "
                       f"unshared {count(facts['shared-pt_unshared'], 'table')} with "
                       f"{count(facts['shared-pt_flushes_all'], 'all-CPU TLB flush')})")
        agents, pool = params["ibm_agents"], gib_text(params["ibm_pool_gib"])
        at14 = facts["ibm_agents_for_14gb"]
        reach = (f"the saving passes 14 GB at about {at14:,.0f} agents" if at14 is not None
                 else f"the saving stays under 14 GB up to {agents[-1]:,} agents")
        return [
            f"With {n} backends over a {gib_text(params['pool_gib'])} buffer pool, {params['group_size']} of them "
            f"replaced after every round, page tables peak at {peaks}.",
            f"Per transaction of {params['pages_per_txn']} zipf page reads, the churn's forks and exits included: "
            f"{per}; cheapest under {WORDS.get(facts['cheapest'], facts['cheapest'])}{unshare}.",
            f"In an IBM-2006-like configuration ({pool} buffer pool on a {gib_text(params['ibm_memory_gib'])} "
            f"machine, every agent having read all of it), shared page tables free {sig(facts['ibm_freed_gb'])} GB "
            f"of the {sig(facts['ibm_linux_gb'])} GB of page tables with {agents[-1]:,} agents (IBM reported over "
            f"14 GB); {reach}.",
        ]
