"""Shared page tables: sharing happens exactly when the rules hold, and every unshare trigger works."""

import pytest

from ptshare import System
from ptshare.oracle.invariants import check_empty

GiB = 1 << 30
MiB = 1 << 20
BASE = 0x600000000000  # 512 GiB-aligned, so a process's tables there are counted from nothing


def _shmem_forks(policy, children, size=GiB):
    s = System(policy, aslr_bits=0, check=children <= 3)
    s.create_object("seg", "shmem", size)
    s.spawn("p")
    a = s.mmap("p", object="seg", shared=True, addr=BASE, fixed=True)
    s.touch("p", a, write=True)
    for i in range(children):
        s.fork("p", f"c{i}")
        s.touch(f"c{i}", a)
    return s, a


def test_hundred_readers_of_one_gib_of_shmem():
    linux, _ = _shmem_forks("linux", 100)
    shared, _ = _shmem_forks("shared-pt", 100)
    one = linux.process("p")["vmpte_kb"]
    assert one == 2052 + 4  # 512 PTE + 1 PMD + the PUD table
    assert linux.system()["pagetables_kb"] == 101 * (one + 4)  # every process: its tables and its PGD
    # shared-pt: one set of PTE tables; each child has only its own PGD, PUD and PMD table
    assert shared.system()["pagetables_kb"] == (one + 4) + 100 * (4 + 4 + 4)
    for i in (0, 50, 99):
        child = shared.process(f"c{i}")
        assert child["minflt"] == 0
        assert child["vmpte_kb"] == one  # VmPTE counts the shared tables in every sharer
        assert child["pt_shared_kb"] == 2048
        assert linux.process(f"c{i}")["minflt"] == 16384


def test_shared_pt_2005_shares_the_pmd_table_too():
    s, _ = _shmem_forks("shared-pt-2005", 3)
    child = s.process("c0")
    assert child["minflt"] == 0
    assert child["pt_shared_kb"] == 2052  # the PMD table and the 512 PTE tables in it
    assert s.system()["pagetables_kb"] == (2056 + 4) + 3 * (4 + 4)


@pytest.mark.parametrize(("offset", "size", "faults"), [
    (0, GiB, 1), (0, 4 * GiB, 4), (2 * MiB, GiB, 512), (2 * MiB, 4 * GiB, 515)])
def test_hugetlb_pmd_sharing_rows_of_the_ground_truth(offset, size, faults):
    s = System("linux", aslr_bits=0, check=True)
    s.create_object("h", "hugetlb", size)
    s.spawn("p")
    a = s.mmap("p", object="h", shared=True, addr=BASE + offset, fixed=True)
    s.touch("p", a, write=True)
    s.fork("p", "c")
    s.touch("c", a)
    assert s.process("c")["minflt"] == faults
    windows = size // GiB + (1 if offset else 0)
    shared = size // GiB - (1 if offset else 0)  # 1 GiB windows the mapping covers whole
    # VmPTE counts every PMD table in every sharer; PageTables counts a shared one once
    assert s.process("c")["vmpte_kb"] == 4 * (windows + 1)
    assert s.system()["pagetables_kb"] == 2 * 4 * (1 + 1 + windows) - 4 * shared


def test_hugetlb_sharing_needs_the_same_position_in_the_window_not_the_same_address():
    s = System("linux", aslr_bits=0, check=True)
    s.create_object("h", "hugetlb", GiB)
    s.spawn("a")
    s.spawn("b")
    x = s.mmap("a", object="h", shared=True, addr=BASE, fixed=True)
    y = s.mmap("b", object="h", shared=True, addr=BASE + 7 * GiB, fixed=True)  # another window, same offset in it
    s.touch("a", x, write=True)
    s.touch("b", y)
    assert s.process("b")["minflt"] == 1
    z_proc = s.spawn("z") or "z"
    z = s.mmap(z_proc, object="h", shared=True, addr=BASE + 9 * GiB + 2 * MiB, fixed=True)
    s.touch(z_proc, z, 2 * MiB)
    assert s.process(z_proc)["pt_shared_kb"] == 0


def test_linux_shares_no_pte_table():
    s, _ = _shmem_forks("linux", 2)
    assert s.system()["shared_tables"] == 0 and s.events()["pt_shared"] == 0


def test_private_writable_mappings_never_share():
    s = System("shared-pt", aslr_bits=0, check=True)
    s.create_object("f", "file", 8 * MiB)
    s.spawn("p")
    a = s.mmap("p", object="f", shared=False, prot="rw", addr=BASE, fixed=True)
    s.touch("p", a)
    s.fork("p", "c")
    s.touch("c", a)
    assert s.events()["pt_shared"] == 0
    assert s.process("c")["minflt"] > 0


def test_private_read_only_file_mappings_share():
    s = System("shared-pt", aslr_bits=0, check=True)
    s.create_object("f", "file", 8 * MiB)
    s.spawn("p")
    a = s.mmap("p", object="f", shared=False, prot="r", addr=BASE, fixed=True)
    s.touch("p", a)
    s.fork("p", "c")
    s.touch("c", a)
    assert s.events()["pt_shared"] == 4
    assert s.process("c")["minflt"] == 0


