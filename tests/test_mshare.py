"""mshare (policy mshare, object kind mshare): a region's PUD tables held by a host mm, linked into
every process that maps the region; the region's rules (mapped whole at a multiple of 512 GiB, never
split, mprotect and mremap refused) hold under every policy."""

from pathlib import Path

import numpy as np
import pytest

from ptshare import POLICIES, SimulationError, System
from ptshare.cli.main import main
from ptshare.errors import ScenarioError
from ptshare.mm.translate import read_stamps
from ptshare.oracle.invariants import check_empty
from ptshare.scenario import Scenario

MiB = 1 << 20
GiB = 1 << 30
REGION = 512 * GiB
PAGE = 4096
BASE = 0x600000000000  # a multiple of 512 GiB


def _region(policy, size=64 * MiB, region=None, check=True, levels=4):
    s = System(policy, aslr_bits=0, check=check, levels=levels)
    s.create_object("sga", "mshare", size, region=region)
    return s


def _attach(s, name, addr=BASE):
    s.spawn(name)
    return s.mmap(name, object="sga", shared=True, addr=addr, fixed=True)


@pytest.mark.parametrize("levels", [4, 5])
def test_a_second_reader_of_a_populated_region_takes_one_fault_and_adds_no_tables(levels):
    s = _region("mshare", levels=levels)
    a = _attach(s, "writer")
    s.touch("writer", a, 64 * MiB, write=True)
    assert s.process("writer")["minflt"] == 1 + 64 * MiB // PAGE  # the link, then one per page written
    _attach(s, "reader")
    tables = s.system()["pagetables_kb"]
    s.touch("reader", a, 64 * MiB)
    # One fault links the host's PUD table (find_shared_vma: VM_FAULT_NOPAGE); every page is there.
    assert s.process("reader")["minflt"] == 1
    # No table of its own but, with 5 levels, the P4D table its entry is linked in (walk_to_p4d's p4d_alloc).
    assert s.system()["pagetables_kb"] - tables == (4 if levels == 5 else 0)
    assert s.process("reader")["vmpte_kb"] == 0
    addrs = np.arange(a, a + 64 * MiB, PAGE, dtype=np.int64)
    assert np.array_equal(read_stamps(s.k, s.task("reader").mm, addrs), read_stamps(s.k, s.task("writer").mm, addrs))


def test_under_linux_the_same_region_is_shmem():
    s = _region("linux")
    a = _attach(s, "writer")
    s.touch("writer", a, 64 * MiB, write=True)
    _attach(s, "reader")
    tables = s.system()["pagetables_kb"]
    s.touch("reader", a, 64 * MiB)
    assert s.process("reader")["minflt"] == 64 * MiB // PAGE // 16  # fault-around maps 16 pages
    assert s.system()["pagetables_kb"] - tables == 4 * (32 + 1 + 1)  # 32 PTE tables, a PMD and a PUD table
    assert s.process("reader")["vmpte_kb"] == 4 * 34


def _written_and_read(policy="mshare"):
    """p writes the region's 64 MiB object, then q attaches and reads it."""
    s = _region(policy)
    a = _attach(s, "p")
    s.touch("p", a, 64 * MiB, write=True)
    _attach(s, "q")
    s.touch("q", a, 64 * MiB)
    return s, a


def test_the_host_mm_is_charged_the_tables_not_the_processes():
    s, _a = _written_and_read()
    for name in ("p", "q"):
        # VmPTE and RSS of the region are the host's (its faults fill its tables and its counters).
        assert s.process(name)["vmpte_kb"] == 0
        assert s.process(name)["rss_kb"] == 0
        assert s.process(name)["pt_shared_kb"] == 4 * (32 + 1 + 1)
    # PageTables counts each table once: three PGDs (p, q, the host), the host's PUD, PMD and 32 PTE tables.
    assert s.system()["pagetables_kb"] == 4 * (3 + 1 + 1 + 32)


def test_the_host_keeps_the_tables_while_no_process_maps_the_region():
    s = _region("mshare")
    a = _attach(s, "p")
    s.touch("p", a, 64 * MiB, write=True)
    s.exit("p")
    assert s.system()["pagetables_kb"] == 4 * (1 + 1 + 1 + 32)  # the host's PGD and tables
    _attach(s, "q", BASE + 2 * REGION)  # another address: the key is the region and its offset
    s.touch("q", BASE + 2 * REGION, 64 * MiB)
    assert s.process("q")["minflt"] == 1
    s.exit("q")
    s.drop_objects()  # unlink(): the host exits
    check_empty(s)


def test_a_region_of_two_spans_takes_one_link_fault_per_span():
    s = _region("mshare", size=REGION + 4 * MiB, check=False)  # a region of two spans: 1 TiB
    a = _attach(s, "p")
    s.touch("p", a, 4 * MiB, write=True)
    s.touch("p", a + REGION, 4 * MiB, write=True)
    assert s.process("p")["minflt"] == 2 * (1 + 1024)
    _attach(s, "q")
    s.touch("q", a, 4 * MiB)
    s.touch("q", a + REGION, 4 * MiB)
    assert s.process("q")["minflt"] == 2


