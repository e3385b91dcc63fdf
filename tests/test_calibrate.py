"""`ptshare calibrate`: the fit recovers known costs, the profile it writes loads, bad arguments are
refused with exit status 2, and on this machine's kernel a --quick calibration runs end to end and
leaves nothing behind, even when interrupted."""

import glob
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from processes import interruptible, tagged, wait_gone
from ptshare.calibrate import families
from ptshare.calibrate import run as calibrate_run
from ptshare.calibrate.experiment import Experiment, Point
from ptshare.calibrate.families import Sample, call
from ptshare.calibrate.fit import PREFAULTED_READ, UNMEASURABLE, events_of, fit
from ptshare.calibrate.nnls import nnls
from ptshare.calibrate.probes import ProbeExperiment, probe_plan, with_frames
from ptshare.calibrate.profile import provenance
from ptshare.cli.main import main
from ptshare.cost import CostModel, load_profile
from ptshare.host.backend import host_problem
from ptshare.host.objects import meminfo
from ptshare.realfork.probe import ProbeRun, Span

HOST_PROBLEM = host_problem(need_root=True)
needs_host = pytest.mark.skipif(HOST_PROBLEM is not None, reason=HOST_PROBLEM or "")


# --- non-negative least squares ---------------------------------------------------------------------

def _brute_force_nnls(a, b):
    """The best least-squares solution over every set of free variables whose solution is >= 0."""
    best, best_x = np.inf, np.zeros(a.shape[1])
    for k in range(a.shape[1] + 1):
        for free in itertools.combinations(range(a.shape[1]), k):
            x = np.zeros(a.shape[1])
            if free:
                x[list(free)] = np.linalg.lstsq(a[:, list(free)], b, rcond=None)[0]
            if (x >= -1e-9).all() and np.linalg.norm(a @ x - b) < best - 1e-9:
                best, best_x = np.linalg.norm(a @ x - b), x
    return best_x


def test_nnls_recovers_known_coefficients_exactly():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 100_000, size=(40, 6)).astype(float)  # event counts: 0 to 100k
    counts[:, 0] = 1  # an intercept
    truth = np.array([42_000.0, 52.0, 900.0, 0.5, 650.0, 1.0])
    assert np.allclose(nnls(counts, counts @ truth), truth, rtol=1e-9)


def test_nnls_holds_at_zero_what_would_be_negative():
    rng = np.random.default_rng(2)
    for _ in range(50):
        a = rng.random((12, 4)) * rng.choice([1.0, 1e3, 1e5], size=4)
        b = a @ rng.normal(size=4) + rng.normal(size=12)
        x = nnls(a, b)
        assert (x >= 0).all()
        assert np.linalg.norm(a @ x - b) <= np.linalg.norm(a @ _brute_force_nnls(a, b) - b) * (1 + 1e-9) + 1e-9


def test_nnls_noisy_data_and_a_column_of_zeros():
    rng = np.random.default_rng(3)
    a = np.column_stack([np.ones(200), rng.integers(1, 10**6, 200), rng.integers(1, 10**5, 200), np.zeros(200)])
    truth = np.array([5_000.0, 75.0, 400.0, 0.0])
    b = a @ truth * (1 + rng.normal(scale=0.01, size=200))
    x = nnls(a, b)
    assert x[3] == 0
    assert np.allclose(x[1:3], truth[1:3], rtol=0.05)


def test_nnls_says_when_it_does_not_converge(monkeypatch):
    nnls_module = sys.modules["ptshare.calibrate.nnls"]

    rng = np.random.default_rng(4)
    a = rng.random((30, 8))
    b = a @ rng.normal(size=8)
    monkeypatch.setattr(nnls_module, "MAX_ITER_PER_COLUMN", 0)  # one iteration: this problem needs more
    with pytest.raises(nnls_module.NoConvergence, match="did not converge"):
        nnls(a, b)


def test_nnls_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="as many rows"):
        nnls(np.ones((3, 2)), np.ones(4))


# --- the fit, on the simulator's counts for the real experiments ---------------------------------

@pytest.fixture(scope="module")
def quick_points():
    """The --quick experiments' sample steps, with the simulator's event counts and no host run."""
    exp = Experiment(families.plan(quick=True, hugetlb_ok=False), load_profile())
    for fam in exp.families:
        exp.simulate(fam)
    probes = ProbeExperiment(probe_plan(quick=True), load_profile())
    for cfg in probes.configs:
        probes.simulate(cfg)
    out = [p for pts in exp.points.values() for p in pts]
    for cfg, (fork, exit_) in probes.simulated.items():
        # frames in order as a probe run finds them: half of a fresh run's, none of a shuffled one's
        run = _probe_run(cfg.size, cfg.stride, cfg.vmas, 0.0 if cfg.layout == "shuffled" else 0.5)
        out.append(with_frames(fork, "ptes_copied_scattered", run, 0))
        if exit_ is not None:
            out.append(with_frames(exit_, "ptes_zapped_scattered", run, 0))
    return out


