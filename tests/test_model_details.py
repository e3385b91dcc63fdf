"""Details of Linux 6.18 the model must get right, each found by measuring a real system."""

from ptshare import System
from ptshare.mm.vma import VM_ACCOUNT

MiB = 1 << 20
BASE = 0x600000000000


def test_madvise_dontneed_frees_the_pte_tables_it_covers_whole():
    # Linux 6.14+ (CONFIG_PT_RECLAIM): zap_pte_range() frees a PTE table when MADV_DONTNEED covered
    # its whole 2 MiB span; tables of partly covered spans stay.
    s = System("linux", check=True)
    s.spawn("p")
    a = s.mmap("p", 8 * MiB, addr=BASE, fixed=True)
    s.touch("p", a, write=True)
    before = s.process("p")["vmpte_kb"]
    s.madvise_dontneed("p", a + MiB, 4 * MiB)  # covers [2, 4) MiB whole; [0, 2) and [4, 6) in part
    assert s.process("p")["vmpte_kb"] == before - 4
    s.madvise_dontneed("p", a, 8 * MiB)
    assert s.process("p")["vmpte_kb"] == before - 4 * 4
    s.touch("p", a, MiB, write=True)  # a fresh table for the refault
    assert s.process("p")["rss_kb"] == 1024
    assert s.process("p")["vmpte_kb"] == before - 3 * 4


def test_private_writable_mappings_are_accounted_and_do_not_merge_with_read_only_ones():
    # A RELRO-like layout: a read-only part, then a part mapped writable and made read-only.
    # VM_ACCOUNT (set by the writable mmap, kept by mprotect) keeps the two VMAs apart.
    s = System("linux", check=True)
    s.create_object("bin", "file", 16 * MiB)
    s.spawn("p")
    s.mmap("p", 4 * MiB, object="bin", prot="r", addr=BASE, fixed=True)
    b = s.mmap("p", 64 << 10, object="bin", offset=4 * MiB, prot="rw", addr=BASE + 4 * MiB, fixed=True)
    s.touch("p", b, write=True)
    s.mprotect("p", b, 64 << 10, "r")
    vmas = s.task("p").mm.vmas
    assert len(vmas) == 2
    assert not vmas[0].vm_flags & VM_ACCOUNT and vmas[1].vm_flags & VM_ACCOUNT


def test_relro_layout_forks_as_linux_does():
    # Without VM_ACCOUNT the two parts merged into one VMA with an anon_vma, and fork copied the
    # read-only part's tables too (1,040 PTEs instead of the 16 the written part holds).
    for policy, shared_kb in (("linux", 0), ("shared-pt", 8)):
        s = System(policy, aslr_bits=0, check=True)
        s.create_object("bin", "file", 16 * MiB)
        s.spawn("pm")
        s.mmap("pm", 4 * MiB, object="bin", prot="r", addr=BASE, fixed=True)
        s.touch("pm", BASE, 4 * MiB)
        s.mmap("pm", 64 << 10, object="bin", offset=4 * MiB, prot="rw", addr=BASE + 4 * MiB, fixed=True)
        s.touch("pm", BASE + 4 * MiB, 64 << 10, write=True)
        s.mprotect("pm", BASE + 4 * MiB, 64 << 10, "r")
        s.fork("pm", "c")
        assert s.events()["ptes_copied"] == 16
        assert s.process("c")["pt_shared_kb"] == shared_kb  # the read-only part's two whole tables


def _dirty_file(policy: str) -> tuple[System, int]:
    """A shared disk-file mapping: its first half written (dirty PTEs), its second half only read."""
    s = System(policy, aslr_bits=0, check=True)
    s.create_object("f", "file", 4 * MiB)
    s.spawn("p")
    a = s.mmap("p", object="f", shared=True, addr=BASE, fixed=True)
    s.touch("p", a, 2 * MiB, write=True)
    s.touch("p", a + 2 * MiB, 2 * MiB)
    return s, a


