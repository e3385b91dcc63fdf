"""Where the simulated allocator puts frames ([machine] scattered, frames_in_order), what fork and
teardown count of it, and the per-call events of munmap, mprotect, mremap and madvise."""

import numpy as np
import pytest

from ptshare.errors import ScenarioError
from ptshare.mm.frames import PG_ANON, FrameTable, scattered
from ptshare.scenario import Machine, Scenario, load, run

MIB = 1 << 20


def _fork_scenario(size: int, **machine) -> Scenario:
    sc = Scenario("fork", "written anonymous memory, forked; the child exits", Machine(aslr_bits=0, **machine))
    sc.step("spawn", pid="p")
    sc.step("mmap", pid="p", vma="a", size=size, align="2MiB")
    sc.step("touch", pid="p", vma="a", access="write")
    sc.step("fork", pid="p", child="c")
    sc.step("exit", pid="c")
    return sc


def _in_order(pfns: np.ndarray) -> float:
    return float(np.mean(np.abs(np.diff(pfns)) == 1))


@pytest.mark.parametrize("run_length", [1, 8, 64, 512])
def test_never_used_frames_come_in_runs_of_frames_in_order(run_length):
    frames = FrameTable(None, scattered_bytes=0, frames_in_order=run_length)
    pfns = np.concatenate([frames.alloc(n, 0) for n in (1, 7, 500, 3000, 1)])
    assert len(np.unique(pfns)) == len(pfns) and pfns.min() > 1  # never frame 0 or the zero page
    assert _in_order(pfns) == pytest.approx(1 - 1 / run_length, abs=0.02)


def test_the_scattered_pool_comes_first_in_no_order_then_frames_in_order():
    frames = FrameTable(None, scattered_bytes=16 * MIB, frames_in_order=512)
    pool = frames.alloc(4096, 0)  # 16 MiB
    after = frames.alloc(4096, 0)
    assert _in_order(pool) < 0.01
    assert _in_order(after) > 0.99
    assert len(np.unique(np.concatenate([pool, after]))) == 8192


def test_freed_frames_are_reused_before_the_pool_and_new_frames():
    frames = FrameTable(None, scattered_bytes=16 * MIB)
    first = frames.alloc(100, 0)
    frames.free(first)
    assert set(frames.alloc(100, 0)) == set(first)


def test_a_machine_smaller_than_the_pool_deals_only_what_it_has():
    frames = FrameTable(8 * MIB, scattered_bytes=1 << 30)
    pfns = frames.alloc(2048, 0)
    assert len(np.unique(pfns)) == 2048


def test_frames_in_order_must_divide_a_huge_page():
    with pytest.raises(Exception, match="power of two"):
        FrameTable(None, frames_in_order=3)


def test_scattered_counts_entries_not_next_to_the_previous_ones_frame():
    pfn = np.array([[10, 11, 12, 30, 29, 28, 5, 0]])
    mask = np.array([[True, True, True, True, True, True, True, False]])
    assert scattered(pfn, mask) == 3  # 10 (first), 30, 5; 29 and 28 come down in order
    mask[0, 1] = False
    assert scattered(pfn, mask) == 4  # 12 follows an entry not selected


@pytest.mark.parametrize("pool, run_length, expected", [(0, 512, 0.0), (0, 8, 1 / 8), (256 * MIB, 8, None)])
def test_fork_and_teardown_count_the_ptes_whose_frames_are_out_of_order(pool, run_length, expected):
    size = 512 * MIB
    res = run(_fork_scenario(size, scattered=pool, frames_in_order=run_length), "linux")
    fork = next(s for s in res.steps if s.op == "fork").events
    exit_ = next(s for s in res.steps if s.op == "exit").events
    ptes = size // 4096
    share = fork["ptes_copied_scattered"] / ptes
    if expected is None:  # the pool's half in no order, the rest in runs of 8
        expected = 0.5 + 0.5 / 8
    assert share == pytest.approx(expected, abs=0.01 + 256 / ptes)  # a table's first entry counts
    assert exit_["ptes_zapped_scattered"] == fork["ptes_copied_scattered"]