def _probe_run(size: int, stride: int, vmas: int, adjacent: float) -> ProbeRun:
    span = Span(0, 0)
    return ProbeRun(size, stride, vmas, "fresh", adjacent, span, (span,), (span,), span)


TRUTH = {"fault_anon": 310.0, "fault_zero": 640.0, "fault_file": 980.0, "fault_around_ptes": 120.0,
         "fault_shared_write": 870.0, "fault_cow": 520.0, "fault_wp_copy": 610.0, "fault_wp_reuse": 700.0,
         "fault_wp_shared": 2100.0, "page_alloc": 1250.0, "ptes_copied": 35.0,
         "ptes_copied_scattered": 120.0, "pte_tables_copied": 1000.0,
         "vmas_copied": 800.0, "ptes_zapped": 60.0,
         "ptes_zapped_scattered": 55.0, "pages_freed": 190.0, "pgtable_alloc": 500.0,
         "pgtable_free": 400.0, "ptes_changed": 75.0, "ptes_moved": 12.0, "fork": 45_000.0,
         "accesses": 11.0, "munmap": 3_800.0, "mprotect": 2_000.0, "mremap": 5_000.0,
         "madvise": 1_700.0}
PSEUDO = {call("touch"): 1_500.0, call("exit"): 900.0, PREFAULTED_READ: 230.0}


def _synthetic(points: list[Point], base: CostModel, noise: float = 0.0, seed: int = 0) -> list[Point]:
    """``points`` with host times made from TRUTH and PSEUDO (and ``base`` for the rest)."""
    rng = np.random.default_rng(seed)
    out = []
    for p in points:
        counts = events_of(p)
        ns = sum(n * TRUTH.get(name, base.ns.get(name, 0.0)) for name, n in counts.items())
        ns += sum(n * PSEUDO[name] for name, n in p.sample.pseudo.items())
        if p.sample.every_page:
            ns += counts.get("fault_around_ptes", 0) * PSEUDO[PREFAULTED_READ]
        out.append(Point(p.family, p.sample, p.events, [round(ns * (1 + noise * rng.normal()))]))
    return out


def test_fit_recovers_the_costs_the_times_were_made_of(quick_points):
    base = load_profile()
    result = fit(_synthetic(quick_points, base), base)
    for name, ns in TRUTH.items():
        assert result.events[name].source == "measured", name
        assert result.events[name].ns == pytest.approx(ns, rel=1e-3), name
    for name, ns in PSEUDO.items():
        assert result.pseudo[name].ns == pytest.approx(ns, rel=1e-3), name
    for name in UNMEASURABLE:
        assert result.events[name].source == "kept" and result.events[name].ns == base.ns.get(name, 0.0)
    assert result.events["fault_hugetlb"].why == "no experiment made it happen"  # --quick has no hugetlb family
    assert all(o.r2 > 0.999999 for o in result.ops.values())


def test_fit_with_noise_stays_close_and_says_how_close(quick_points):
    base = load_profile()
    result = fit(_synthetic(quick_points, base, noise=0.02, seed=5), base)
    for name in ("ptes_copied", "ptes_zapped", "fault_zero", "pgtable_free", "ptes_changed"):
        e = result.events[name]
        assert e.ns == pytest.approx(TRUTH[name], rel=0.25), name
        assert e.stderr is not None and abs(e.ns - TRUTH[name]) < 5 * e.stderr, name
    assert all(o.r2 > 0.9 for o in result.ops.values())


def _point(op: str, events: dict[str, int], ns: float, step: int) -> Point:
    return Point("synthetic", Sample(step, op, {call(op): 1}), events, [round(ns)])


def test_fit_keeps_what_it_cannot_resolve():
    """An event too small to see under the noise keeps the base cost."""
    base = CostModel("base", "m", {"huge_pmds_copied": 52.0, "fork": 42_000.0})
    rng = np.random.default_rng(7)
    points = []
    for i, n in enumerate(range(1_000, 200_000, 5_000)):
        vmas, tiny = int(rng.integers(1, 400)), int(rng.integers(0, 5))
        ns = 450_000 + 95 * n + 800 * vmas + 40 * tiny + rng.normal(scale=20_000)
        points.append(_point("fork", {"fork": 1, "ptes_copied": n, "vmas_copied": vmas, "huge_pmds_copied": tiny},
                             ns, i))
    result = fit(points, base)
    assert result.events["ptes_copied"].ns == pytest.approx(95, rel=0.05)
    assert result.events["vmas_copied"].ns == pytest.approx(800, rel=0.25)
    e = result.events["huge_pmds_copied"]
    assert e.source == "kept" and e.ns == 52.0
    assert "could not resolve" in e.why or "no other event always comes with it" in e.why