def test_mprotect_makes_dirty_pages_of_a_shared_file_writable_again():
    # can_change_pte_writable(): a shared mapping's PTE regains write permission at mprotect if it
    # is dirty; clean ones wait for page_mkwrite (host-checked: scenarios/validate/file-mprotect-writenotify.toml).
    s, a = _dirty_file("linux")
    s.mprotect("p", a, 4 * MiB, "r")
    s.mprotect("p", a, 4 * MiB, "rw")
    faults = s.process("p")["minflt"]
    s.touch("p", a, 2 * MiB, write=True)
    assert s.process("p")["minflt"] == faults
    s.touch("p", a + 2 * MiB, 2 * MiB, write=True)
    assert s.process("p")["minflt"] == faults + 512
    s.munmap("p", a, MiB)  # the marks go with the entries: the invariant checker runs after each step
    s.mprotect("p", a + MiB, 3 * MiB, "r")
    assert s.k.stores[0].wp_dirty
    s.exit("p")
    assert not s.k.stores[0].wp_dirty


def test_a_forked_copy_of_a_shared_mapping_is_clean():
    # copy_present_pte() cleans the child's PTEs of a shared mapping: only the parent's dirty
    # entries become writable when write permission returns (eager is the policy that copies them).
    s, a = _dirty_file("eager")
    s.mprotect("p", a, 4 * MiB, "r")
    s.fork("p", "c")
    for name in ("p", "c"):
        s.mprotect(name, a, 4 * MiB, "rw")
        faults = s.process(name)["minflt"]
        s.touch(name, a, 2 * MiB, write=True)
        assert s.process(name)["minflt"] - faults == (0 if name == "p" else 512)


def test_an_operation_flushes_each_mm_it_changed_once():
    # mmu_gather: munmap and mprotect flush once for their whole range, fork flushes the parent once
    # (dup_mmap), exit once -- not once per VMA or per table.
    s = System("linux", aslr_bits=0, check=True)
    s.spawn("p")
    addrs = [s.mmap("p", 4 * MiB, addr=BASE + n * 8 * MiB, fixed=True) for n in range(4)]
    for a in addrs:
        s.touch("p", a, write=True)

    def flushes() -> int:
        return s.events()["tlb_flush_mm"]

    before = flushes()
    s.fork("p", "c")  # write-protects the parent's entries in four VMAs, sixteen tables
    assert flushes() == before + 1
    s.mprotect("p", addrs[0], 4 * MiB, "r")  # two tables
    assert flushes() == before + 2
    s.munmap("c", BASE, 32 * MiB)  # four VMAs and the holes between them
    assert flushes() == before + 3
    s.exit("p")
    assert flushes() == before + 4
    s.exit("c")  # nothing left mapped: nothing to flush
    assert flushes() == before + 4


def test_zapping_tells_the_zero_page_anonymous_and_page_cache_pages_apart():
    # zap_present_ptes(): the zero page is no normal page (the entry is only cleared); an anonymous
    # page loses its rmap and reference (and is freed with its last one); a page-cache page is also
    # marked accessed and stays in the cache.  Calibration prices the three apart.
    s = System("linux", check=True)
    s.create_object("seg", "shmem", 4 * MiB)
    s.spawn("p")
    a = s.mmap("p", 4 * MiB, addr=BASE, fixed=True)
    s.touch("p", a, MiB, write=True)  # 256 anonymous pages
    s.touch("p", a + 2 * MiB, MiB)  # 256 zero-page entries
    b = s.mmap("p", 4 * MiB, object="seg", shared=True, addr=BASE + 8 * MiB, fixed=True)
    s.touch("p", b, 2 * MiB, write=True)  # 512 shmem pages
    s.fork("p", "c")  # the child shares the anonymous pages: its exit frees none of them
    before = s.events()
    s.exit("c")
    after = s.events()

    def delta(name: str) -> int:
        return after[name] - before[name]

    assert delta("ptes_zapped") == 256 + 256  # fork copied only the anonymous VMA's entries
    assert (delta("ptes_zapped_rmap"), delta("ptes_zapped_file"), delta("pages_freed")) == (256, 0, 0)
    assert delta("vmas_freed") == 2
    before = after
    s.munmap("p", b, 4 * MiB)
    after = s.events()
    assert (delta("ptes_zapped"), delta("ptes_zapped_rmap"), delta("ptes_zapped_file")) == (512, 512, 512)
    assert (delta("pages_freed"), delta("vmas_freed")) == (0, 1)
    before = after
    s.exit("p")
    after = s.events()
    assert (delta("ptes_zapped"), delta("ptes_zapped_rmap"), delta("ptes_zapped_file")) == (512, 256, 0)
    assert (delta("pages_freed"), delta("vmas_freed")) == (256, 1)
