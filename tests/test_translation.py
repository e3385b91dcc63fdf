"""The translation model: the LRU engine, the mechanisms behind the claim, sampling error, the contract."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ptshare import System
from ptshare.cli.main import main
from ptshare.scenario import Machine, Scenario, run
from ptshare.scenario.patterns import accesses
from ptshare.translation import DEFAULT, Translation
from ptshare.translation.lru import COLD, LruStack, lru_reference

GiB = 1 << 30
FIELDS = {"accesses", "tlb_misses", "walks", "walk_refs", "walk_refs_llc_miss", "data_llc_miss", "est_ns"}
EXTRA = {"refs_l1", "refs_l2", "refs_llc", "refs_dram", "walk_refs_llc"}


@pytest.mark.parametrize("capacity", [1, 2, 7, 64])
@pytest.mark.parametrize("universe", [5, 40, 1000])
def test_lru_stack_distances_are_exact(capacity, universe):
    rng = np.random.default_rng(capacity * 1000 + universe)
    stack, ref = LruStack(capacity), []
    for _ in range(25):
        keys = rng.integers(0, universe, size=int(rng.integers(0, 80))).astype(np.uint64)
        got = stack.access(keys)
        want = lru_reference(keys, capacity, ref)
        assert np.array_equal(np.where(got < capacity, got, COLD), np.where(want < capacity, want, COLD))
    assert len(stack) == len(ref)


def _backends(policy: str, n: int, size: int, count: int, *, translation=True, rounds: int = 1,
              pattern: str = "zipf") -> System:
    """A postmaster's shared segment, ``n`` forked backends reading zipf samples of it in turn."""
    s = System(policy, aslr_bits=0, translation=translation)
    s.create_object("buf", "shmem", size)
    s.spawn("pm")
    seg = s.mmap("pm", size, object="buf", shared=True)
    s.touch("pm", seg, write=True)
    for i in range(n):
        s.fork("pm", f"be{i}")
    s.translation.take_step()
    for r in range(rounds):
        for i in range(n):
            s.access(f"be{i}", accesses(seg, size, pattern, count=count, seed=1000 * r + i, zipf_s=1.1))
    return s


def _steady(s: System, n: int, size: int, count: int):
    """One more round after the warm-up: the steady state."""
    s.translation.take_step()
    seg = s.task("be0").mm.vmas[0].vm_start
    for i in range(n):
        s.access(f"be{i}", accesses(seg, size, "zipf", count=count, seed=99_999 + i, zipf_s=1.1))
    return s.translation.take_step()


def test_same_tlb_misses_under_linux_and_shared_pt():
    """TLB entries are tagged by address space: sharing tables shares no TLB entry."""
    figs = {p: _backends(p, 8, GiB, 4000).translation.take_step() for p in ("linux", "shared-pt")}
    assert figs["linux"].tlb_misses > 0
    for field in ("accesses", "tlb_misses", "walks", "walk_refs", "data_llc_miss"):
        assert getattr(figs["linux"], field) == getattr(figs["shared-pt"], field), field


def test_shared_tables_take_walks_out_of_dram_once_private_tables_exceed_the_llc():
    """16 backends that have each mapped all of a 256 MiB pool: 16 x 512 KiB of private PTE tables
    against a CPU with a 4 MiB LLC, which one shared set of 512 KiB fits."""
    small = dataclasses.replace(DEFAULT, l2=256 << 10, llc=4 << 20)
    figs = {}
    for policy in ("linux", "shared-pt"):
        s = System(policy, aslr_bits=0, translation={"cpu": small})
        s.create_object("buf", "shmem", 256 << 20)
        s.spawn("pm")
        seg = s.mmap("pm", 256 << 20, object="buf", shared=True)
        s.touch("pm", seg, write=True)
        for i in range(16):
            s.fork("pm", f"be{i}")
            s.touch(f"be{i}", seg)  # every backend maps the whole pool: no fault from here on
        before = s.k.events["fault"]
        figs[policy] = _steady(s, 16, 256 << 20, 3000)
        assert s.k.events["fault"] == before
    linux, shared = figs["linux"], figs["shared-pt"]
    assert linux.walks == shared.walks
    assert shared.walk_refs_llc_miss < 0.5 * linux.walk_refs_llc_miss
    assert shared.est_ns < linux.est_ns


