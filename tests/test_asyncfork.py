"""Async-fork (policy async-fork): fork copies the upper levels and returns; the child copies the PMD
and PTE levels off the parent's path before it runs; a parent changing a span not yet copied copies
it first, on its own path.  Only the cost moves: every table and every content is Linux's."""

import json

import numpy as np
import pytest

from forked import BASE, forked
from ptshare import System
from ptshare.cost import load_profile
from ptshare.mm.translate import read_stamps
from ptshare.oracle.invariants import check_empty
from ptshare.scenario.load import loads
from ptshare.scenario.run import run

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
COPY_EVENTS = ("ptes_copied", "pte_tables_copied", "pgtable_alloc")


def _delta(s, before):
    return {k: v - before.get(k, 0) for k, v in s.events().items() if v != before.get(k, 0)}


def _scenario(child_steps: str, size: str = "1GiB"):
    """A parent writes ``size`` of private memory and forks; then ``child_steps`` (inline tables)."""
    return loads(f"""name = "async"
machine = {{aslr_bits = 0}}
steps = [{{op = "spawn", pid = "p"}},
         {{op = "mmap", pid = "p", vma = "heap", size = "{size}", addr = "{BASE:#x}", fixed = true}},
         {{op = "touch", pid = "p", vma = "heap", access = "write"}},
         {{op = "fork", pid = "p", child = "c"}}, {child_steps}]""")


def test_the_fork_returns_without_the_pmd_and_pte_copy_which_the_child_makes_in_the_background():
    child_reads = '{op = "touch", pid = "c", vma = "heap"}'
    linux = run(_scenario(child_reads), "linux")
    asyncf = run(_scenario(child_reads), "async-fork")
    fork_l, fork_a = linux.steps[3], asyncf.steps[3]
    assert fork_l.events["ptes_copied"] == 1 << 18 and fork_l.events["pte_tables_copied"] == 512
    # The parent's fork copies the VMAs and the upper levels (the child's PGD and PUD table) only.
    assert "ptes_copied" not in fork_a.events and "pte_tables_copied" not in fork_a.events
    assert fork_a.events["pgtable_alloc"] == 2 and fork_a.events["vmas_copied"] == 1
    cost = load_profile()
    assert "ptes_copied_scattered" not in fork_a.events
    moved = (cost.ns["ptes_copied"] * (1 << 18) + cost.ns["pte_tables_copied"] * 512
             + cost.ns["pgtable_alloc"] * 513  # 512 PTE tables and the child's PMD table
             + cost.ns["ptes_copied_scattered"] * fork_l.events["ptes_copied_scattered"])
    assert fork_l.est_ns - fork_a.est_ns == pytest.approx(moved)
    assert fork_a.est_ns_background == 0
    # The child's next step waits for the copy: all of it off the parent's path, none on the child's.
    child_l, child_a = linux.steps[4], asyncf.steps[4]
    assert child_a.est_ns_background == pytest.approx(moved)
    assert child_a.est_ns == pytest.approx(child_l.est_ns)
    assert child_a.events_background["ptes_copied"] == 1 << 18
    assert child_a.events_background["pt_copied_background"] == 512
    out = child_a.to_json()
    assert out["est_ns_background"] == round(moved) and "est_ns_background" not in fork_a.to_json()
    assert "est_ns_background" not in json.dumps(linux.to_json())
    # Only the cost moved: the run counted the same work as Linux's, and its page tables are Linux's.
    copied = {k: asyncf.events[k] for k in ("pt_copied_background", "pt_copied_sync")}
    assert copied == {"pt_copied_background": 512, "pt_copied_sync": 0}
    assert asyncf.events == {**linux.events, **copied}
    assert [s.system["pagetables_kb"] for s in asyncf.steps] == [s.system["pagetables_kb"] for s in linux.steps]


