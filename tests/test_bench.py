"""ptshare bench: the cases run, the JSON holds what the table shows, bad arguments are refused."""

import json

import pytest

from ptshare.cli.main import main
from ptshare.host.backend import host_problem

PAGES = (40 << 20) >> 12  # fork-private-4g at scale 0.01: 40 MiB (the size rounds down to 2 MiB)


def test_a_case_under_each_of_its_policies(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--case", "fork-private-4g", "--scale", "0.01", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "ptshare.bench/1" and doc["machine"]
    rows = {r["policy"]: r for r in doc["results"]}
    assert set(rows) == {"eager", "lazy", "linux"}
    for r in rows.values():  # the parent's write faults; fork copies every PTE of a private mapping
        assert (r["faults"], r["ptes_copied"]) == (PAGES, PAGES)
        assert r["wall_s_median"] > 0 and r["peak_gib_median"] > 0
    assert "fork-private-4g" in capsys.readouterr().out


def test_a_rerun_shows_the_previous_figures(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--case", "fork-private-4g", "--scale", "0.01", "-o", str(out)]
    assert main(argv) == 0
    first = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    capsys.readouterr()
    assert main(argv) == 0
    shown = capsys.readouterr().out
    for r in first.values():
        assert f"{r['wall_s_median']:.2f} s ({r['cpu_s_median']:.2f} s)" in shown


@pytest.mark.parametrize(("argv", "message"), [
    (["--scale", "0"], "--scale must be more than 0"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--case", "nope"], "unknown bench case 'nope'"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    assert main(["bench", *argv, "-o", str(tmp_path / "b.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.skipif(host_problem() is not None, reason=f"needs the host backend: {host_problem()}")
def test_vs_host_times_each_step_on_the_kernel(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--case", "fork-private-4g", "--case", "fork-shared-4g-read", "--scale", "0.01",
                 "--vs-host", "-o", str(out)]) == 0
    records = {r["case"]: r for r in json.loads(out.read_text())["vs_host"]}
    assert set(records) == {"fork-private-4g", "fork-shared-4g-read"}
    for r in records.values():
        ops = [s["op"] for s in r["steps"]]
        assert "fork" in ops and "touch" in ops and "spawn" not in ops
        assert all(s["sim_ns"] > 0 and s["kernel_ns"] > 0 for s in r["steps"])
        assert r["ratio"] == pytest.approx(r["sim_ns"] / r["kernel_ns"])


def test_the_translation_case_models_translation_and_is_timed_against_its_twin():
    from ptshare.bench.cases import ALL, XLAT_SAMPLE
    from ptshare.bench.cli import _translation_ratio

    with_model, without = ALL["pgbench-like+translation"].build(0.01), ALL["pgbench-like"].build(0.01)
    assert with_model.machine.translation and with_model.machine.translation_sample == XLAT_SAMPLE > 1
    assert not without.machine.translation and with_model.steps == without.steps
    docs = [{"case": "pgbench-like", "policy": "linux", "cpu_s_median": 2.0},
            {"case": "pgbench-like+translation", "policy": "linux", "cpu_s_median": 3.0},
            {"case": "pgbench-like+translation", "policy": "shared-pt", "cpu_s_median": 1.0}]
    assert _translation_ratio(docs) == {"linux": 1.5}  # shared-pt has no twin here
