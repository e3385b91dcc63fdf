"""The sharing substrate under policies that define their own rules: tables shared copy-on-write at
fork and unshared by copying, and PUD tables shared by key (see tests/sharing_policies.py)."""

import numpy as np
import pytest

from forked import BASE, forked
from ptshare import System
from ptshare.mm.translate import read_stamps, translate
from ptshare.oracle.invariants import check_empty
from sharing_policies import CowTables, SharedPTCopy, SharedPUD

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096


def _pages(s, name, addr, length):
    addrs = np.arange(addr, addr + length, PAGE, dtype=np.int64)
    return addrs, read_stamps(s.k, s.task(name).mm, addrs)


def _forked(policy, size=16 * MiB):
    return forked(policy, size)


def test_fork_shares_the_pte_tables_of_private_memory_and_leaves_page_counts_alone():
    size = 16 * MiB
    cow, a = _forked(CowTables(), size)
    linux, _ = _forked("linux", size)
    tables = size // (2 * MiB)
    # The child has its own PGD, PUD and PMD table; its PTE tables are the parent's.
    assert linux.system()["pagetables_kb"] - cow.system()["pagetables_kb"] == tables * 4
    assert cow.system()["shared_tables"] == tables
    assert cow.events()["ptes_copied"] == 0
    pfns = translate(cow.k, cow.task("c").mm, np.arange(a, a + size, PAGE, dtype=np.int64))
    assert (cow.k.frames.mapcount[pfns] == 1).all()  # counted once, by the one table that maps them
    assert np.array_equal(_pages(cow, "c", a, size)[1], _pages(cow, "p", a, size)[1])


def test_the_first_write_in_a_span_copies_that_one_table_then_copies_the_page():
    s, a = _forked(CowTables())
    before, events = s.system()["pagetables_kb"], s.events()
    parent_view = _pages(s, "p", a, 4 * MiB)[1]
    s.touch("c", a + 2 * MiB + 5 * PAGE, PAGE, write=True)
    after = s.events()
    assert s.system()["pagetables_kb"] - before == 4
    assert after["pte_tables_copied"] - events["pte_tables_copied"] == 1
    assert after["ptes_copied"] - events["ptes_copied"] == 512
    assert after["fault_wp_copy"] - events["fault_wp_copy"] == 1
    assert s.process("c")["minflt"] == 1
    # The copy maps the span's pages too; only the page written was copied.
    span = np.arange(a + 2 * MiB, a + 4 * MiB, PAGE, dtype=np.int64)
    counts = s.k.frames.mapcount[translate(s.k, s.task("p").mm, span)]
    assert (np.delete(counts, 5) == 2).all() and counts[5] == 1
    assert np.array_equal(_pages(s, "p", a, 4 * MiB)[1], parent_view)
    child = _pages(s, "c", a, 4 * MiB)[1]
    assert child[512 + 5] != parent_view[512 + 5]
    assert np.array_equal(np.delete(child, 512 + 5), np.delete(parent_view, 512 + 5))
    # The parent, now the table's only user, writes in it without copying it, but copies the page.
    s.touch("p", a + 2 * MiB + 6 * PAGE, PAGE, write=True)
    assert s.events()["pte_tables_copied"] == after["pte_tables_copied"]
    assert s.events()["fault_wp_copy"] == after["fault_wp_copy"] + 1


@pytest.mark.parametrize("op", ["munmap", "mprotect", "madvise", "split", "mremap"])
def test_any_change_in_a_span_copies_the_table_first(op):
    s, a = _forked(CowTables())
    values = _pages(s, "p", a, 16 * MiB)[1]
    copies = s.events()["pte_tables_copied"]
    page = a + 4 * MiB + 7 * PAGE
    if op == "munmap":
        s.munmap("c", page, PAGE)
    elif op == "mprotect":
        s.mprotect("c", page, PAGE, "r")
    elif op == "madvise":
        s.madvise_dontneed("c", page, PAGE)
    elif op == "split":
        s.mprotect("c", a + 4 * MiB + 64 * PAGE, 64 * PAGE, "r")  # a split at both ends, in one span
    else:
        s.mremap("c", a, 16 * MiB, 8 * MiB)
    # Unmapping whole spans drops the child's use of their tables; anything else copies them.
    assert s.events()["pte_tables_copied"] - copies == (0 if op == "mremap" else 1)
    assert np.array_equal(_pages(s, "p", a, 16 * MiB)[1], values)  # the parent never sees a change
    s.exit("c")
    s.exit("p")
    check_empty(s)


