"""The results database: a run killed half-way keeps what finished, a re-run completes it; ``ptshare results``."""

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from processes import interruptible
from ptshare.cli.main import main
from ptshare.experiments import EXPERIMENTS, ResultsDB, run_experiment

QUICK_RUNS = sum(len(e.plan(e.params(quick=True))) for e in EXPERIMENTS.values())


def _ptshare(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # with the test's $PTSHARE_DB / $XDG_DATA_HOME
    return subprocess.Popen([sys.executable, "-m", "ptshare", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=interruptible)


def _rows(path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def _wait_for_rows(proc: subprocess.Popen, path, n: int, limit: float = 900) -> int:
    """Until ``proc`` has stored ``n`` runs; ``limit`` guards against a hang (load only slows a run)."""
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        if (rows := _rows(path)) >= n:
            return rows
        time.sleep(0.01)
    pytest.fail(f"the run ended or stalled before storing {n} runs: {proc.poll()}")


def test_a_demo_killed_half_way_keeps_its_runs_and_a_rerun_completes_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    monkeypatch.delenv("PTSHARE_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    db = tmp_path / "data" / "ptshare" / "results.db"  # the one default, that of every command
    proc = _ptshare("demo", "--quick", "--out", str(out))
    _wait_for_rows(proc, db, QUICK_RUNS // 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs").fetchone()
    assert QUICK_RUNS // 3 <= kept[0] < QUICK_RUNS and kept[0] == kept[1]

    # the report can be written from what survived; it says what is missing
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "partial")]) == 0
    html = (tmp_path / "partial" / "report.html").read_text()
    assert html.count("<figure") < len(EXPERIMENTS)

    proc = _ptshare("demo", "--quick", "--out", str(out))
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out / "report.html")
    assert stdout.strip().splitlines()[-2] == (f"The runs are stored in {db}: 'ptshare results' lists them and "
                                               "'ptshare report' writes the report again from them.")
    reused = sum(int(line.split(", ")[1].split()[0]) for line in stdout.splitlines() if line.endswith("reused)"))
    assert reused == kept[0], "the re-run reuses every stored run and makes only the missing ones"
    with ResultsDB(db) as results:
        assert len(results.runs()) == QUICK_RUNS
    html = (out / "report.html").read_text()
    assert html.count("<figure") == len(EXPERIMENTS) and "Incomplete" not in html
    assert len(list((out / "figures").glob("*.png"))) == len(EXPERIMENTS)

    # the follow-up commands find the demo's runs without being told where they are
    capsys.readouterr()
    assert main(["results"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{QUICK_RUNS} runs")
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 0
    assert capsys.readouterr().out.strip() == "ptshare-report/report.html"
    assert (tmp_path / "ptshare-report" / "report.html").read_text().count("<figure") == len(EXPERIMENTS)


def test_ctrl_c_stops_cleanly_and_keeps_the_finished_runs(tmp_path):
    db = tmp_path / "r.db"
    bits = ",".join(str(b) for b in range(29))
    proc = _ptshare("experiment", "aslr", "--quick", "--set", f"bits={bits}", "--db", str(db))
    _wait_for_rows(proc, db, 10)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the experiment finished before the interrupt arrived")
    *progress, last = stderr.splitlines()
    assert proc.returncode == 130 and last == "ptshare: interrupted"
    assert len(progress) >= 10 and all(re.fullmatch(r"aslr: run \d+/\d+ \S+ done in \d+\.\d s", line)
                                       for line in progress), progress  # piped: a line per finished run
    with ResultsDB(db) as results:
        kept = len(results.runs())
        record = results.latest_experiments()[0]
    planned = len(EXPERIMENTS["aslr"].plan(record.params))  # 5 variants x 29 bits x the quick seeds
    assert 10 <= kept < planned and record.finished is None
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"Incomplete: {kept} of {planned} runs are stored" in html
    assert f"<code>ptshare experiment aslr --db {db} --quick --set bits={bits}</code>" in html


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("results") / "r.db"
    with ResultsDB(path) as db:
        for name in ("fork-exec", "lazy-tradeoff"):
            exp = EXPERIMENTS[name]
            run_experiment(exp, exp.params(quick=True), db, progress=False)
    return str(path)


def test_results_lists_and_filters(stored, capsys):
    assert main(["results", "--db", stored]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("24 runs") and "fork-exec" in out and "lazy-tradeoff" in out
    assert main(["results", "--db", stored, "--experiment", "fork-exec", "--policy", "linux", "--format", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 2 and {r["policy"] for r in runs} == {"linux"}
    assert {r["scenario"] for r in runs} == {"fork-exec-128MiB", "fork-exec-256MiB"}
    run = runs[0]
    assert run["backend"] == "sim" and run["version"] and run["profile"] == "default"
    assert len(run["scenario_hash"]) == 64 and run["scenario_json"]["name"] == run["scenario"]
    assert run["params"] == {"size_gib": 0.125} and run["metrics"]["fork_ns"] > 0
    assert main(["results", "--db", stored, "--scenario", "lazy-tradeoff-*-1", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


def test_results_export_csv(stored, tmp_path, capsys):
    path = tmp_path / "runs.csv"
    assert main(["results", "--db", stored, "--experiment", "lazy-tradeoff", "--export", str(path)]) == 0
    assert capsys.readouterr().out == f"16 runs written to {path}\n"
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 16 and {"scenario_hash", "param.fraction", "metric.fork_ns", "metric.child_faults"} <= set(
        rows[0])
    assert main(["results", "--db", stored, "--experiment", "fork-exec", "--format", "csv"]) == 0
    assert len(list(csv.DictReader(capsys.readouterr().out.splitlines()))) == 8


def test_results_export_parquet(stored, tmp_path, capsys):
    path = tmp_path / "runs.parquet"
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert main(["results", "--db", stored, "--export", str(path)]) == 2
        err = capsys.readouterr().err
        assert err == ("ptshare: writing Parquet needs pyarrow, which is not installed here (pip install pyarrow); "
                       "or export to a .csv file\n")
        return
    assert main(["results", "--db", stored, "--export", str(path)]) == 0
    assert pq.read_table(path).num_rows == 24