def test_few_backends_whose_tables_fit_gain_nothing():
    """2 backends over 64 MiB: 2 x 128 KiB of PTE tables, once read, stay in the LLC either way."""
    figs = {p: _steady(_backends(p, 2, 64 << 20, 20_000, rounds=2, pattern="random"), 2, 64 << 20, 20_000)
            for p in ("linux", "shared-pt")}
    assert figs["linux"].walk_refs_llc_miss == figs["shared-pt"].walk_refs_llc_miss == 0


def _walk_refs_per_walk(kind: str) -> float:
    nopwc = dataclasses.replace(DEFAULT, pwc={})
    s = System("linux", aslr_bits=0, translation={"cpu": nopwc})
    s.create_object("seg", kind, GiB)
    s.spawn("p")
    seg = s.mmap("p", GiB, object="seg", shared=True)
    s.touch("p", seg, write=True)
    s.translation.take_step()
    s.access("p", accesses(seg, GiB, "random", count=1000, seed=3))
    fig = s.translation.take_step()
    assert fig.walks > 0
    return fig.walk_refs / fig.walks


def test_hugetlb_2mib_pages_need_one_level_fewer():
    assert _walk_refs_per_walk("shmem") == 4
    assert _walk_refs_per_walk("hugetlb") == 3


def test_paging_structure_caches_shorten_walks():
    s = _backends("linux", 1, GiB, 4000)
    fig = s.translation.take_step()
    assert 1 <= fig.walk_refs / fig.walks < 2  # the PDE is cached: mostly the PTE alone is read


def _small_touches(n_procs: int, cpus: int = 1) -> tuple[System, list[float]]:
    s = System("linux", aslr_bits=0, cpus=cpus, translation=True)
    s.create_object("buf", "shmem", 8 << 20)
    s.spawn("pm")
    seg = s.mmap("pm", 8 << 20, object="buf", shared=True)
    s.touch("pm", seg, write=True)
    for i in range(n_procs):
        s.fork("pm", f"p{i}")
        s.touch(f"p{i}", seg, length=64 << 12)
    s.translation.take_step()
    misses = []
    for i in range(n_procs):
        s.touch(f"p{i}", seg, length=64 << 12)
        misses.append(s.translation.take_step().walks)
    return s, misses


def test_six_address_spaces_keep_their_entries_a_seventh_evicts():
    """TLB_NR_DYN_ASIDS: a CPU keeps tagged entries for six mms; round-robin over seven loses them."""
    _s, six = _small_touches(6)
    _s, seven = _small_touches(7)
    assert sum(six) == 0
    assert all(m == 64 for m in seven)


def test_tlb_flush_mm_empties_that_mm():
    s, _ = _small_touches(2)
    seg = s.task("p0").mm.vmas[0].vm_start
    s.mprotect("p0", seg, 8 << 20, "r")  # changes p0's entries: one tlb_flush_mm
    s.touch("p0", seg, length=64 << 12)
    assert s.translation.take_step().walks == 64
    s.touch("p1", seg, length=64 << 12)
    assert s.translation.take_step().walks == 0


def test_sampling_error_is_small_against_the_full_simulation():
    """The default LLC sample (1/16 of the lines) against every line."""
    def figures(options):
        s = System("linux", aslr_bits=0, translation=options)
        s.create_object("buf", "shmem", 2 * GiB)
        s.spawn("pm")
        seg = s.mmap("pm", 2 * GiB, object="buf", shared=True)
        s.touch("pm", seg, write=True)
        for i in range(6):
            s.fork("pm", f"be{i}")
        s.translation.take_step()
        for r in range(2):
            for i in range(6):
                s.access(f"be{i}", accesses(seg, 2 * GiB, "zipf", count=8_000, seed=100 * r + i, zipf_s=1.1))
        return s.translation.take_step()

    full = figures({"llc_sample": 1})
    sampled = figures({})
    for field in ("tlb_misses", "walks", "walk_refs"):
        assert getattr(full, field) == getattr(sampled, field)
    for field in ("walk_refs_llc_miss", "data_llc_miss", "est_ns"):
        want, got = getattr(full, field), getattr(sampled, field)
        assert want > 1000 and abs(got - want) <= 0.08 * want, (field, got, want)


