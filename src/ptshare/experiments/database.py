"""database: a postmaster, its shared buffer pool and backends that come and go.

Two parts.  Churn: backends fork from the postmaster, run zipf-distributed transactions over the
pool, and the oldest group disconnects after every round while a new group connects -- page-table
memory over time, faults and estimated time per transaction, per policy.  And a configuration like
IBM's 2006 OLTP run of shared page tables (a 4-way x86_64 machine with 64 GB, "over 14 GB" of page
tables freed): a large pool on a 64 GiB machine, agents that have each read all of it.

And the steady state, with the translation model on: N backends, forked and warmed, each run
transactions of zipf page reads on the machine's CPUs in turn; what each policy's accesses cost
once page-table lines compete with data for the caches, beside McCracken's 3% (2005) and IBM's
+25% (2006) throughput figures.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import UsageError
from ..scenario import Machine, RunResult, Scenario
from ..scenario.model import ZIPF_S_MAX
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
    crossing,
    gib_bytes,
    gib_text,
    label,
    need_policies,
    need_positive,
    sig,
    words,
)

IBM_FREED_GB = 14.0  # "over 14 GB" of page tables freed (x86_64, 4 KiB pages)
MCCRACKEN_GAIN_PCT = 3.0  # database benchmark throughput with shared page tables (McCracken, 2005)
IBM_GAIN_PCT = 25.0  # OLTP throughput with shared page tables, many more agents (IBM, 2006)


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


def steady_scenario(p: dict[str, Any], backends: int) -> Scenario:
    """N backends over the pool, translation modelled: a warming round, then the same reads measured."""
    size = gib_bytes(p["steady_pool_gib"])
    count = p["txn_per_round"] * p["pages_per_txn"]
    sc = Scenario(f"database-steady-{backends}", f"{backends} backends over a {gib_text(p['steady_pool_gib'])} "
                  f"buffer pool, zipf transactions in turn on the CPUs, translation modelled",
                  Machine(aslr_bits=0, translation=True))
    sc.object("shared_buffers", "shmem", size)
    sc.step("spawn", pid="postmaster")
    sc.step("mmap", pid="postmaster", vma="buffers", object="shared_buffers", shared=True, align="2MiB")
    sc.step("touch", pid="postmaster", vma="buffers", access="write")
    sc.step("fork", pid="postmaster", child="be{i}", repeat=backends)
    for _ in range(2):  # the first round maps the backend's working set and warms the caches; the second,
        # the same reads again, is measured: a backend in its steady state, which faults no more
        sc.step("touch", pid="be{i}", vma="buffers", pattern="zipf", zipf_s=p["zipf_s"], count=count,
                seed="{i}", repeat=backends)
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
    revision = 3  # the steady-state runs
    defaults: ClassVar[dict[str, Any]] = {
        "pool_gib": 2.0, "groups": 4, "group_size": 16, "rounds": 8, "txn_per_round": 4, "pages_per_txn": 400,
        "zipf_s": 1.1, "heap_mib": 16, "policies": ["eager", "lazy", "linux", "shared-pt"],
        "ibm_pool_gib": 40.0, "ibm_memory_gib": 64.0, "ibm_agents": [25, 50, 100, 150, 200],
        "ibm_policies": ["linux", "shared-pt"], "steady_pool_gib": 2.0, "steady_backends": [4, 16, 64, 256]}
    quick: ClassVar[dict[str, Any]] = {
        "pool_gib": 0.25, "groups": 2, "group_size": 4, "rounds": 3, "txn_per_round": 2, "pages_per_txn": 100,
        "ibm_pool_gib": 1.0, "ibm_memory_gib": 4.0, "ibm_agents": [4, 8], "steady_pool_gib": 0.25,
        "steady_backends": [2, 8]}

    def check(self, params: dict[str, Any]) -> None:
        need_positive(params, "pool_gib", "groups", "group_size", "rounds", "txn_per_round", "pages_per_txn",
                      "zipf_s", "heap_mib", "ibm_pool_gib", "ibm_memory_gib", "ibm_agents", "steady_pool_gib",
                      "steady_backends")
        need_policies(params, "policies", "ibm_policies")
        if params["zipf_s"] > ZIPF_S_MAX:
            raise UsageError(f"zipf_s must be at most {ZIPF_S_MAX}, as a scenario's zipf_s (got {params['zipf_s']:g})")
        if params["ibm_policies"] != ["linux", "shared-pt"]:
            raise UsageError("ibm_policies must be linux,shared-pt: the IBM figure is what shared-pt frees")
        if sorted(set(params["ibm_agents"])) != params["ibm_agents"]:
            raise UsageError("ibm_agents must be increasing numbers of agents")
        if sorted(set(params["steady_backends"])) != params["steady_backends"]:
            raise UsageError("steady_backends must be increasing numbers of backends")

    def plan(self, params: dict[str, Any]) -> list[RunSpec]:
        churn = churn_scenario(params)
        point = {"transactions_per_touch": params["group_size"] * params["txn_per_round"]}
        specs = [RunSpec(f"churn:{p}", churn, p, point) for p in params["policies"]]
        for n in params["ibm_agents"]:
            sc = ibm_scenario(params["ibm_pool_gib"], params["ibm_memory_gib"], n)
            specs += [RunSpec(f"oltp:{p}@{n}", sc, p, {"agents": n}) for p in params["ibm_policies"]]
        for n in params["steady_backends"]:
            sc = steady_scenario(params, n)
            point = {"backends": n, "transactions_per_touch": params["txn_per_round"]}
            specs += [RunSpec(f"steady:{p}@{n}", sc, p, point) for p in params["ibm_policies"]]
        return specs

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        if spec.label.startswith("steady:"):
            last = result.steps[-1]  # the measured round
            return {"transactions": spec.params["backends"] * spec.params["transactions_per_touch"],
                    "kernel_ns": last.est_ns, **last.translation}
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
        names = [label(p) for p in policies]
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
        steady = self._steady(params, metrics, facts)
        panels += steady
        figure = Figure(self.name, panels, "Churn: backends fork from the postmaster, read zipf samples of the "
                        "buffer pool, and the oldest group is replaced after every round.  Then the IBM-like run"
                        + (", and the steady state with translation modelled." if steady else "."))
        rows = [[p, facts[f"{p}_peak_mib"], facts[f"{p}_faults_per_txn"], facts[f"{p}_us_per_txn"]]
                for p in policies]
        table = Table(["policy", "peak PageTables (MiB)", "faults per transaction", "est. µs per transaction"], rows)
        notes = [f"IBM-like run, {n:,} agents: {f:,.2f} GB freed" for n, f in zip(agents, freed, strict=True)]
        notes += [f"steady state, {n:,} backends: shared page tables {facts[f'steady_gain_pct@{n}']:+.1f}% "
                  "transactions per CPU-second" for n in params["steady_backends"]]
        return self.outcome(params, figure, table, self._sentences(params, facts), facts, notes)

    def _steady(self, params: dict[str, Any], metrics: dict[str, dict[str, Any]],
                facts: dict[str, Any]) -> list[Panel]:
        """The steady-state view: time per transaction with translation, and where walks are served.

        Assumptions, stated in the sentences: a transaction is ``pages_per_txn`` zipf page reads and
        nothing else, so its CPU time is what the model prices for those accesses (data and
        translation), and throughput per CPU is its inverse.  The faults a backend still takes on
        pages it had not read before are left out: they are the third claim, which the churn view
        prices, not translation.
        """
        ns = params["steady_backends"]
        if not ns:
            return []
        per_txn: dict[str, list[float]] = {}
        walks: dict[str, tuple[list[float], list[float]]] = {}
        for p in params["ibm_policies"]:
            runs = [metrics[f"steady:{p}@{n}"] for n in ns]
            per_txn[p] = [m["est_ns"] / m["transactions"] / 1e3 for m in runs]
            walks[p] = ([m["walk_refs_llc"] / m["transactions"] for m in runs],
                        [m["walk_refs_llc_miss"] / m["transactions"] for m in runs])
        for i, n in enumerate(ns):
            facts[f"steady_gain_pct@{n}"] = 100 * (per_txn["linux"][i] / per_txn["shared-pt"][i] - 1)
            facts[f"steady_us_per_txn@{n}"] = {p: per_txn[p][i] for p in per_txn}
        series = []
        for p in params["ibm_policies"]:
            name = label(p)
            series += [Series(f"{name}: LLC", ns, walks[p][0]), Series(f"{name}: DRAM", ns, walks[p][1], "dashed")]
        gains = [facts[f"steady_gain_pct@{n}"] for n in ns]
        return [
            Panel("steady state: walk references per transaction, by where served", "backends", "references",
                  series),
            Panel("steady state: throughput gain of shared page tables", "backends", "% transactions per CPU-s",
                  [Series("model", ns, gains)],
                  hlines=[("McCracken 2005: 3%", MCCRACKEN_GAIN_PCT), ("IBM 2006: +25%", IBM_GAIN_PCT)]),
        ]

    def _sentences(self, params: dict[str, Any], facts: dict[str, Any]) -> list[str]:
        policies = params["policies"]
        n = params["groups"] * params["group_size"]
        peaks = and_list([f"{sig(facts[f'{p}_peak_mib'])} MiB under {words(p)}" for p in policies])
        per = and_list([f"{sig(facts[f'{p}_faults_per_txn'])} faults and {sig(facts[f'{p}_us_per_txn'])} µs under "
                        f"{words(p)}" for p in policies])
        unshare = ""
        if "shared-pt" in policies and facts["shared-pt_unshared"]:
            unshare = (f" (shared page tables spend {facts['shared-pt_exit_pct']:,.0f}% of their time in exits, which "
                       f"unshared {count(facts['shared-pt_unshared'], 'table')} with "
                       f"{count(facts['shared-pt_flushes_all'], 'all-CPU TLB flush')})")
        agents, pool = params["ibm_agents"], gib_text(params["ibm_pool_gib"])
        at14 = facts["ibm_agents_for_14gb"]
        reach = (f"the saving passes 14 GB at about {at14:,.0f} agents" if at14 is not None
                 else f"the saving stays under 14 GB up to {agents[-1]:,} agents")
        out = [
            f"With {n} backends over a {gib_text(params['pool_gib'])} buffer pool, {params['group_size']} of them "
            f"replaced after every round, page tables peak at {peaks}.",
            f"Per transaction of {params['pages_per_txn']} zipf page reads, the churn's forks and exits included: "
            f"{per}; cheapest under {words(facts['cheapest'])}{unshare}.",
            f"In an IBM-2006-like configuration ({pool} buffer pool on a {gib_text(params['ibm_memory_gib'])} "
            f"machine, every agent having read all of it), shared page tables free {sig(facts['ibm_freed_gb'])} GB "
            f"of the {sig(facts['ibm_linux_gb'])} GB of page tables with {agents[-1]:,} agents (IBM reported over "
            f"14 GB); {reach}.",
        ]
        ns = params["steady_backends"]
        if ns:
            gains = and_list([f"{facts[f'steady_gain_pct@{b}']:+.1f}% with {b}" for b in ns])
            out.append(
                f"In the steady state, with translation modelled ({gib_text(params['steady_pool_gib'])} pool, "
                f"transactions of {params['pages_per_txn']:,} zipf page reads and nothing else, each backend "
                "repeating a working set it has mapped, so that it no longer faults, TLB entries per process as "
                "PCIDs make them), shared page tables change "
                f"transactions per CPU-second by {gains} backends; McCracken reported 3% (2005) and IBM +25% "
                "(2006, many more agents, a larger pool).  Walks are the same under both; what sharing saves is "
                "page-table lines kept in the LLC instead of DRAM, so the model shows a gain only once the private "
                "tables the backends touch outgrow the LLC.")
        return out