def test_a_parent_write_before_the_copy_pays_the_copy_of_that_span_on_its_path():
    s, a = forked("async-fork", 64 * MiB)
    linux, _ = forked("linux", 64 * MiB)
    before, before_l = s.events(), linux.events()
    s.touch("p", a + 10 * MiB + 3 * PAGE, 8 * PAGE, write=True)
    linux.touch("p", a + 10 * MiB + 3 * PAGE, 8 * PAGE, write=True)
    extra = _delta(s, before)
    assert extra.pop("pt_copied_sync") == 1
    assert extra.pop("ptes_copied") == 512 and extra.pop("pte_tables_copied") == 1
    assert extra.pop("pgtable_alloc") == 1
    assert extra == _delta(linux, before_l)  # the write itself: the COW faults Linux takes
    assert s.k.offpath["ptes_copied"] == 0
    s.touch("p", a + 10 * MiB, 2 * MiB, write=True)  # that span is the child's already
    assert s.events()["pt_copied_sync"] == 1
    s.touch("c", a, PAGE)  # the child runs: the 31 other spans are copied off the parent's path
    assert s.k.offpath["pt_copied_background"] == 31 and s.k.offpath["ptes_copied"] == 31 * 512
    assert not s.k.background


@pytest.mark.parametrize("change", ["mprotect", "munmap", "madvise", "read-fill"])
def test_every_change_of_a_span_by_the_parent_copies_it_first(change):
    s = System("async-fork", aslr_bits=0, check=True)
    s.spawn("p")
    a = s.mmap("p", 16 * MiB, addr=BASE, fixed=True)
    s.touch("p", a, 11 * MiB, write=True)  # six spans with a PTE table, the sixth half full
    s.fork("p", "c")
    before = s.events()
    if change == "mprotect":
        s.mprotect("p", a + 2 * MiB, 4 * MiB, "r")
    elif change == "munmap":
        s.munmap("p", a + 2 * MiB + PAGE, 4 * MiB)  # two spans changed, a third one in part
    elif change == "madvise":
        s.madvise_dontneed("p", a + 2 * MiB, 4 * MiB)
    else:
        s.touch("p", a + 11 * MiB, 2 * MiB)  # a read that fills the empty part of one table
    synced = {"mprotect": 2, "munmap": 3, "madvise": 2, "read-fill": 1}[change]
    assert s.events()["pt_copied_sync"] - before["pt_copied_sync"] == synced
    s.touch("c", a, PAGE)
    assert s.k.offpath["pt_copied_background"] == 6 - synced


def test_the_child_sees_what_it_sees_under_linux():
    stamps = {}
    for policy in ("linux", "async-fork"):
        s, a = forked(policy, 8 * MiB)
        s.touch("p", a + 5 * MiB, 64 * PAGE, write=True)  # the parent writes before the child copies
        s.munmap("p", a + 6 * MiB, MiB)
        s.touch("c", a, 8 * MiB, write=True)
        s.touch("p", a, 6 * MiB)
        addrs = np.arange(a, a + 8 * MiB, PAGE, dtype=np.int64)
        stamps[policy] = [read_stamps(s.k, s.task(n).mm, addrs) for n in ("p", "c")]
        s.exit("p")
        s.exit("c")
        check_empty(s)
    for mine, linux in zip(stamps["async-fork"], stamps["linux"], strict=True):
        assert np.array_equal(mine, linux)


def test_a_parent_that_exits_before_the_child_runs_copies_everything_itself():
    s, a = forked("async-fork", 8 * MiB)
    s.exit("p")
    assert s.events()["pt_copied_sync"] == 4 and not s.k.background
    s.touch("c", a, 8 * MiB)
    assert s.k.offpath["pt_copied_background"] == 0
    assert s.process("c")["minflt"] == 0  # the child maps everything: its copy is complete


def test_a_span_two_vmas_share_is_copied_once_and_not_charged_to_the_fork():
    s = System("async-fork", aslr_bits=0, check=True)
    s.spawn("p")
    a = s.mmap("p", MiB, addr=BASE, fixed=True)
    b = s.mmap("p", 2 * MiB, prot="rwx", addr=BASE + MiB, fixed=True)  # two VMAs share the first span
    s.touch("p", a, MiB, write=True)
    s.touch("p", b, 2 * MiB, write=True)
    before = s.events()
    s.fork("p", "c")
    assert s.events()["pt_copied_sync"] == before["pt_copied_sync"]
    s.touch("c", a, PAGE)
    assert s.k.offpath["pt_copied_background"] == 3  # each VMA's part of the first span, and the second span
    assert s.k.offpath["pte_tables_copied"] == 2 and s.k.offpath["ptes_copied"] == 768
