"""``validate --translation``: the cases it checks, the latency fit, and the chase program itself."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from ptshare.cli.main import main
from ptshare.translation import get_cpu
from ptshare.translation.caches import GRID, Hierarchy, fit_hierarchy, line_configs
from ptshare.translation.hostcheck import Config, build, cases, configs, fit, per_access, predict, priced, run_chase

MiB = 1 << 20


def test_ratios_are_medians_of_per_round_ratios_and_only_ratios_are_checked():
    a, b = Config(16 * MiB, False), Config(16 * MiB, True)
    times = {a: [30.0, 60.0, 33.0], b: [20.0, 30.0, 30.0]}
    found = cases([a, b], times, {a: 2.0, b: 1.0})
    ratio = next(c for c in found if c.kind == "ratio")
    assert ratio.runs == [1.5, 2.0, 1.1] and ratio.measured == 1.5
    assert ratio.predicted == 2.0 and not ratio.ok  # +33%
    ns = [c for c in found if c.kind == "ns"]
    assert {c.measured for c in ns} == {33.0, 30.0} and all(c.ok for c in ns)


def test_fit_recovers_a_walk_from_2mib_chases_alone():
    cpu = get_cpu("zen4-guest")
    cfgs = [Config(s, h) for s in (16 * MiB, 64 * MiB, 256 * MiB) for h in (False, True)]
    rng = np.random.default_rng(2)
    counts = {c: np.concatenate([rng.random(4) * 2, [1.0, rng.random()]]) for c in cfgs}
    truth = {**cpu.latency.as_dict(), "walk": 60.0}
    times = {c: [priced(counts[c], truth)] for c in cfgs}
    times[cfgs[0]] = [1e6]  # a 4 KiB chase: the fit must not see it
    got = fit(cfgs, counts, times, cpu)
    assert got == pytest.approx(truth, rel=1e-6)


def test_hierarchy_fit_finds_the_llc_the_chases_were_made_with():
    """Line chases priced by a known LRU hierarchy (LLC 4.75 MiB), with +-3% noise: the fit finds
    that LLC within one grid step and the latencies within 15%."""
    cpu = get_cpu("zen4-guest")
    truth = Hierarchy(19 * MiB // 4, {"l1": 1.5, "l2": 4.5, "llc": 20.0, "dram": 150.0}, 0.0)
    rng = np.random.default_rng(5)
    times = {c: list(truth.predicted(cpu, c.size) * rng.uniform(0.97, 1.03, 8)) for c in line_configs()}
    got = fit_hierarchy(cpu, times)
    assert abs(got.llc - truth.llc) <= GRID
    for key, ns in truth.ns.items():
        assert got.ns[key] == pytest.approx(ns, rel=0.15), key
    assert got.applied(cpu).llc == got.llc and got.applied(cpu).latency.dram == got.ns["dram"]


def test_model_puts_2mib_pages_below_4kib_pages():
    cpu = get_cpu("zen4-guest")
    small = {h: per_access(predict(Config(64 * MiB, h), cpu, accesses=1 << 14)) for h in (False, True)}
    ns = {"l1": 1, "l2": 4, "tlb_l2": 2, "llc": 40, "dram": 150, "walk": 60}
    assert priced(small[False], ns) > priced(small[True], ns)
    assert {c.name for c in configs()} >= {"1.0 GiB 4KiB 2 procs", "1.0 GiB 4KiB 2 threads", "16.0 MiB 2MiB"}


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_chase_program_builds_and_measures(tmp_path):
    exe = build(tmp_path)
    for mode in ("proc", "thread"):
        ns = run_chase(exe, Config(8 * MiB, False, mode, 2), 20_000, seed=1)
        assert 0.1 < ns < 10_000
    assert 0.1 < run_chase(exe, Config(MiB, False, stride=64), 20_000, seed=1) < 10_000


def test_bad_arguments(capsys):
    assert main(["validate", "--translation", "--runs", "3"]) == 2
    assert "at least 8 interleaved runs" in capsys.readouterr().err
    assert main(["validate", "--translation", "some.toml"]) == 2
    assert "give no scenario files" in capsys.readouterr().err
    assert main(["calibrate", "--translation", "--repeat", "3"]) == 2
    assert "at least 8 interleaved runs" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the message a user without root gets")
def test_needs_root(capsys):
    assert main(["validate", "--translation"]) == 2
    assert "needs root" in capsys.readouterr().err