def test_fork_child_inherits_the_region_and_links_on_its_first_access():
    s = _region("mshare")
    a = _attach(s, "p")
    s.touch("p", a, 64 * MiB, write=True)
    tables = s.system()["pagetables_kb"]
    s.fork("p", "c")
    assert s.system()["pagetables_kb"] - tables == 4  # the child's PGD
    s.touch("c", a, 64 * MiB, write=True)
    assert s.process("c")["minflt"] == 1
    assert s.system()["pagetables_kb"] - tables == 4


def test_madvise_dontneed_unlinks_the_table_and_keeps_the_pages():
    s, a = _written_and_read()
    s.madvise_dontneed("q", a, 2 * MiB)  # mshare_vm_op_unshare_page_range(): the link goes, not the pages
    s.touch("p", a, 64 * MiB)
    assert s.process("p")["minflt"] == 1 + 64 * MiB // PAGE  # nothing refaulted in the host's tables
    s.touch("q", a, 64 * MiB)
    assert s.process("q")["minflt"] == 2


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_region_rules_hold_under_every_policy(policy):
    s = _region(policy, check=False)
    a = _attach(s, "p")
    refused = [
        lambda: s.mprotect("p", a, PAGE, "r"),  # mshare_vm_op_mprotect()
        lambda: s.mprotect("p", a, REGION, "r"),
        lambda: s.munmap("p", a, GiB),  # a split: mshare_vm_op_split()
        lambda: s.munmap("p", a + GiB, PAGE),
        lambda: s.madvise_thp("p", a, 2 * MiB, "hugepage"),
        lambda: s.mremap("p", a, REGION, 2 * REGION),
        lambda: s.mmap("p", object="sga", shared=True, addr=BASE + REGION + 2 * MiB, fixed=True),
        lambda: s.mmap("p", REGION // 2, object="sga", shared=True),
        lambda: s.mmap("p", REGION - GiB, object="sga", offset=GiB, shared=True),
        lambda: s.mmap("p", object="sga", shared=False),
        lambda: s.mmap("p", object="sga", shared=True, addr=BASE + REGION, fixed=True),  # twice in one process
        lambda: s.truncate("sga", 32 * MiB),
    ]
    for call in refused:
        with pytest.raises(SimulationError, match="EINVAL"):
            call()
    s.madvise_dontneed("p", a, 2 * MiB)
    assert s.mmap("p", object="sga", shared=True, addr=a, fixed=True) == a  # over itself: allowed
    s.munmap("p", a, REGION)  # whole: allowed
    b = s.mmap("p", object="sga", shared=True)  # placed by msharefs_get_unmapped_area()
    assert b % REGION == 0


def test_an_object_needs_a_region_of_whole_512_gib_spans():
    with pytest.raises(SimulationError, match="512 GiB"):
        System("mshare").create_object("r", "mshare", 64 * MiB, region=GiB)
    with pytest.raises(SimulationError, match="only an mshare object"):
        System("linux").create_object("r", "shmem", 64 * MiB, region=REGION)
    sc = Scenario("s")
    with pytest.raises(ScenarioError, match="multiple of 512 GiB"):
        sc.object("r", "mshare", "1GiB", region="1TB")
    sc.object("big", "mshare", "600GiB")
    assert sc.objects[0].region == 2 * REGION


_SCENARIO = """name = "mshare-misaligned"
objects = [{{name = "sga", kind = "mshare", size = "64MiB"}}]
steps = [{{op = "spawn", pid = "p"}},
         {{op = "mmap", pid = "p", vma = "sga", object = "sga", shared = true, addr = "{addr}", fixed = true}}]
"""


def test_a_misaligned_region_is_a_scenario_error(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(_SCENARIO.format(addr="0x600000200000"))
    assert main(["run", str(path), "--policy", "mshare,linux"]) == 2
    assert "EINVAL" in capsys.readouterr().err
    path.write_text(_SCENARIO.format(addr="0x600000000000"))
    assert main(["run", str(path), "--policy", "mshare,linux"]) == 0


def test_a_sweep_keeps_and_varies_the_region():
    from ptshare.scenario import load
    from ptshare.sweep.keys import resolve, with_values

    sc = load(Path(__file__).parent.parent / "scenarios" / "sga-mshare.toml")
    axis = resolve(sc, "objects.sga.region")
    assert with_values(sc, [(axis, "1TiB")]).objects[0].region == 2 * REGION
    size = resolve(sc, "objects.sga.size")
    assert with_values(sc, [(size, "4GiB")]).objects[0].region == REGION


def test_processes_keep_the_pids_they_have_under_linux():
    pids = {}
    for policy in ("linux", "mshare"):
        s, _a = _written_and_read(policy)
        s.spawn("later")
        pids[policy] = [s.process(name)["pid"] for name in ("p", "q", "later")]
    assert pids["mshare"] == pids["linux"]  # the host mm is no process
