"""The host backend and `ptshare validate` on this machine's kernel.

These run real processes, mount a hugetlbfs and reserve huge pages: they need Linux on x86-64 and
root, and are skipped (with the reason) anywhere else.
"""

import json
import os
from pathlib import Path

import pytest

from ptshare.cli.main import main
from ptshare.host import validate as validate_module
from ptshare.host.backend import host_problem, run_on_host
from ptshare.host.objects import HostError, HostObjects, meminfo
from ptshare.host.validate import HOST_RUNS, validate
from ptshare.policies.base import Policy
from ptshare.scenario import load, loads

PROBLEM = host_problem(need_root=True)
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")

SUITE = Path(__file__).resolve().parents[1] / "scenarios" / "validate"

SMALL = """\
name = "small"

[[objects]]
name = "seg"
kind = "shmem"
size = "8MiB"

[[steps]]
op = "spawn"
pid = "p"

[[steps]]
op = "mmap"
pid = "p"
vma = "heap"
size = "4MiB"

[[steps]]
op = "touch"
pid = "p"
vma = "heap"
access = "write"

[[steps]]
op = "mmap"
pid = "p"
vma = "seg"
object = "seg"
shared = true

[[steps]]
op = "touch"
pid = "p"
vma = "seg"
access = "write"

[[steps]]
op = "fork"
pid = "p"
child = "c"

[[steps]]
op = "touch"
pid = "c"
vma = "seg"

[[steps]]
op = "exit"
pid = "p"
"""