def test_scattered_frames_cost_fork_more():
    costs = [next(s for s in run(_fork_scenario(256 * MIB, scattered=pool), "linux").steps if s.op == "fork").est_ns
             for pool in (0, 1 << 30)]
    assert costs[1] > costs[0]


def test_machine_scattered_and_frames_in_order_are_read_and_checked(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('name = "m"\n[machine]\nscattered = "64MiB"\nframes_in_order = 16\n'
                 '[[steps]]\nop = "spawn"\npid = "p"\n')
    m = load(f).machine
    assert (m.scattered, m.frames_in_order) == (64 * MIB, 16)
    f.write_text('name = "m"\n[machine]\nframes_in_order = 12\n[[steps]]\nop = "spawn"\npid = "p"\n')
    with pytest.raises(ScenarioError, match="frames_in_order = 12 must be a power of two from 1 to 512"):
        load(f)
    f.write_text('name = "m"\n[machine]\nscattered = "lots"\n[[steps]]\nop = "spawn"\npid = "p"\n')
    with pytest.raises(ScenarioError, match="scattered"):
        load(f)


def test_mprotect_counts_every_present_pte_of_the_range():
    """change_pte_range() rewrites every present entry, also those whose permission stays: after a
    fork the parent's pages are shared, so making them writable again changes no write bit."""
    sc = Scenario("mprotect", "", Machine(aslr_bits=0))
    sc.step("spawn", pid="p")
    sc.step("mmap", pid="p", vma="a", size=4 * MIB)
    sc.step("touch", pid="p", vma="a", access="write", length=2 * MIB)
    sc.step("fork", pid="p", child="c")
    sc.step("mprotect", pid="p", vma="a", prot="r")
    sc.step("mprotect", pid="p", vma="a", prot="rw")
    steps = run(sc, "linux").steps
    for step in steps[4:6]:
        assert step.events["ptes_changed"] == 512
        assert step.events["mprotect"] == 1


def test_munmap_mremap_and_madvise_are_counted_once_per_call():
    sc = Scenario("calls", "", Machine(aslr_bits=0))
    sc.step("spawn", pid="p")
    sc.step("mmap", pid="p", vma="a", size=4 * MIB)
    sc.step("mremap", pid="p", vma="a", size=8 * MIB)
    sc.step("madvise", pid="p", vma="a", advice="dontneed")
    sc.step("mmap", pid="p", vma="v{i}", size=4096, align="8KiB", repeat=3)
    sc.step("munmap", pid="p", vma="v{i}", repeat=3)
    steps = run(sc, "linux").steps
    assert steps[2].events["mremap"] == 1 and steps[3].events["madvise"] == 1
    assert steps[5].events["munmap"] == 3


def test_a_host_runs_frames_are_modelled_as_the_backend_leaves_them():
    """The backend writes and frees memory before each run (host.guest.pre_touch): the simulator
    side of a host comparison gets no scattered pool and runs of 2, whatever the scenario says."""
    from ptshare.host.plan import HOST_RUN_FRAMES, host_scenario

    machine = host_scenario(_fork_scenario(4 * MIB, scattered=1 << 30)).machine
    assert (machine.scattered, machine.frames_in_order) == (0, 2) == tuple(HOST_RUN_FRAMES.values())


def test_every_frame_handed_out_lies_below_the_frame_tables_end():
    """Runs are shuffled inside each 2 MiB block, so a frame handed out may lie above the count of
    frames carved so far; the invariant checks scan up to ``end``."""
    frames = FrameTable(None, scattered_bytes=0, frames_in_order=8)
    pfns = frames.alloc(9, PG_ANON)
    assert pfns.max() < frames.end and set(frames.used_pfns()) == set(pfns)