def test_off_by_default_and_fields_in_every_step(tmp_path):
    sc = Scenario("t", machine=Machine(aslr_bits=0))
    sc.object("buf", "shmem", 64 << 20)
    sc.step("spawn", pid="a")
    sc.step("mmap", pid="a", vma="b", object="buf", shared=True)
    sc.step("touch", pid="a", vma="b", pattern="random", count=500)
    off = run(sc, "linux").to_json()
    assert all("translation" not in s for s in off["steps"])
    on = run(sc, "linux", translation=True).to_json()
    for step in on["steps"]:
        assert set(step["translation"]) == FIELDS | EXTRA
        assert set(step["processes"]["a"]["translation"]) == FIELDS | EXTRA
    assert on["steps"][2]["translation"]["accesses"] == 500
    assert on["steps"][2]["processes"]["a"]["translation"]["accesses"] == 500


def test_machine_table_turns_it_on_and_cli_checks_it(tmp_path, capsys):
    path = tmp_path / "t.toml"
    body = ('name = "t"\n[machine]\ntranslation = true\ntranslation_cpu = "zen3"\n'
            '[[objects]]\nname = "o"\nkind = "shmem"\nsize = "16MiB"\n'
            '[[steps]]\nop = "spawn"\npid = "a"\n[[steps]]\nop = "mmap"\npid = "a"\nvma = "m"\nobject = "o"\n'
            'shared = true\n[[steps]]\nop = "touch"\npid = "a"\nvma = "m"\n')
    path.write_text(body)
    assert main(["run", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"][-1]["translation"]["accesses"] == 4096
    path.write_text(body.replace('"zen3"', '"pentium"'))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "translation_cpu = 'pentium' is not a CPU table; known: zen4, zen4-guest, zen3, golden-cove" in err
    path.write_text(body.replace("translation = true", "translation = 1"))
    assert main(["run", str(path)]) == 2
    assert "translation = 1 must be true or false" in capsys.readouterr().err
    path.write_text(body.replace('"zen3"', '"zen3"\ntranslation_sample = 0'))
    assert main(["run", str(path)]) == 2
    assert "translation_sample = 0 must be a whole number from 1 to 1048576" in capsys.readouterr().err
    path.write_text(body.replace('"zen3"', '"zen3"\ntranslation_sample = 4'))
    assert main(["run", str(path), "--format", "json"]) == 0  # a 4,096-access step: within 2**20, all simulated
    assert json.loads(capsys.readouterr().out)["steps"][-1]["translation"] == doc["steps"][-1]["translation"]
    assert main(["run", str(path).replace("t.toml", "x.toml"), "--backend", "host", "--translation"]) == 2


def test_compare_shows_translation(tmp_path, capsys):
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\n[[objects]]\nname = "o"\nkind = "shmem"\nsize = "16MiB"\n'
                    '[[steps]]\nop = "spawn"\npid = "a"\n[[steps]]\nop = "mmap"\npid = "a"\nvma = "m"\n'
                    'object = "o"\nshared = true\n[[steps]]\nop = "touch"\npid = "a"\nvma = "m"\n')
    assert main(["compare", str(path), "--policy", "linux,shared-pt", "--translation"]) == 0
    out = capsys.readouterr().out
    assert "page walks" in out and "walk references from DRAM" in out
    assert main(["compare", str(path), "--policy", "linux", "--translation", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policies"]["linux"]["translation"]["accesses"] == 4096


def test_bad_options_are_refused():
    s = System("linux")
    with pytest.raises(ValueError, match="llc_sample a power of two"):
        Translation(s.k, llc_sample=3)
    with pytest.raises(ValueError, match="sample and exact must be >= 1"):
        Translation(s.k, sample=0)


def _rounds(policy: str, options: dict) -> list:
    """48 backends over a 1 GiB pool, two rounds of zipf reads, each round one step."""
    s = _backends(policy, 48, GiB, 20_000, translation=options, rounds=0)
    seg = s.task("be0").mm.vmas[0].vm_start
    out = []
    for r in range(2):
        for i in range(48):
            s.access(f"be{i}", accesses(seg, GiB, "zipf", count=20_000, seed=100 * r + i, zipf_s=1.1))
        out.append(s.translation.take_step())
    return out


@pytest.mark.parametrize("policy", ["linux", "shared-pt"])
def test_touch_sampling_error_is_small_against_the_full_simulation(policy):
    """Steps of 960,000 accesses simulated on a sample: the first 262,144 accesses of each, then
    1 in 8 (13 of the 48 touches a step), the others given the simulated ones' figures per access.
    The postmaster's write of the pool (262,144 accesses) is simulated whole either way."""
    full = _rounds(policy, {"sample": 1})
    sampled = _rounds(policy, {"sample": 8, "exact": 1 << 18})
    for want, got in zip(full, sampled, strict=True):
        assert got.accesses == want.accesses
        for field in ("tlb_misses", "walks", "walk_refs"):
            assert abs(getattr(got, field) / getattr(want, field) - 1) < 0.01, field
        assert abs(got.est_ns / want.est_ns - 1) < 0.05


def test_nested_paging_walks_are_two_dimensional():
    """In a guest each guest entry read is preceded by the host entry for its table page, and the
    walk ends with the host entry for the data page; TLB entries map at most a host page."""
    nopwc = dataclasses.replace(DEFAULT, pwc={}, host_page=4096)
    s = System("linux", aslr_bits=0, translation={"cpu": nopwc})
    s.create_object("seg", "hugetlb", 64 << 20)
    s.spawn("p")
    seg = s.mmap("p", 64 << 20, object="seg", shared=True)
    s.touch("p", seg, write=True)
    s.translation.take_step()
    s.access("p", accesses(seg, 64 << 20, "random", count=4000, seed=1))
    fig = s.translation.take_step()
    assert fig.walk_refs == 7 * fig.walks  # 3 guest entries, 3 host entries for their tables, 1 for the data
    assert fig.walks > 0.5 * fig.accesses  # 16,384 host pages do not fit 3,072 entries; 32 huge pages would


def test_nested_host_entries_of_4kib_frames_each_take_a_line():
    """A sequential read in a guest: 8 consecutive 2 MiB-folio frames share a line of host entries,
    8 consecutive 4 KiB frames (scattered by the guest's allocator) do not."""
    tiny = dataclasses.replace(DEFAULT, pwc={}, host_page=4096, l1d=4096, l2=4096, llc=1 << 16)
    misses = {}
    for kind in ("shmem", "hugetlb"):
        s = System("linux", aslr_bits=0, translation={"cpu": tiny, "llc_sample": 1})
        s.create_object("seg", kind, 64 << 20)
        s.spawn("p")
        seg = s.mmap("p", 64 << 20, object="seg", shared=True)
        s.touch("p", seg, write=True)
        s.translation.take_step()
        s.touch("p", seg)
        fig = s.translation.take_step()
        misses[kind] = fig.walk_refs_llc_miss / fig.walks
    assert misses["shmem"] - misses["hugetlb"] > 0.8


def test_served_references_add_up():
    s = _backends("linux", 2, 256 << 20, 5000)
    fig = s.translation.take_step()
    beyond_l2 = fig.walk_refs + fig.accesses - fig.served[0] - fig.served[1]  # exact: L1d and L2 are not sampled
    # the LLC sees 1/16 of these lines (here about 300): its estimate is within a few standard errors
    assert abs(fig.served[2] + fig.served[3] - beyond_l2) <= 0.2 * beyond_l2
    assert fig.served[3] == fig.walk_refs_llc_miss + fig.data_llc_miss


def test_experiment_with_translation_stores_and_shows_each_runs_figures(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    assert main(["experiment", "fork-exec", "--quick", "--translation", "--db", db, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["translation"] and doc["runs"]["made"] == len(doc["translation"])
    for run_figures in doc["translation"]:
        assert set(run_figures) == {"run", "policy"} | FIELDS | EXTRA
        assert run_figures["accesses"] > 0
    assert main(["experiment", "fork-exec", "--quick", "--db", db, "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "translation" not in plain and plain["runs"]["reused"] == 0  # runs of their own
    assert main(["experiment", "fork-exec", "--quick", "--translation", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "address translation, each run's touches" in out and "0 made now" in out