def test_a_mapping_that_covers_part_of_a_span_does_not_share_that_span():
    s = System("shared-pt", aslr_bits=0, check=True)
    s.create_object("seg", "shmem", 8 * MiB)
    s.spawn("p")
    a = s.mmap("p", 4 * MiB, object="seg", shared=True, addr=BASE + MiB, fixed=True)  # [1, 5) MiB
    s.touch("p", a, write=True)
    s.fork("p", "c")
    s.touch("c", a)
    # spans [0,2) and [4,6) are partly covered: the child refaults them; [2,4) is shared
    assert s.events()["pt_shared"] == 1
    assert s.process("c")["minflt"] == 2 * 256 // 16


def test_a_vma_smaller_than_2mib_never_shares():
    s = System("shared-pt", aslr_bits=0, check=True)
    s.create_object("seg", "shmem", 8 * MiB)
    s.spawn("p")
    a = s.mmap("p", MiB, object="seg", shared=True, addr=BASE, fixed=True)
    s.touch("p", a, write=True)
    s.fork("p", "c")
    assert s.events()["pt_shared"] == 0


def test_unrelated_processes_share_at_fault_only_with_identical_vmas():
    s = System("shared-pt", aslr_bits=0, check=True)
    s.create_object("seg", "shmem", 8 * MiB)
    for name in ("a", "b", "c"):
        s.spawn(name)
    x = s.mmap("a", object="seg", shared=True, addr=BASE, fixed=True)
    s.touch("a", x, write=True)
    y = s.mmap("b", object="seg", shared=True, addr=BASE, fixed=True)
    s.touch("b", y)
    assert s.process("b")["minflt"] == 4  # one fault attaches each 2 MiB table, all pages already there
    assert s.process("b")["pt_shared_kb"] == 16
    z = s.mmap("c", object="seg", shared=True, addr=BASE + 2 * MiB, fixed=True)  # another address: no partner
    s.touch("c", z)
    assert s.process("c")["pt_shared_kb"] == 0
    w = s.mmap("c", object="seg", shared=True, prot="r", addr=BASE + GiB, fixed=True)  # other flags: no partner
    s.touch("c", w)
    assert s.process("c")["pt_shared_kb"] == 0


def test_mprotect_of_one_page_unshares_that_span_for_that_process_only():
    s, a = _shmem_forks("shared-pt", 2, size=8 * MiB)
    before = {n: s.process(n)["pt_shared_kb"] for n in ("c0", "c1")}
    flushes = s.system()["tlb_flush_all"]
    s.mprotect("c0", a + 2 * MiB + 4096, 4096, "r")
    assert s.process("c0")["pt_shared_kb"] == before["c0"] - 4
    assert s.process("c1")["pt_shared_kb"] == before["c1"]
    assert s.system()["shared_tables"] == 4  # the span is still shared by p and c1
    assert s.system()["tlb_flush_all"] == flushes + 1
    s.touch("c0", a + 2 * MiB, 2 * MiB)  # c0 refaults into a table of its own
    assert s.process("c0")["minflt"] > 0


def test_an_operation_that_unshares_many_tables_flushes_every_cpu_once():
    s, a = _shmem_forks("shared-pt", 2, size=64 * MiB)
    flushes = s.system()["tlb_flush_all"]
    unshared = s.system()["pt_unshared"]
    s.exit("c0")
    assert s.system()["pt_unshared"] - unshared == 32
    assert s.system()["tlb_flush_all"] == flushes + 1
    s.touch("c1", a, 64 * MiB)  # an operation that unshares nothing flushes nothing
    assert s.system()["tlb_flush_all"] == flushes + 1


@pytest.mark.parametrize("trigger", ["mprotect", "munmap", "madvise", "mremap", "mremap-grow", "split", "exit",
                                     "truncate"])
def test_every_unshare_trigger(trigger):
    s, a = _shmem_forks("shared-pt", 2, size=8 * MiB)
    unshared = s.system()["pt_unshared"]
    flushes = s.system()["tlb_flush_all"]
    if trigger == "mprotect":
        s.mprotect("c0", a, 2 * MiB, "r")
    elif trigger == "munmap":
        s.munmap("c0", a, 2 * MiB)
    elif trigger == "madvise":
        s.madvise_dontneed("c0", a, 2 * MiB)
    elif trigger == "mremap":
        s.mremap("c0", a, 8 * MiB, 8 * MiB, BASE + GiB)
    elif trigger == "mremap-grow":  # in place: the grown VMA no longer matches its partners'
        assert s.mremap("c0", a, 8 * MiB, 10 * MiB) == a
    elif trigger == "split":
        s.munmap("c0", a + 2 * MiB + 4096, 4096)  # a hole: two VMAs, the span between them is no longer whole
    elif trigger == "exit":
        s.exit("c0")
    else:
        s.truncate("seg", 6 * MiB)
    gone = s.system()["pt_unshared"] - unshared
    assert gone >= 1
    assert s.system()["tlb_flush_all"] == flushes + 1  # one batched flush however many tables went
    s.exit_all()
    s.drop_objects()
    check_empty(s)