def test_an_event_held_at_zero_names_the_one_that_carries_its_cost():
    base = CostModel("base", "m", {"fault_anon": 650.0})
    points = []
    for i, n in enumerate(range(1_000, 50_000, 4_000)):
        # Every anonymous write fault allocates a page; the data say the allocation is all of it.
        points.append(_point("touch", {"fault_anon": n, "page_alloc": n, "pgtable_alloc": n // 512 + 2},
                             1_290 * n + 500 * (n // 512 + 2), i))
        points.append(_point("touch", {"fault_file": n, "page_alloc": n}, 2_300 * n, 100 + i))
        points.append(_point("touch", {"fault_file": n}, 1_000 * n, 200 + i))
    result = fit(points, base)
    e = result.events["fault_anon"]
    assert e.source == "measured" and e.ns == 0
    assert e.why == "held at 0: page_alloc, always with it in proportion, carries its cost"
    assert result.events["page_alloc"].ns == pytest.approx(1_300, rel=0.02)


# --- the command line ---------------------------------------------------------------------------

@pytest.fixture()
def fake_calibration(monkeypatch, quick_points):
    """`calibrate` returns a calibration fitted to synthetic times, without touching the host."""
    def fake(base, quick=False, repeat=None, progress=None):
        points = _synthetic(quick_points, base)
        prov = provenance(sorted({p.family for p in points}), repeat or 3, len(points), 0, quick, base)
        return calibrate_run.Calibration(fit(points, base), prov, {"hugetlb": "left out by the test"},
                                         {"ptes_copied": 4000, "vmas_copied": 160}, 1.0)

    monkeypatch.setattr(calibrate_run, "calibrate", fake)


def test_cli_writes_a_profile_load_profile_accepts(tmp_path, capsys, fake_calibration):
    out = tmp_path / "p.toml"
    assert main(["calibrate", "--quick", "-o", str(out), "--name", "mine"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "Fit quality per op" in text
    profile = load_profile(out)
    assert profile.name == "mine" and profile.machine.startswith("Linux")
    for name, ns in TRUTH.items():
        assert profile.ns[name] == pytest.approx(ns, rel=1e-2), name
    assert profile.ns["exec"] == load_profile().ns["exec"]  # kept
    header = out.read_text()
    assert "# Measured by `ptshare calibrate` on" in header and "Kept from the profile 'default'" in header
    assert "exec: the host backend's exec starts a new Python interpreter" in header


def test_cli_json(tmp_path, capsys, fake_calibration):
    assert main(["calibrate", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "ptshare.calibrate/1" and doc["profile"]["path"] is None
    assert doc["events"]["ptes_copied"]["source"] == "measured"
    assert doc["events"]["fork"]["source"] == "measured"  # by the fork probe, whose own fork costs next to nothing
    assert doc["events"]["exec"]["source"] == "kept" and doc["events"]["exec"]["why"]
    assert set(doc["ops"]) == {"fork", "touch", "exit", "munmap", "mprotect", "mremap", "madvise"}
    assert "[ns]" in doc["profile"]["text"]


@pytest.mark.parametrize("argv, message", [
    (["--repeat", "0"], "--repeat takes a whole number from 1 to 100, not '0'"),
    (["--repeat", "many"], "--repeat takes a whole number from 1 to 100, not 'many'"),
    (["--format", "xml"], "invalid choice: 'xml'"),
])
def test_bad_options_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_files_exit_2_before_measuring(tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("calibration started despite a bad argument")

    monkeypatch.setattr(calibrate_run, "calibrate", must_not_run)
    bad = tmp_path / "bad.toml"
    bad.write_text("[ns]\nno_such_event = 3\n")
    cases = [(["-o", str(tmp_path / "missing" / "p.toml")], "does not exist"),
             (["-o", str(tmp_path)], "is a directory"),
             (["--base", str(tmp_path / "nope.toml")], "cannot read cost profile"),
             (["--base", str(bad)], "unknown event 'no_such_event'"),
             (["--name", " "], "--name must not be empty")]
    for argv, message in cases:
        assert main(["calibrate", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("ptshare: ") and message in err and "Traceback" not in err, err


def test_a_host_that_cannot_run_it_is_told_why(monkeypatch, capsys):
    monkeypatch.setattr(calibrate_run, "host_problem", lambda need_root=False: "the host backend needs Linux; "
                        "this is plan9")
    assert main(["calibrate", "--quick"]) == 2
    assert "calibration measures this machine's kernel with the host backend, and the host backend needs Linux" \
        in capsys.readouterr().err


# --- on this machine's kernel ---------------------------------------------------------------------

def _leftovers() -> set[str]:
    return set(glob.glob("/dev/shm/ptshare-*")) | set(glob.glob("/var/tmp/ptshare-*"))


def _calibrate(tmp_path, *argv: str) -> tuple[subprocess.Popen, str]:
    tag = uuid.uuid4().hex
    env = dict(os.environ, PTSHARE_TEST_TAG=tag)
    proc = subprocess.Popen([sys.executable, "-m", "ptshare", "calibrate", *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    return proc, f"PTSHARE_TEST_TAG={tag}"


def _nothing_left(tag: str, before: set[str], hugepages: int) -> None:
    wait_gone(tag)
    assert meminfo()["HugePages_Total"] == hugepages, "the huge-page reservation was not given back"
    assert _leftovers() <= before, "files left behind"


@needs_host
def test_quick_calibration_on_this_kernel(tmp_path):
    """How well the fit matches depends on how quiet the machine is (the fitting itself is tested on
    known data above), so this checks what was measured and written, not the fit's quality."""
    before, hugepages = _leftovers(), meminfo()["HugePages_Total"]
    proc, tag = _calibrate(tmp_path, "--quick", "-o", "quick.toml", "--format", "json")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    _nothing_left(tag, before, hugepages)
    doc = json.loads(out)
    profile = load_profile(tmp_path / "quick.toml")
    # every event the quick families exercise was seen, and is either measured (and written as
    # measured) or kept from the base profile with the reason (a fit too noisy to resolve it)
    exercised = {"ptes_copied", "pgtable_alloc", "pgtable_free", "ptes_zapped", "pages_freed", "fault_zero",
                 "fault_file", "fault_around_ptes", "page_alloc", "fault_wp_reuse"}
    for name in exercised:
        event = doc["events"][name]
        assert event["samples"] > 0, name
        if event["source"] == "measured":
            assert profile.ns[name] == pytest.approx(event["ns"], abs=0.5)
        else:
            assert event["source"] == "kept" and event["why"], name
            assert profile.ns[name] == pytest.approx(event["base_ns"], abs=0.5)
    assert any(doc["events"][name]["source"] == "measured" for name in exercised)
    for op in ("touch", "fork", "munmap"):
        assert doc["ops"][op]["samples"] > 0 and math.isfinite(doc["ops"][op]["r2"]) and doc["ops"][op]["r2"] <= 1


@needs_host
def test_an_interrupted_calibration_leaves_nothing(tmp_path):
    before, hugepages = _leftovers(), meminfo()["HugePages_Total"]
    proc, tag = _calibrate(tmp_path, "--quick", "-o", "never.toml")
    deadline = time.monotonic() + 600  # guards against a hang; a loaded machine is only slower
    while len(tagged(tag)) < 2 and time.monotonic() < deadline:  # calibrate itself and a worker
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "ptshare: interrupted", err
    assert "Traceback" not in err
    assert not (tmp_path / "never.toml").exists()
    _nothing_left(tag, before, hugepages)


def test_what_measuring_a_call_adds_is_taken_from_the_ops_whose_calls_are_events():
    munmap = Point("f", Sample(3, "munmap"), {"munmap": 2, "ptes_zapped": 10}, [10_000, 12_000])
    touch = Point("f", Sample(4, "touch", {call("touch"): 1}), {"accesses": 5}, [5_000])
    assert calibrate_run.less_measuring(munmap, 250.0).times_ns == [9_500, 11_500]
    assert calibrate_run.less_measuring(touch, 250.0).times_ns == [5_000]  # its intercept takes it in


def test_a_dense_probe_runs_frames_replace_the_simulated_out_of_order_count():
    fork = Point("probe-dense 64 MiB", Sample(3, "fork"), {"ptes_copied": 16_384, "ptes_copied_scattered": 16_384})
    point = with_frames(fork, "ptes_copied_scattered", _probe_run(64 << 20, 4096, 0, 0.75), 1_000)
    assert point.events["ptes_copied_scattered"] == 4_096 and point.times_ns == [1_000]
    sparse = Point("probe-sparse", Sample(3, "fork"), {"ptes_copied": 32, "ptes_copied_scattered": 32})
    kept = with_frames(sparse, "ptes_copied_scattered", _probe_run(64 << 20, 2 << 20, 0, 0.0), 1_000)
    assert kept.events["ptes_copied_scattered"] == 32  # one page per 2 MiB: the simulator's count stands
