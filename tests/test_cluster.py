"""Runs made on Dask: a LocalCluster of 2 workers, and a ``dask scheduler`` with ``dask worker`` processes on
127.0.0.1 as a user starts them, give exactly the serial results; a worker killed mid-sweep loses no run and
stores none twice.

Start-up waits are generous (a loaded 2-core machine takes its time to start interpreters); nothing here
measures how fast results come.
"""

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import distributed
import pytest

from ptshare.cli.main import main
from ptshare.cost import load_profile
from ptshare.experiments import ResultsDB
from ptshare.scenario import load, run
from ptshare.sweep import grid, parse_axes
from ptshare.sweep.metrics import SweepMetrics

ROOT = Path(__file__).resolve().parents[1]
SEGMENT = str(ROOT / "scenarios" / "fork-shared-segment.toml")
GRID = ["--vary", "objects.sga.size=64MiB,128MiB", "--vary", "steps.helper-reads.count=100,1000",
        "--policy", "linux,shared-pt"]
EXPERIMENT = ["experiment", "fork-exec", "--quick", "--format", "json"]
DASK = str(Path(sys.executable).parent / "dask")
START_S = 300  # how long a cluster may take to come up


def ptshare(*argv: str) -> str:
    """What ``ptshare ARGV`` prints; it must succeed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


def sweep_grid(db: Path) -> list[tuple]:
    with ResultsDB(db) as results:
        rows, total = grid.rows(grid.find(results, None), results)
    assert len(rows) == total
    return [tuple(sorted(r.items())) for r in rows]


def experiment(db: Path, *where: str) -> tuple[dict, dict]:
    """The experiment's outcome (without where and how its runs were made) and every stored run's metrics."""
    doc = json.loads(ptshare(*EXPERIMENT, "--db", str(db), *where))
    assert doc.pop("runs") == {"made": 8, "reused": 0}
    doc.pop("db")
    with ResultsDB(db) as results:
        return doc, {r["key"]: r["metrics"] for r in results.runs(experiment="fork-exec")}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    db = tmp_path_factory.mktemp("serial") / "r.db"
    ptshare("sweep", SEGMENT, *GRID, "--db", str(db))
    return sweep_grid(db), experiment(db)


def test_a_local_cluster_of_two_workers_gives_the_serial_results(serial, tmp_path):
    db = tmp_path / "r.db"
    out = ptshare("sweep", SEGMENT, *GRID, "--db", str(db), "--workers", "2")
    assert "sweep 1: 8 runs (8 made now, 0 reused)" in out
    assert sweep_grid(db) == serial[0]
    assert experiment(db, "--workers", "2") == serial[1]


class Cluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, each started as a user would."""

    def __init__(self, where: Path, workers: int) -> None:
        self.where = where
        self.file = where / "scheduler.json"
        self.procs = [self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(self.file))]
        self._wait(self.file.exists, "the scheduler to write its address")
        self.address = json.loads(self.file.read_text())["address"]
        assert self.address.startswith("tcp://127.0.0.1:")
        self.workers = [self._start("worker", "--scheduler-file", str(self.file), "--host", "127.0.0.1",
                                    "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{n}",
                                    "--local-directory", str(where / f"w{n}")) for n in range(workers)]
        self.procs += self.workers
        self.client = distributed.Client(self.address, timeout=START_S)
        if workers:
            self.client.wait_for_workers(workers, timeout=START_S)

    def _start(self, *argv: str) -> subprocess.Popen:
        log = open(self.where / f"{argv[0]}-{len(getattr(self, 'procs', []))}.log", "w")  # noqa: SIM115
        return subprocess.Popen([DASK, *argv], stdout=log, stderr=subprocess.STDOUT, cwd=self.where)

    def _wait(self, ready, what: str) -> None:
        end = time.monotonic() + START_S
        while not ready():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            assert all(p.poll() is None for p in self.procs), f"a dask process ended while waiting for {what}"
            time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        """Worker address -> the pid of its process."""
        return self.client.run(os.getpid)

    def close(self) -> None:
        self.client.close()
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, workers=2)
    yield c
    c.close()


def test_a_scheduler_and_workers_started_by_hand_give_the_serial_results(serial, cluster, tmp_path):
    db = tmp_path / "r.db"
    out = ptshare("sweep", SEGMENT, *GRID, "--db", str(db), "--cluster", cluster.address)
    assert "sweep 1: 8 runs (8 made now, 0 reused)" in out
    assert sweep_grid(db) == serial[0]
    assert experiment(db, "--cluster", cluster.address) == serial[1]


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # not made yet
        return 0


def test_a_worker_killed_mid_sweep_loses_no_run_and_stores_none_twice(cluster, tmp_path):
    db = tmp_path / "r.db"
    seeds = ",".join(str(s) for s in range(1, 9))  # 8 runs of about a second each: a 4 GiB segment written
    argv = ["sweep", SEGMENT, "--vary", f"steps.helper-reads.seed={seeds}", "--policy", "linux"]
    proc = subprocess.Popen([sys.executable, "-m", "ptshare", *argv, "--db", str(db), "--cluster", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = cluster.pids()
    victim, lost = None, []
    while victim is None:  # once one run is stored, both workers are busy: kill one while it makes a run
        assert proc.poll() is None, proc.communicate()
        if _rows(db) >= 1:
            busy = {addr: keys for addr, keys in cluster.client.processing().items() if keys}
            if busy:
                victim, lost = next(iter(busy.items()))
                os.kill(pids[victim], signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert "sweep 1: 8 runs (8 made now, 0 reused)" in stdout
    assert list(cluster.pids()) == [a for a in pids if a != victim], "the killed worker is gone"

    with sqlite3.connect(db) as conn:
        count, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs").fetchone()
    assert count == distinct == 8
    with ResultsDB(db) as results:
        record = grid.find(results, None)
        stored = {r["key"]: r["metrics"] for r in results.runs()}
    assert {p["key"] for p in record.points} == set(stored)
    # what the dead worker was making was made again elsewhere, and is what a serial run gives
    sc = load(SEGMENT)
    points = {f"ptshare-run-{j.key}": j for j in grid.jobs(grid.plan(sc, parse_axes(sc, argv[3:4]), ["linux"]),
                                                           load_profile())}
    assert lost and set(lost) <= set(points)
    for task in lost:
        spec = points[task].spec
        assert stored[points[task].key] == SweepMetrics().measure(spec, run(spec.scenario, spec.policy))


def test_a_scheduler_without_workers_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from ptshare.experiments import executor

    idle = Cluster(tmp_path, workers=0)
    try:
        monkeypatch.setattr(executor, "START_TIMEOUT_S", 2)
        db = tmp_path / "r.db"
        assert main(["sweep", SEGMENT, *GRID, "--db", str(db), "--cluster", idle.address]) == 2
        err = capsys.readouterr().err
        assert f"--cluster {idle.address}: the scheduler has no workers" in err
        assert f"dask worker {idle.address}" in err and "Traceback" not in err
    finally:
        idle.close()
