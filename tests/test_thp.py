"""Transparent huge pages for anonymous memory (mm/huge_memory.py), at several geometries and
policies: the counts Linux 6.18 gives (measured on the host, and checked against it by the
thp-*.toml scenarios of the validation suite), with the invariant checker on after every step."""

import os
from pathlib import Path

import pytest

from ptshare import POLICIES, System
from ptshare.cli.main import main

MiB = 1 << 20
SUITE = Path(__file__).parent.parent / "scenarios" / "validate"


def heap(policy="linux", thp="madvise", size=8 * MiB, advise=True, levels=4):
    """A process with a 2 MiB-aligned private anonymous mapping, advised MADV_HUGEPAGE."""
    s = System(policy, check=True, thp=thp, levels=levels)
    s.spawn("p")
    addr = s.mmap("p", size, align="2MiB")
    if advise:
        s.madvise_thp("p", addr, size, "hugepage")
    return s, addr


def counts(s, name="p"):
    p = s.process(name)
    return p["minflt"], p["vmpte_kb"], p["rss_anon_kb"]


@pytest.mark.parametrize("levels", [4, 5])
def test_a_write_maps_a_huge_page_per_fault_and_deposits_a_table(levels):
    s, a = heap(levels=levels)
    s.touch("p", a, 4096, write=True)
    # One fault; the PUD table, the PMD table and the deposited PTE table.
    assert counts(s) == (1, 12, 2048)
    s.touch("p", a, write=True)
    assert counts(s) == (4, 24, 8192)
    assert s.k.events["thp_fault_alloc"] == 4


def test_a_read_maps_the_huge_zero_page_and_a_write_replaces_it():
    s, a = heap()
    s.touch("p", a)
    assert counts(s) == (4, 24, 0)
    assert s.k.events["thp_zero_page"] == 4
    s.touch("p", a + 4096 * 5, 4096, write=True)
    assert counts(s) == (5, 24, 2048)
    s.touch("p", a, write=True)
    assert counts(s) == (8, 24, 8192)


def test_without_the_zero_page_a_read_allocates_a_huge_page():
    s, a = heap()
    s.k.thp_use_zero_page = False
    s.touch("p", a, 4096)
    assert counts(s) == (1, 12, 2048)


@pytest.mark.parametrize("thp,advise,faults", [("never", True, 2048), ("madvise", False, 2048),
                                                ("madvise", True, 4), ("always", False, 4)])
def test_the_machine_setting_and_the_advice(thp, advise, faults):
    s, a = heap(thp=thp, advise=advise)
    s.touch("p", a, write=True)
    assert counts(s)[0] == faults
    assert counts(s)[2] == 8192


def test_nohugepage_and_ranges_the_vma_does_not_cover_whole_get_small_pages():
    s = System(check=True, thp="always")
    s.spawn("p")
    a = s.mmap("p", 5 * MiB, align="2MiB")
    s.madvise_thp("p", a + 2 * MiB, 2 * MiB, "nohugepage")
    s.touch("p", a, 5 * MiB, write=True)
    # [0, 2 MiB) huge; [2, 4) advised off; [4, 5) not a whole 2 MiB of the VMA.
    assert counts(s)[0] == 1 + 512 + 256
    assert s.process("p")["vmas"] == 3


@pytest.mark.parametrize("policy", POLICIES)
def test_fork_write_protects_both_and_cow_splits_and_copies_one_page(policy):
    s, a = heap(policy)
    s.touch("p", a, write=True)
    s.fork("p", "c")
    assert counts(s, "c") == (0, 24, 8192)  # the child deposits tables of its own
    assert s.process("c")["pt_shared_kb"] == 0  # sharing policies leave huge PMDs private
    s.touch("c", a)
    assert counts(s, "c")[0] == 0
    s.touch("c", a + 3 * 4096, 4096, write=True)
    assert counts(s, "c") == (1, 24, 8192)
    assert s.k.events["thp_split_pmd"] == 1
    s.touch("c", a, 2 * MiB, write=True)
    assert counts(s, "c")[0] == 512
    s.touch("p", a + 2 * MiB, 4096, write=True)  # the child still maps that folio: split, copy
    assert counts(s, "p")[0] == 5
    s.exit("c")
    s.touch("p", a + 4 * MiB, 4096, write=True)  # no other mapping now: reused whole
    assert counts(s, "p") == (6, 24, 8192)
    assert s.k.events["thp_wp_reuse"] == 1


