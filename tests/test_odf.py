"""On-demand fork (policy odf): fork shares the PTE tables of private anonymous memory copy-on-write,
and the first change in a 2 MiB span copies that one table."""

import numpy as np
import pytest

from ptshare import System
from ptshare.mm.translate import read_stamps, translate
from ptshare.oracle.invariants import check_empty

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
BASE = 0x600000000000


def _forked(policy, size, check=False):
    s = System(policy, aslr_bits=0, check=check)
    s.spawn("p")
    a = s.mmap("p", size, addr=BASE, fixed=True)
    s.touch("p", a, write=True)
    before = s.system()["pagetables_kb"], s.events()
    s.fork("p", "c")
    return s, a, before


def test_fork_of_a_gib_of_written_private_memory_adds_no_pte_tables():
    s, _a, (tables, events) = _forked("odf", GiB)
    after = s.events()
    # The child's own tables: its PGD, one PUD and one PMD table; its 512 PTE tables are the parent's.
    assert s.system()["pagetables_kb"] - tables == 3 * 4
    assert after["pte_tables_copied"] == events["pte_tables_copied"]
    assert after["ptes_copied"] == events["ptes_copied"]
    assert after["pt_cow_shared"] - events["pt_cow_shared"] == 512
    linux, _a, (linux_tables, _e) = _forked("linux", GiB)
    assert linux.system()["pagetables_kb"] - linux_tables == 3 * 4 + 512 * 4
    # The child maps everything the parent does (its VmPTE and RSS count the shared tables).
    assert s.process("c")["vmpte_kb"] == linux.process("c")["vmpte_kb"]
    assert s.process("c")["rss_kb"] == linux.process("c")["rss_kb"] == 1 << 20


@pytest.mark.parametrize("who", ["c", "p"])
def test_the_first_write_in_a_span_copies_exactly_one_table(who):
    s, a, _ = _forked("odf", 64 * MiB, check=True)
    tables, events = s.system()["pagetables_kb"], s.events()
    s.touch(who, a + 10 * MiB + 3 * PAGE, 8 * PAGE, write=True)
    after = s.events()
    assert s.system()["pagetables_kb"] - tables == 4
    assert after["pt_copied"] - events["pt_copied"] == 1
    assert after["ptes_copied"] - events["ptes_copied"] == 512
    assert after["fault_wp_copy"] - events["fault_wp_copy"] == 8
    s.touch(who, a + 10 * MiB, 2 * MiB, write=True)  # the rest of that span: no other table copied
    assert s.events()["pt_copied"] - events["pt_copied"] == 1
    other = "p" if who == "c" else "c"
    addrs = np.arange(a, a + 64 * MiB, PAGE, dtype=np.int64)
    mine, theirs = read_stamps(s.k, s.task(who).mm, addrs), read_stamps(s.k, s.task(other).mm, addrs)
    written = (addrs >= a + 10 * MiB) & (addrs < a + 12 * MiB)
    assert (mine[written] != theirs[written]).all()
    assert np.array_equal(mine[~written], theirs[~written])


def test_reads_copy_nothing_and_exits_free_everything():
    s, a, _ = _forked("odf", 16 * MiB, check=True)
    s.touch("c", a, 16 * MiB)
    assert s.events()["pt_copied"] == 0 and s.process("c")["minflt"] == 0
    s.exit("p")
    s.touch("c", a, 16 * MiB, write=True)  # the child, now the only user, reuses every page
    assert s.events()["pt_copied"] == 0 and s.events()["fault_wp_copy"] == 0
    s.exit("c")
    check_empty(s)


def test_only_anonymous_memory_whose_span_one_vma_covers_is_shared():
    s = System("odf", aslr_bits=0, check=True)
    s.create_object("f", "file", 8 * MiB)
    s.spawn("p")
    a = s.mmap("p", 3 * MiB, addr=BASE, fixed=True)  # one whole span and a part of another
    f = s.mmap("p", object="f", addr=BASE + 8 * MiB, fixed=True)  # private file mapping
    s.touch("p", a, write=True)
    s.touch("p", f, write=True)
    s.fork("p", "c")
    assert s.system()["shared_tables"] == 1
    assert s.events()["pte_tables_copied"] == 1 + 4


def test_cow_pt_counts_the_pages_at_fork_and_its_table_copy_takes_no_references():
    """Lin's RFC (v3 on) shares the tables ODF shares, but runs copy_present_pte on every entry at
    fork: the pages gain their mappings then, and the table copy later takes none."""
    odf, a, _ = _forked("odf", 8 * MiB, check=True)
    cow, _a, (_t, before) = _forked("cow-pt", 8 * MiB, check=True)
    assert cow.events()["cow_pte_counted"] - before["cow_pte_counted"] == 2048
    assert cow.events()["pt_cow_shared"] - before["pt_cow_shared"] == 4
    pfns = translate_pfns(cow, "p", a, 8 * MiB)
    assert (cow.k.frames.mapcount[pfns] == 2).all()  # counted for the child at fork
    assert (odf.k.frames.mapcount[translate_pfns(odf, "p", a, 8 * MiB)] == 1).all()  # ODF: at the copy
    before = cow.events()
    cow.touch("c", a + 3 * PAGE, PAGE, write=True)
    after = cow.events()
    assert after["pt_copied"] - before["pt_copied"] == 1 and after["fault_wp_copy"] - before["fault_wp_copy"] == 1
    assert after["cow_pte_counted"] == before["cow_pte_counted"]
    assert after["cow_pte_duplicated"] - before["cow_pte_duplicated"] == 512  # entries copied as they are
    assert after["ptes_copied"] == before["ptes_copied"]
    mapped = cow.k.frames.mapcount[pfns]
    assert mapped[3] == 1 and (np.delete(mapped, 3) == 2).all()  # only the page written lost its child mapping
    cow.exit("c")  # the child's shares of the three tables it never copied go, with its mappings
    assert (cow.k.frames.mapcount[pfns] == 1).all()
    cow.touch("p", a, 8 * MiB, write=True)  # the parent, alone again, reuses every page
    assert cow.events()["fault_wp_copy"] - after["fault_wp_copy"] == 0
    cow.exit("p")
    check_empty(cow)


def translate_pfns(s, name, addr, length):
    """The frames ``name`` maps at [addr, addr + length), one per page."""
    return translate(s.k, s.task(name).mm, np.arange(addr, addr + length, PAGE, dtype=np.int64))
