"""CPU tables: the sizes of the structures that translate and cache, and what a reference costs.

Like the page-table geometry in :mod:`ptshare.arch`, a CPU is a table of numbers, so another part
is a new table, not new code.  Sizes come from CPUID and the vendors' optimisation guides (see
docs/model.md for sources); latencies are defaults for a part of that family and are replaced by
``ptshare calibrate --translation`` with what this machine measures.

Every structure is modelled as fully associative LRU (see :mod:`ptshare.translation.lru`): the
set-associativity below is recorded, not simulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

LINE = 64  # bytes in a cache line; a line holds 8 page-table entries


@dataclass(frozen=True)
class Latency:
    """Nanoseconds: a reference served by each level, and the translation overheads.

    ``tlb_l2`` is what an L1 dTLB miss that hits the L2 TLB adds; ``walk`` is the fixed part of a
    page walk (the walker's start, and in a guest the nested translation of the table addresses,
    which this model does not simulate), on top of the references the walk makes.
    """

    l1: float = 1.1
    l2: float = 3.8
    llc: float = 13.0
    dram: float = 100.0
    tlb_l2: float = 2.0
    walk: float = 10.0

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("l1", "l2", "llc", "dram", "tlb_l2", "walk")}


@dataclass(frozen=True)
class Cpu:
    """One CPU model.  TLB sizes in entries, caches in bytes; ``asids`` is how many address
    spaces a CPU keeps tagged entries for (Linux's ``TLB_NR_DYN_ASIDS`` with PCID; 1 without)."""

    name: str
    summary: str
    tlb_l1: int  # L1 dTLB entries (all page sizes)
    tlb_l2: int  # L2 TLB entries (4 KiB and 2 MiB)
    tlb_l2_ways: str
    pwc: dict[str, int]  # paging-structure caches: entries per upper level ("pml4e", "pdpte", "pde")
    pwc_note: str
    l1d: int
    l2: int
    llc: int
    asids: int = 6
    latency: Latency = field(default_factory=Latency)
    host_page: int = 0  # in a guest with nested paging: the page size backing guest memory; 0: bare metal

    def lines(self, nbytes: int) -> int:
        return nbytes // LINE

    def with_latency(self, **ns: float) -> Cpu:
        return replace(self, latency=replace(self.latency, **ns))


ZEN4 = Cpu(
    name="zen4",
    summary="AMD Zen 4 (EPYC Genoa; this project's machines, by CPUID)",
    tlb_l1=72, tlb_l2=3072, tlb_l2_ways="8-way 4 KiB, 6-way 2 MiB",
    # The L2 TLB also holds page-directory entries: the PDE cache is given its size (an upper
    # bound -- it competes with leaf entries there).  PML4E/PDPTE are cached by the walker.
    pwc={"pml4e": 64, "pdpte": 64, "pde": 3072},
    pwc_note="PDEs are held in the L2 TLB",
    l1d=32 << 10, l2=1 << 20, llc=32 << 20,
    latency=Latency(l1=1.1, l2=3.8, llc=13.0, dram=100.0, tlb_l2=2.0, walk=10.0),
)

ZEN3 = Cpu(
    name="zen3",
    summary="AMD Zen 3 (EPYC Milan)",
    tlb_l1=64, tlb_l2=2048, tlb_l2_ways="8-way 4 KiB, 6-way 2 MiB",
    pwc={"pml4e": 64, "pdpte": 64, "pde": 2048},
    pwc_note="PDEs are held in the L2 TLB",
    l1d=32 << 10, l2=512 << 10, llc=32 << 20,
    latency=Latency(l1=1.1, l2=3.3, llc=12.5, dram=100.0, tlb_l2=2.0, walk=10.0),
)

GOLDEN_COVE = Cpu(
    name="golden-cove",
    summary="Intel Golden Cove (Xeon Sapphire Rapids), separate paging-structure caches",
    tlb_l1=64, tlb_l2=2048, tlb_l2_ways="16-way, 4 KiB and 2 MiB",
    pwc={"pml4e": 4, "pdpte": 4, "pde": 32},
    pwc_note="PML4, PDPTE and PDE caches separate from the TLBs (Intel SDM vol. 3A 4.10.3)",
    l1d=48 << 10, l2=2 << 20, llc=60 << 20,
    latency=Latency(l1=1.2, l2=4.5, llc=30.0, dram=110.0, tlb_l2=2.5, walk=10.0),
)

# This project's machines: Zen 4 in a Firecracker guest, whose memory the host backs with 4 KiB
# pages.  TLB entries then map at most 4 KiB (a 2 MiB guest page too), and a walk is
# two-dimensional: each guest table page's and the data page's guest-physical address are
# translated by the host's tables as well.  The L3 is shared with the host's other guests: the
# LLC and the latencies are what `ptshare calibrate --translation` measured here on 2026-12-04
# (the median of five runs: an effective LLC of 2.5, 2.75, 2.75, 3.0 and 4.75 MiB), and
# `ptshare validate --translation` measures them again before it predicts.
ZEN4_GUEST = replace(ZEN4, name="zen4-guest", summary="AMD Zen 4 in a KVM guest, memory backed by 4 KiB host pages; "
                     "LLC and latencies as calibrated on this project's machines", host_page=4096,
                     llc=11 << 18, latency=Latency(l1=1.54, l2=4.67, llc=33.7, dram=172.0, tlb_l2=2.0, walk=21.4))

CPUS: dict[str, Cpu] = {c.name: c for c in (ZEN4, ZEN4_GUEST, ZEN3, GOLDEN_COVE)}
DEFAULT = ZEN4


def get_cpu(name: str) -> Cpu:
    try:
        return CPUS[name]
    except KeyError:
        raise ValueError(f"unknown CPU {name!r}; known: {', '.join(CPUS)}") from None