def test_partial_munmap_splits_and_whole_munmap_zaps_the_deposited_table():
    s, a = heap()
    s.touch("p", a, write=True)
    s.munmap("p", a + 4096, 4096)
    assert counts(s) == (4, 24, 8188)
    s.munmap("p", a + 2 * MiB, 2 * MiB)
    assert counts(s) == (4, 20, 6140)


def test_mprotect_splits_at_its_ends_and_keeps_whole_huge_pages():
    s, a = heap()
    s.touch("p", a, write=True)
    s.mprotect("p", a + 4096, 4096, "r")
    s.mprotect("p", a + 4 * MiB, 4 * MiB, "r")
    assert s.k.events["thp_split_pmd"] == 1
    s.mprotect("p", a + 4 * MiB, 4 * MiB, "rw")
    s.touch("p", a + 4 * MiB, write=True)  # exclusive: writable again without a fault
    assert counts(s) == (4, 24, 8192)


def test_dontneed_of_part_splits_and_of_a_whole_huge_page_zaps_it():
    s, a = heap()
    s.touch("p", a, write=True)
    s.madvise_dontneed("p", a + 4096, 4096)
    assert counts(s) == (4, 24, 8188)
    s.touch("p", a + 4096, 4096)  # the 4 KiB zero page
    assert counts(s) == (5, 24, 8188)
    s.madvise_dontneed("p", a + 2 * MiB, 2 * MiB)
    assert counts(s) == (5, 20, 6140)
    s.touch("p", a + 2 * MiB, 4096, write=True)
    assert counts(s) == (6, 24, 8188)


@pytest.mark.parametrize("offset,splits", [(0, 0), (4096, 4)])
def test_mremap_moves_huge_pmds_whole_when_aligned_and_splits_them_when_not(offset, splits):
    s, a = heap()
    s.touch("p", a, write=True)
    new = s.mremap("p", a, 8 * MiB, 8 * MiB, new_addr=a + 64 * MiB + offset)
    assert s.k.events["thp_split_pmd"] == splits
    assert s.k.events["thp_move_pmd"] == (4 if not splits else 0)
    s.touch("p", new, write=True)
    assert counts(s)[0] == 4 and counts(s)[2] == 8192
    # Aligned: 4 deposited tables; 4 KiB off: 5 PTE tables (4 moved contents + one more span).
    assert counts(s)[1] == (24 if not splits else 28)


def test_nothing_is_left_after_exit():
    from ptshare.oracle.invariants import check_empty

    s, a = heap()
    s.touch("p", a, write=True)
    s.fork("p", "c")
    s.touch("c", a + 4096, 4096, write=True)
    s.munmap("p", a + 12288, 3 * MiB)
    s.exit_all()
    check_empty(s)


def test_scenario_errors_name_what_is_allowed(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[machine]\nthp = "sometimes"\n[[steps]]\nop = "spawn"\npid = "p"\n')
    assert main(["run", str(bad)]) == 2
    assert "thp = 'sometimes' is not allowed; use one of always, madvise, never" in capsys.readouterr().err
    bad.write_text('name = "x"\n[[steps]]\nop = "spawn"\npid = "p"\n[[steps]]\nop = "mmap"\npid = "p"\nvma = "h"\n'
                   'size = "2MiB"\n[[steps]]\nop = "madvise"\npid = "p"\nvma = "h"\nadvice = "huge"\n')
    assert main(["run", str(bad)]) == 2
    assert "use one of dontneed, hugepage, nohugepage" in capsys.readouterr().err


def _thp_host_problem():
    from ptshare.host.backend import host_problem
    from ptshare.host.objects import HostError
    from ptshare.host.thp import check_thp_host

    problem = host_problem(need_root=True)
    if problem:
        return problem
    try:
        check_thp_host()
    except HostError as exc:
        return str(exc)
    return None


@pytest.mark.skipif(_thp_host_problem() is not None, reason=str(_thp_host_problem()))
def test_the_host_run_really_uses_huge_pages():
    """The host's faults show huge pages (one per 2 MiB): the THP scenarios do not agree with the
    kernel merely because neither side made any."""
    from ptshare.host.backend import run_on_host
    from ptshare.scenario import load

    result, error = run_on_host(load(str(SUITE / "thp-write.toml")))
    assert error is None
    assert result.steps[3].processes["p"]["minflt"] == 32
    assert os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")