def _write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_whole_suite_agrees_with_the_kernel(monkeypatch, capsys):
    """In a bare environment, as a CI job may give: the workers' interpreters then allocate
    differently, which once moved their own RSS mid-run (``worker.populate_own_memory``)."""
    for key in list(os.environ):
        if key not in ("PATH", "PYTEST_CURRENT_TEST"):
            monkeypatch.delenv(key)
    assert len(list(SUITE.glob("*.toml"))) >= 25
    assert main(["validate", "--summary"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "scenarios agree with the kernel" in out
    assert "interpreter's own" not in out and "did nothing" not in out, out


def test_a_wrong_model_fails_validation(monkeypatch, capsys):
    """Without fault-around (Linux before 3.15), a shmem read takes one fault per page, not per 16."""
    monkeypatch.setattr(Policy, "fault_around_pages", 1)
    path = str(SUITE / "shmem-fault-around.toml")
    verdict = validate(load(path))
    assert not verdict.ok
    assert verdict.host_runs == HOST_RUNS and all("faults" in what for what in verdict.rejected)
    bad = [r for r in verdict.rows if not r.ok]
    assert {r.metric for r in bad} == {"faults"}
    reader = [r for r in bad if r.process == "reader"]
    assert reader and reader[-1].host * 16 == reader[-1].sim  # 2048 faults on Linux, 32768 without it
    assert main(["validate", path]) == 1
    assert "<-- differs" in capsys.readouterr().out


def test_a_host_run_that_differs_is_run_again_and_reported(monkeypatch, capsys):
    """One host run with a fault too many (as when fault-around skips a locked folio), then a run
    that agrees: the scenario passes and the report names the run that did not."""
    real = validate_module.run_on_host
    calls = []

    def flaky(*args):
        result, error = real(*args)
        calls.append(1)
        if len(calls) == 1:
            result.steps[-1].processes["reader"]["minflt"] += 1
        return result, error

    monkeypatch.setattr(validate_module, "run_on_host", flaky)
    path = str(SUITE / "shmem-fault-around.toml")
    verdict = validate(load(path))
    assert verdict.ok and verdict.host_runs == 2
    assert len(verdict.rejected) == 1 and verdict.rejected[0].startswith("step ")
    assert "reader faults 2049 (simulator 2048)" in verdict.rejected[0]
    calls.clear()
    assert main(["validate", "--summary", path]) == 0
    out = capsys.readouterr().out
    assert "host run 1 of 2 differed" in out and "needed more than one host run: shmem-fault-around" in out
    calls.clear()
    assert main(["validate", "--runs", "1", path]) == 1  # no second chance
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--runs", "0", path])
    assert exc.value.code == 2
    assert "--runs takes a whole number of at least 1, not '0'" in capsys.readouterr().err


def test_run_host_json_contract(tmp_path, capsys):
    assert main(["run", _write(tmp_path, SMALL), "--backend", "host", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["schema"], doc["scenario"], doc["policy"], doc["backend"]) == ("ptshare.run/1", "small", "linux",
                                                                               "host")
    assert doc["final"] == doc["steps"][-1] and doc["complete"] is True
    for n, step in enumerate(doc["steps"]):
        assert step["index"] == n
        assert {"index", "op", "pid", "processes", "system", "est_ns", "wall_ns"} <= set(step)
        assert "pagetables_kb" in step["system"]
        for proc in step["processes"].values():
            assert {"minflt", "vmpte_kb", "rss_kb", "alive"} <= set(proc)
    final = doc["final"]["processes"]
    # 2 PTE tables for the heap, 4 for the segment, a PMD and a PUD table
    assert final["p"] == {**final["p"], "alive": False, "minflt": 1024 + 2048, "vmpte_kb": 4 * 8}
    assert final["c"]["alive"] is True and final["c"]["minflt"] == 2048 // 16
    assert doc["host"]["notes"] == []  # the interpreters' own parts did not move
    for worker in doc["host"]["workers"]:
        assert worker["interp_end"]["vmpte_kb"] > 0


def test_run_host_tables(tmp_path, capsys):
    path = _write(tmp_path, SMALL)
    assert main(["run", path, "--backend", "host"]) == 0
    assert "(host)" in capsys.readouterr().out
    assert main(["run", path, "--backend", "host", "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") > 8


def test_the_counts_do_not_depend_on_the_machine_being_quiet(tmp_path):
    """Two runs of the same scenario give the same counts; only times differ."""
    scenario = loads(SMALL, _write(tmp_path, SMALL))
    runs = [run_on_host(scenario)[0].to_json() for _ in range(2)]
    strip = [[{n: {k: v for k, v in p.items() if k != "pid"} for n, p in s["processes"].items()}
              for s in r["steps"]] for r in runs]
    assert strip[0] == strip[1]


def test_policy_other_than_linux_is_refused(tmp_path, capsys):
    assert main(["run", _write(tmp_path, SMALL), "--backend", "host", "--policy", "eager"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this machine's kernel" in err and "Traceback" not in err


def test_a_mapping_outside_the_window_is_refused(tmp_path, capsys):
    text = SMALL.replace('size = "4MiB"', 'size = "4MiB"\naddr = "0x7f0000000000"\nfixed = true')
    path = _write(tmp_path, text)
    assert main(["run", path, "--backend", "host"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}:" in err and "outside the range the host backend maps scenario memory in" in err


def test_a_scenario_too_big_for_this_host_is_refused(tmp_path, capsys):
    half_gib = meminfo()["MemAvailable"] // (1 << 20) // 2 + 1
    text = SMALL.replace('size = "4MiB"', f'size = "{half_gib}GiB"')
    assert main(["run", _write(tmp_path, text), "--backend", "host"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than half" in err and "MiB available now" in err


def test_huge_pages_that_cannot_be_reserved_are_refused_and_nothing_stays_reserved(monkeypatch):
    before = meminfo()["HugePages_Total"]
    monkeypatch.setattr("ptshare.host.objects._write_nr_hugepages", lambda value: None)  # the kernel finds none
    from ptshare.scenario.model import ObjectSpec

    with pytest.raises(HostError, match="could reserve only 0"):
        HostObjects([ObjectSpec("h", "hugetlb", 4 << 20)], 2)
    assert meminfo()["HugePages_Total"] == before


GROW_TOP = SUITE / "mremap-grow-top.toml"


def test_the_topmost_mapping_grows_in_place_on_the_host():
    """A realloc of the first (topmost) buffer: Linux grows it in place, above mmap_base, and so
    must the host run -- with room left above the scenario's mmap_base, and the same counts."""
    from ptshare.host.plan import WINDOW, make_plan

    scenario = load(GROW_TOP)
    plan = make_plan(scenario)
    (mremap,) = [op for s in plan.steps for op in s.ops if op.kind == "mremap"]
    assert mremap.args["new_addr"] == mremap.args["addr"]  # in place
    assert mremap.args["addr"] + (192 << 20) > plan.scenario.machine.mmap_base
    assert mremap.args["addr"] + (192 << 20) <= WINDOW[1]
    verdict = validate(scenario)
    assert verdict.ok, verdict.to_json()
    assert verdict.rows and verdict.refused is None


def test_validate_reports_a_refused_scenario_and_runs_the_others(tmp_path, capsys):
    good = _write(tmp_path, SMALL, "good.toml")
    outside = _write(tmp_path, SMALL.replace('size = "4MiB"', 'size = "4MiB"\naddr = "0x7f0000000000"\nfixed = true'),
                     "outside.toml")
    half_gib = meminfo()["MemAvailable"] // (1 << 20) // 2 + 1
    big = _write(tmp_path, SMALL.replace('size = "4MiB"', f'size = "{half_gib}GiB"'), "big.toml")
    also_good = str(GROW_TOP)
    assert main(["validate", "--summary", good, outside, big, also_good]) == 1
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "FAIL" not in out
    assert f"REFUSED  small  ({outside}): " in out and "outside the range the host backend maps" in out
    assert f"REFUSED  small  ({big}): " in out and "more than half" in out
    assert "2 of 4 scenarios agree with the kernel" in out and "2 refused by the host backend" in out
    assert main(["validate", "--format", "json", outside, good]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [s["refused"] is not None for s in doc["scenarios"]] == [True, False] and not doc["ok"]


def test_signals_are_made_on_the_host_and_compared(monkeypatch):
    """Every process the simulator kills makes its fatal access on the kernel too (in a traced
    copy of itself): the kernel's signal and address agree; a model that puts the bad access one
    page early is caught by the address the kernel reports."""
    path = str(SUITE / "signals.toml")
    verdict = validate(load(path))
    signals = [r for r in verdict.rows if r.metric == "signal"]
    assert [r.host.split("@")[0] for r in signals] == ["SIGSEGV", "SIGSEGV", "SIGBUS"]
    assert all(r.ok for r in signals) and verdict.ok
    from ptshare.mm.access import Accesses

    real = Accesses.first_outside

    def one_early(self, ok):
        n = real(self, ok)
        return n - 1 if 0 < n < len(self) else n

    monkeypatch.setattr(Accesses, "first_outside", one_early)
    verdict = validate(load(path), runs=1)
    bad = [r for r in verdict.rows if r.metric == "signal" and not r.ok]
    assert len(bad) == 3 and not verdict.ok
    for r in bad:  # the kernel faulted at the next access, one 4 KiB stride on
        assert int(r.host.split("@")[1], 16) == int(r.sim.split("@")[1], 16) + 4096


def test_the_whole_suite_agrees_with_the_kernel_in_its_own_layout(capsys):
    """The kernel chooses every address (mmap without a hint, mremap with MREMAP_MAYMOVE) and the
    simulator predicts them: layouts (/proc/PID/maps) and counters agree on every scenario."""
    assert main(["validate", "--own-layout", "--summary"]) == 0, capsys.readouterr().out


def test_own_layout_compares_the_kernels_addresses(tmp_path):
    from ptshare.host.worker import WINDOW

    verdict = validate(load(SUITE / "mremap-move-unfaulted-merges.toml"), own_layout=True)
    assert verdict.ok, verdict.to_json()
    layouts = [r for r in verdict.rows if r.metric == "layout" and r.host != "empty"]
    assert layouts and all(r.host == r.sim for r in layouts)
    starts = [int(part.split("-")[0], 16) for r in layouts for part in r.host.split(", ")]
    assert all(s >= WINDOW[1] for s in starts)  # placed by the kernel, far from where the plan put them
    assert layouts[-1].host.count(",") == 2  # hi moved and merged with lo; mid; cap: three VMAs


def test_a_wrong_merge_rule_shows_in_the_layouts(monkeypatch):
    """mremap growing in place without merging (the rule before Linux's vma_merge_extend): the
    maps of the host show one VMA where the simulator has two."""
    from ptshare.mm import mremap

    def extend_only(k, mm, vma, delta):
        vma.vm_end += delta
        return vma

    monkeypatch.setattr(mremap, "vma_merge_extend", extend_only)
    verdict = validate(load(SUITE / "merge-mremap-grow-anon.toml"), runs=1)
    bad = [r for r in verdict.rows if r.metric == "layout" and not r.ok]
    assert bad and bad[0].step == 7 and bad[0].host.count(",") + 1 == 1 and bad[0].sim.count(",") + 1 == 2
