"""VMA merging as Linux 6.18 does it (mm/vma.c, mm/rmap.c), each case as a small layout.

Every case here was seen on this machine's kernel in /proc/self/maps, and the validation suite's
``merge-*`` and ``mremap-move-*`` scenarios check their consequences (faults, VmPTE, RSS) against
the kernel itself.
"""

from ptshare import System

MiB = 1 << 20
BASE = 0x600000000000


def _layout(s: System, name: str = "p") -> list[tuple[int, int, bool]]:
    """(start, end) in MiB from BASE, and whether the VMA has an anon_vma."""
    return [((v.vm_start - BASE) // MiB, (v.vm_end - BASE) // MiB, v.anon_vma is not None)
            for v in s.task(name).mm.vmas]


def _system() -> System:
    s = System("linux", aslr_bits=0, check=True)
    s.spawn("p")
    return s


def test_mremap_growing_in_place_merges_with_the_mapping_it_reaches():
    for write_lo, write_hi, merged in ((False, False, True), (True, False, True), (False, True, True),
                                       (True, True, False)):  # two anon_vmas of their own never merge
        s = _system()
        lo = s.mmap("p", 4 * MiB, addr=BASE, fixed=True)
        hi = s.mmap("p", 4 * MiB, addr=BASE + 8 * MiB, fixed=True)
        if write_lo:
            s.touch("p", lo, write=True)
        if write_hi:
            s.touch("p", hi, write=True)
        s.mremap("p", lo, 4 * MiB, 8 * MiB)
        assert (len(_layout(s)) == 1) == merged, (write_lo, write_hi)


def test_a_first_write_reuses_a_compatible_neighbours_anon_vma_so_mprotect_merges():
    for order in ("next", "prev"):
        s = _system()
        low_prot, high_prot = ("rwx", "rw") if order == "next" else ("rw", "rwx")
        low = s.mmap("p", 4 * MiB, addr=BASE, fixed=True, prot=low_prot)
        high = s.mmap("p", 4 * MiB, addr=BASE + 4 * MiB, fixed=True, prot=high_prot)
        first, second = (high, low) if order == "next" else (low, high)
        s.touch("p", first, write=True)
        s.touch("p", second, write=True)
        vmas = s.task("p").mm.vmas
        assert vmas[0].anon_vma is vmas[1].anon_vma
        s.mprotect("p", low if low_prot == "rwx" else high, 4 * MiB, "rw")
        assert _layout(s) == [(0, 8, True)]


def test_an_anon_vma_is_not_reused_from_a_fork_child():
    s = _system()
    m = s.mmap("p", 4 * MiB, addr=BASE + 4 * MiB, fixed=True)
    s.touch("p", m, write=True)
    s.fork("p", "c")
    n = s.mmap("c", 4 * MiB, addr=BASE, fixed=True, prot="rwx")
    s.touch("c", n, write=True)
    vmas = s.task("c").mm.vmas
    assert vmas[1].is_fork_child and vmas[0].anon_vma is not vmas[1].anon_vma
    n = s.mmap("p", 4 * MiB, addr=BASE, fixed=True, prot="rwx")  # in the parent it is reused
    s.touch("p", n, write=True)
    vmas = s.task("p").mm.vmas
    assert vmas[0].anon_vma is vmas[1].anon_vma


def test_no_merge_into_a_fork_child_without_an_anon_vma():
    s = _system()
    m = s.mmap("p", 4 * MiB, addr=BASE + 4 * MiB, fixed=True)
    s.touch("p", m, write=True)
    s.fork("p", "c")
    s.mmap("c", 4 * MiB, addr=BASE, fixed=True)  # a new mapping: no anon_vma
    assert _layout(s, "c") == [(0, 4, False), (4, 8, True)]
    s.mmap("c", 4 * MiB, addr=BASE + 8 * MiB, fixed=True, prot="r")
    s.mprotect("c", BASE + 8 * MiB, 4 * MiB, "rw")  # an existing VMA made mergeable
    assert len(_layout(s, "c")) == 3
    s.mprotect("c", m + MiB, MiB, "r")  # a fork child's own halves share its anon_vma: they merge back
    s.mprotect("c", m + MiB, MiB, "rw")
    assert len(_layout(s, "c")) == 3
    s.mmap("p", 4 * MiB, addr=BASE, fixed=True)  # the parent's VMA is no fork child
    assert _layout(s, "p") == [(0, 8, True)]


def test_mremap_moving_an_unfaulted_mapping_gives_it_its_new_offset_so_it_merges():
    s = _system()
    s.mmap("p", 4 * MiB, addr=BASE, fixed=True)
    far = s.mmap("p", 4 * MiB, addr=BASE + 16 * MiB, fixed=True)
    s.mremap("p", far, 4 * MiB, 4 * MiB, new_addr=BASE + 4 * MiB)
    assert _layout(s) == [(0, 8, False)]
    s = _system()
    s.mmap("p", 4 * MiB, addr=BASE, fixed=True)
    far = s.mmap("p", 4 * MiB, addr=BASE + 16 * MiB, fixed=True)
    s.touch("p", far, write=True)  # its pages keep their offsets: so does the VMA
    s.mremap("p", far, 4 * MiB, 4 * MiB, new_addr=BASE + 4 * MiB)
    assert _layout(s) == [(0, 4, False), (4, 8, True)]


def test_mremap_gives_the_destination_a_table_for_every_source_table_even_an_empty_one():
    s = _system()
    m = s.mmap("p", 4 * MiB, addr=BASE, fixed=True)
    s.touch("p", m + 2 * MiB, MiB, write=True)
    s.madvise_dontneed("p", m + 2 * MiB, MiB)  # empties the second table without freeing it
    s.touch("p", m, 4096, write=True)
    upper = 2 * 4  # a PUD and a PMD table
    assert s.process("p")["vmpte_kb"] == upper + 2 * 4
    s.mremap("p", m, 4 * MiB, 4 * MiB, new_addr=BASE + 64 * MiB)
    assert s.process("p")["vmpte_kb"] == upper + 2 * 4
    s.mremap("p", BASE + 64 * MiB, 4 * MiB, 4 * MiB, new_addr=BASE + 129 * MiB)  # 1 MiB off: 3 tables
    assert s.process("p")["vmpte_kb"] == upper + 3 * 4


def test_a_fork_childs_vma_moved_next_to_one_without_anon_vma_stays_apart():
    # The copied_from check of is_mergeable_anon_vma() (6.18 with "mm/vma: enforce VMA fork limit
    # on unfaulted,faulted mremap merge too"): moved away and back, the offsets line up again, but
    # the moved VMA is a fork child's.
    s = _system()
    s.mmap("p", 4 * MiB, addr=BASE, fixed=True)
    s.touch("p", BASE, 4 * MiB, write=True)
    s.fork("p", "c")
    s.mmap("c", 4 * MiB, addr=BASE + 4 * MiB, fixed=True)
    s.mremap("c", BASE, 4 * MiB, 4 * MiB, new_addr=BASE + 32 * MiB)
    s.mremap("c", BASE + 32 * MiB, 4 * MiB, 4 * MiB, new_addr=BASE)
    assert _layout(s, "c") == [(0, 4, True), (4, 8, False)]
    s.mmap("p", 4 * MiB, addr=BASE + 4 * MiB, fixed=True)  # in the parent they merged at once
    assert _layout(s, "p") == [(0, 8, True)]
