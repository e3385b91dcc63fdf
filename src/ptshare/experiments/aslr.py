"""aslr: unrelated processes attaching one segment, against address-space randomisation.

McCracken's shared page tables find a partner only at the same virtual address (same ``vm_start``,
``vm_end``, ``pgoff`` and flags), so processes that did not fork from one another share only when
their mmap bases happen to coincide.  hugetlb PMD sharing asks less: the same position inside the
1 GiB window.  Every process here is spawned (its own randomised ``mmap_base``), maps the segment
where the kernel puts it (optionally aligned), and reads all of it.  Where the kernel puts it
depends on the random bases, so each point is run with several seeds: the line is their mean, the
band the least and the most.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import UsageError
from ..scenario import Machine, RunResult, Scenario
from .base import Experiment, Figure, Outcome, Panel, RunSpec, Series, Table, gib_bytes, need_positive

# (label, object kind, alignment, policy)
VARIANTS = (
    ("shared page tables, placed by the kernel", "shmem", None, "shared-pt"),
    ("shared page tables, 2 MiB-aligned", "shmem", "2MiB", "shared-pt"),
    ("shared page tables, 1 GiB-aligned", "shmem", "1GiB", "shared-pt"),
    ("hugetlb PMD sharing (Linux 6.18), placed by the kernel", "hugetlb", None, "linux"),
    ("hugetlb PMD sharing (Linux 6.18), 1 GiB-aligned", "hugetlb", "1GiB", "linux"),
)
LINUX_BITS = 28  # x86-64 mmap randomisation by default (vm.mmap_rnd_bits)


def scenario(kind: str, align: str | None, size: int, bits: int, processes: int, seed: int) -> Scenario:
    where = f"aligned to {align}" if align else "where the kernel puts it"
    sc = Scenario(f"aslr-{kind}-{align or 'kernel'}-{bits}bits",
                  f"{processes} spawned processes map one {kind} segment {where} and read it; "
                  f"{bits} bits of mmap randomisation", Machine(aslr_bits=bits, seed=seed))
    sc.object("segment", kind, size)
    sc.step("spawn", pid="p{i}", repeat=processes)
    extra = {"align": align} if align else {}
    sc.step("mmap", pid="p{i}", vma="seg", object="segment", shared=True, repeat=processes, **extra)
    sc.step("touch", pid="p0", vma="seg", access="write")
    sc.step("touch", pid="p{i}", vma="seg", repeat=processes)
    return sc


def _rate(values: list[float]) -> str:
    """``62%`` for one seed, ``62% (50-75%)`` for several: the mean, and the least and the most."""
    mean = f"{sum(values) / len(values):.0f}%"
    return mean if len(values) == 1 else f"{mean} ({min(values):.0f}-{max(values):.0f}%)"


def below_half(bits: list[int], rates: list[float]) -> int | None:
    """The fewest bits at which fewer than half the processes share; None if never."""
    return next((b for b, r in zip(bits, rates, strict=True) if r < 50), None)


class Aslr(Experiment):
    name = "aslr"
    title = "Sharing between unrelated processes against address-space randomisation"
    question = "Do processes that did not fork from one another still share page tables once mmap is randomised?"
    defaults: ClassVar[dict[str, Any]] = {
        "bits": [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28], "processes": 64, "shmem_mib": 64,
        "hugetlb_gib": 4.0, "seeds": [1, 2, 3, 4, 5]}
    quick: ClassVar[dict[str, Any]] = {"bits": [0, 8, 16, 28], "processes": 12, "hugetlb_gib": 2.0, "seeds": [1, 2]}

    def check(self, params: dict[str, Any]) -> None:
        need_positive(params, "shmem_mib", "hugetlb_gib")
        bits = params["bits"]
        if not bits or sorted(set(bits)) != bits or bits[0] < 0 or bits[-1] > 32:
            raise UsageError("bits must be increasing numbers of bits from 0 to 32")
        seeds = params["seeds"]
        if not seeds or len(set(seeds)) != len(seeds):
            raise UsageError("seeds must be one or more different seeds")
        if params["processes"] < 2:
            raise UsageError("processes must be at least 2 (sharing needs a partner)")
        if params["hugetlb_gib"] < 2:
            raise UsageError("hugetlb_gib must be at least 2: a segment placed anywhere must cover a whole 1 GiB "
                             "window to share a PMD table")

    def plan(self, params: dict[str, Any]) -> list[RunSpec]:
        specs = []
        for n, (_, kind, align, policy) in enumerate(VARIANTS):
            size = params["shmem_mib"] << 20 if kind == "shmem" else gib_bytes(params["hugetlb_gib"])
            for bits in params["bits"]:
                for seed in params["seeds"]:
                    sc = scenario(kind, align, size, bits, params["processes"], seed)
                    specs.append(RunSpec(f"v{n}@{bits}s{seed}", sc, policy, {"variant": n, "bits": bits, "seed": seed}))
        return specs

    def measure(self, spec: RunSpec, result: RunResult) -> dict[str, Any]:
        procs = result.final.processes
        others = [v for name, v in procs.items() if name != "p0"]
        return {"sharing": sum(1 for v in others if v["pt_shared_kb"] > 0), "others": len(others),
                "pagetables_kb": result.final.system["pagetables_kb"], "faults": result.final.system["faults"]}

    def analyse(self, params: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> Outcome:
        bits, seeds = params["bits"], params["seeds"]
        runs = [[[100 * metrics[f"v{n}@{b}s{s}"]["sharing"] / metrics[f"v{n}@{b}s{s}"]["others"] for s in seeds]
                 for b in bits] for n in range(len(VARIANTS))]
        rates = [[sum(r) / len(r) for r in variant] for variant in runs]
        facts: dict[str, Any] = {"processes": params["processes"], "seeds": len(seeds)}
        for n, r in enumerate(rates):
            facts[f"v{n}_first"], facts[f"v{n}_last"], facts[f"v{n}_min"] = r[0], r[-1], min(r)
            facts[f"v{n}_last_low"], facts[f"v{n}_last_high"] = min(runs[n][-1]), max(runs[n][-1])
            facts[f"v{n}_below_half"] = below_half(bits, r)
        panel = Panel(f"{params['processes']} unrelated processes attach one segment",
                      "bits of mmap randomisation", "processes sharing with another (%)",
                      [Series(v[0], bits, r, low=[min(x) for x in runs[n]] if len(seeds) > 1 else None,
                              high=[max(x) for x in runs[n]] if len(seeds) > 1 else None)
                       for n, (v, r) in enumerate(zip(VARIANTS, rates, strict=True))],
                      vlines=[("Linux x86-64 default", LINUX_BITS)] if bits[0] <= LINUX_BITS <= bits[-1] else [])
        spread = (f" Each point is the mean of {len(seeds)} seeds of the random bases; the band spans the least and "
                  "the most." if len(seeds) > 1 else "")
        figure = Figure(self.name, [panel], "Share rate: the processes after the first that use a page table "
                        f"another process allocated.{spread}")
        rows = [[b, *(_rate(runs[n][i]) for n in range(len(VARIANTS)))] for i, b in enumerate(bits)]
        headers = ["bits", *(v[0] for v in VARIANTS)]
        return self.outcome(params, figure, Table(headers, rows), self._sentences(params, facts), facts)

    def _sentences(self, params: dict[str, Any], facts: dict[str, Any]) -> list[str]:
        bits = params["bits"]

        def fall(n: int) -> str:
            b = facts[f"v{n}_below_half"]
            if b is None:
                return f"more than half share up to {bits[-1]} bits"
            return f"fewer than half share from {b} bits on"

        spread = (f" (the mean of {facts['seeds']} seeds: from {facts['v3_last_low']:,.0f}% to "
                  f"{facts['v3_last_high']:,.0f}%)" if facts["seeds"] > 1 else "")
        low = facts["v4_min"]
        aligned = f"{low:,.0f}%" if low == 100 else f"at least {low:,.0f}%"
        return [
            f"Shared page tables need the same virtual address in every process: placed by the kernel, "
            f"{facts['v0_first']:,.0f}% of {facts['processes']:,} unrelated processes share at {bits[0]} bits of "
            f"randomisation and {facts['v0_last']:,.0f}% at {bits[-1]}; {fall(0)}.",
            f"Aligning the segment trades randomisation for sharing: 2 MiB-aligned, {fall(1)}; 1 GiB-aligned, "
            f"{fall(2)} ({facts['v2_last']:,.0f}% at {bits[-1]} bits).",
            f"hugetlb PMD sharing only needs the same position inside the 1 GiB window: placed by the kernel, "
            f"{facts['v3_last']:,.0f}% share at {bits[-1]} bits{spread}; 1 GiB-aligned, {aligned} at every number "
            "of bits.",
        ]