def test_a_shared_table_is_freed_only_when_its_last_user_leaves():
    s, _ = _shmem_forks("shared-pt", 2, size=8 * MiB)
    tables = s.system()["pagetables_kb"]
    s.exit("p")
    s.exit("c0")
    assert s.system()["pagetables_kb"] == tables - 2 * (4 + 4 + 4) - 0  # only their own upper tables went
    assert s.process("c1")["vmpte_kb"] == 4 * (4 + 1 + 1)
    s.exit("c1")
    s.drop_objects()
    check_empty(s)


def test_aslr_defeats_mccracken_sharing_but_fixed_addresses_share():
    def share_rate(aslr_bits, fixed):
        s = System("shared-pt", aslr_bits=aslr_bits, seed=2)
        s.create_object("sga", "shmem", 64 * MiB)
        hits = 0
        for i in range(20):
            s.spawn(f"p{i}")
            addr = s.mmap(f"p{i}", object="sga", shared=True, addr=BASE if fixed else None, fixed=fixed)
            s.touch(f"p{i}", addr, write=i == 0)
            hits += s.process(f"p{i}")["pt_shared_kb"] > 0
        return hits / 19

    assert share_rate(28, fixed=False) == 0
    assert share_rate(0, fixed=False) == 1
    assert share_rate(28, fixed=True) == 1


def _attachers(policy: str) -> System:
    """Unrelated processes attach 2 GiB + 4 MiB of shmem at one address: the first writes most of
    it, the others read it whole, in part, or past what the first wrote."""
    s = System(policy, aslr_bits=0, check=True)
    s.create_object("seg", "shmem", 2 * GiB + 4 * MiB)
    for name in ("w", "r1", "r2", "r3"):
        s.spawn(name)
        s.mmap(name, object="seg", shared=True, addr=BASE, fixed=True)
    s.touch("w", BASE, GiB + 2 * MiB, write=True)
    s.touch("r1", BASE)  # window 0 offered whole with every page; window 1 not
    s.touch("r2", BASE + 4096, GiB)  # window 0 not read from its start
    s.touch("w", BASE + GiB, GiB + 4 * MiB, write=True)
    s.touch("r3", BASE)  # now both windows are offered whole
    s.touch("r2", BASE)
    return s


@pytest.mark.parametrize("policy", ["shared-pt", "shared-pt-2005", "linux"])
def test_attaching_whole_windows_at_once_reaches_what_attaching_each_table_does(monkeypatch, policy):
    import numpy as np

    from ptshare.mm import memory

    whole = memory._attach_whole_windows
    taken = []

    def counted(*args):
        done = whole(*args)
        taken.append(int(done.sum()))
        return done

    monkeypatch.setattr(memory, "_attach_whole_windows", counted)
    fast = _attachers(policy)
    monkeypatch.setattr(memory, "_attach_whole_windows",
                        lambda k, task, vma, windows, bases, acc: np.zeros(len(bases), dtype=bool))
    slow = _attachers(policy)
    # shared-pt: r1's window 0 and r3's two; shared-pt-2005: the PMD tables r1 and r3 attach
    assert sum(taken) == {"shared-pt": 3, "shared-pt-2005": 3, "linux": 0}[policy]
    assert fast.processes() == slow.processes()
    assert fast.system() == slow.system()
    assert fast.k.events.as_dict() == slow.k.events.as_dict()


def _split_then_attach(third: bool) -> System:
    """``a`` writes 8 MiB of shmem at BASE and splits its VMA (mprotect of the last 2 MiB);
    ``b`` then maps the same 8 MiB and reads it.  With ``third``, ``c`` has mapped and read it too
    before the split, and keeps its VMA whole."""
    s = System("shared-pt", aslr_bits=0, check=True)
    s.create_object("seg", "shmem", 8 * MiB)
    for name in ("a", "b", "c") if third else ("a", "b"):
        s.spawn(name)
        s.mmap(name, object="seg", shared=True, addr=BASE, fixed=True)
    s.touch("a", BASE, write=True)
    if third:
        s.touch("c", BASE)
    s.mprotect("a", BASE + 6 * MiB, 2 * MiB, "r")
    s.touch("b", BASE)
    return s


def test_a_table_whose_only_vma_was_split_is_no_longer_offered():
    # McCracken's partner search matches vm_start and vm_end of the VMAs in i_mmap: once a's VMA
    # is split, no VMA with b's bounds holds a's tables, so b faults into tables of its own.
    s = _split_then_attach(third=False)
    assert s.process("b")["pt_shared_kb"] == 0
    assert s.process("a")["pt_shared_kb"] == 0


def test_a_table_another_user_still_maps_whole_is_still_offered():
    s = _split_then_attach(third=True)
    assert s.process("b")["pt_shared_kb"] == 4 * 4  # all four tables, found through c's VMA