def test_exit_drops_shared_tables_without_copying_them():
    s, a = _forked(CowTables())
    copies = s.events()["pte_tables_copied"]
    s.exit("p")
    assert s.events()["pte_tables_copied"] == copies
    assert s.process("c")["rss_kb"] == 16 * 1024
    s.touch("c", a, 16 * MiB, write=True)  # the child, now the only user, reuses every page
    assert s.events()["fault_wp_copy"] == 0
    s.exit("c")
    check_empty(s)


def test_key_shared_tables_unshared_by_copying_keep_the_mapping():
    s = System(SharedPTCopy(), aslr_bits=0, check=True)
    s.create_object("seg", "shmem", 8 * MiB)
    s.spawn("p")
    a = s.mmap("p", object="seg", shared=True, addr=BASE, fixed=True)
    s.touch("p", a, write=True)
    s.fork("p", "c")
    assert s.process("c")["pt_shared_kb"] == 16
    s.mprotect("c", a + 2 * MiB + PAGE, PAGE, "r")
    # c has its own copy of that span's table, every entry still mapped: no refault.
    assert s.process("c")["pt_shared_kb"] == 12
    assert s.events()["pte_tables_copied"] == 1 and s.events()["pt_unshared"] == 0
    faults = s.process("c")["minflt"]
    s.touch("c", a + 2 * MiB, 2 * MiB)
    assert s.process("c")["minflt"] == faults


def test_a_pud_table_shared_by_key_at_fork_and_at_fault():
    s = System(SharedPUD(), aslr_bits=0, check=True)
    s.create_object("big", "shmem", 512 * GiB)
    s.spawn("p")
    a = s.mmap("p", object="big", shared=True, addr=BASE, fixed=True)
    for off in (0, 3 * GiB, 300 * GiB):
        s.touch("p", a + off, 4 * MiB, write=True)
    one = s.process("p")["vmpte_kb"]
    assert one == 4 + 3 * 4 + 6 * 4  # the PUD table, three PMD tables, six PTE tables
    base = s.system()["pagetables_kb"]
    s.fork("p", "c")
    assert s.system()["pagetables_kb"] - base == 4  # the child's PGD only
    assert s.process("c")["vmpte_kb"] == one and s.process("c")["pt_shared_kb"] == one
    s.touch("c", a + 3 * GiB, 4 * MiB)
    assert s.process("c")["minflt"] == 0
    s.spawn("q")
    s.mmap("q", object="big", shared=True, addr=BASE, fixed=True)
    s.touch("q", a + 300 * GiB, 4 * MiB)  # attaches p's PUD table and finds the pages mapped
    assert s.process("q")["vmpte_kb"] == one
    assert s.system()["shared_tables"] == 1
    s.touch("q", a + 7 * GiB, 2 * MiB, write=True)  # a fault in the shared table: seen by all
    assert s.process("p")["vmpte_kb"] == one + 8
    s.munmap("q", a + 7 * GiB, 2 * MiB)  # q lets go of the PUD table; p and c keep it
    assert s.events()["pt_unshared"] == 1
    assert s.process("p")["vmpte_kb"] == one + 8
    faults = s.process("q")["minflt"]
    s.touch("q", a, 4 * MiB)  # q refaults into tables of its own
    assert s.process("q")["minflt"] > faults
    assert np.array_equal(_pages(s, "q", a, 4 * MiB)[1], _pages(s, "p", a, 4 * MiB)[1])
    for name in ("p", "c", "q"):
        s.exit(name)
    s.drop_objects()
    check_empty(s)
