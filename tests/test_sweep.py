"""``ptshare sweep``: keys that address a scenario's fields, the grid stored run by run, reused, exported, drawn."""

import csv
import json
from pathlib import Path

import pytest

from ptshare.cli.main import main
from ptshare.errors import ScenarioError, UsageError
from ptshare.experiments import ResultsDB
from ptshare.experiments.base import RunSpec, scenario_hash
from ptshare.scenario import load, loads, run
from ptshare.sweep import parse_axes, plan, resolve, with_values
from ptshare.sweep.metrics import SweepMetrics

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))
SEGMENT = str(ROOT / "scenarios" / "fork-shared-segment.toml")
SMALL = ["--vary", "objects.sga.size=64MiB,128MiB", "--vary", "steps.helper-reads.count=100,1000",
         "--policy", "linux,shared-pt"]

NAMED = """
name = "named"
[machine]
cpus = 4
[[objects]]
name = "seg"
kind = "shmem"
size = "8MiB"
[[steps]]
op = "spawn"
pid = "a"
[[steps]]
op = "mmap"
name = "map"
pid = "a"
vma = "m"
object = "seg"
shared = true
[[steps]]
op = "touch"
pid = "a"
vma = "m"
access = "write"
[[steps]]
op = "fork"
name = "forks"
pid = "a"
child = "c{i}"
repeat = 2
"""


def sweep(db, *argv, scenario=SEGMENT):
    return main(["sweep", scenario, *argv, "--db", str(db)])


def grid_json(db, capsys, sweep_id=1):
    capsys.readouterr()
    assert main(["results", "--sweep", str(sweep_id), "--db", str(db), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- keys ---------------------------------------------------------------------------------------------

def test_keys_address_machine_objects_and_steps_by_index_or_name():
    sc = loads(NAMED, "named.toml")
    assert resolve(sc, "machine.cpus").field == "cpus"
    assert (resolve(sc, "objects.seg.size").target, resolve(sc, "objects.seg.size").field) == ("seg", "size")
    by_index, by_name = resolve(sc, "steps.3.repeat"), resolve(sc, "steps.forks.repeat")
    assert (by_index.target, by_index.field) == (by_name.target, by_name.field) == (3, "repeat")
    assert resolve(sc, "steps.map.prot").field == "prot"  # an optional field the file does not set


@pytest.mark.parametrize("key, known", [
    ("machine.cpu", "known: machine.memory, machine.cpus"),
    ("objects.nope.size", "objects.seg.{size,kind}"),
    ("objects.seg.offset", "known: objects.seg.size, objects.seg.kind"),
    ("steps.9.repeat", "steps.{0..3}.FIELD, steps.{map,forks}.FIELD"),
    ("steps.forks.count", "known: steps.forks.pid, steps.forks.child, steps.forks.repeat"),
    ("steps.map.name", "steps.map.object"),
    ("name", "machine.seed"),
])
def test_an_unknown_key_names_the_file_and_what_is_known(key, known):
    sc = loads(NAMED, "named.toml")
    with pytest.raises(ScenarioError) as err:
        resolve(sc, key)
    assert str(err.value).startswith(f"named.toml: unknown field {key!r}, known: ")
    assert known in str(err.value)


def test_values_are_typed_as_toml_and_each_is_checked_as_the_file_would_be():
    sc = loads(NAMED, "named.toml")
    [axis] = parse_axes(sc, ["machine.cpus=1, 2,8"])
    assert axis.values == (1, 2, 8)
    [axis] = parse_axes(sc, ["objects.seg.size=4MiB,16MiB"])
    assert axis.values == ("4MiB", "16MiB")
    assert [p.scenario.objects[0].size for p in plan(sc, [axis], ["linux"])] == [4 << 20, 16 << 20]
    [axis] = parse_axes(sc, ["steps.map.shared=true,false"])
    assert axis.values == (True, False)
    with pytest.raises(ScenarioError, match=r"^named.toml:5: --vary objects.seg.size=3000: object 'seg': size must "
                       r"be a positive multiple of 4 KiB$"):
        plan(sc, parse_axes(sc, ["objects.seg.size=4MiB,3000"]), ["linux"])
    with pytest.raises(ScenarioError, match=r"^named.toml:29: --vary steps.forks.repeat=0: repeat = 0 must be"):
        plan(sc, parse_axes(sc, ["steps.forks.repeat=0"]), ["linux"])
    with pytest.raises(ScenarioError, match=r"--vary machine.cpus=0: cpus = 0 must be a whole number from 1"):
        plan(sc, parse_axes(sc, ["machine.cpus=0"]), ["linux"])
    with pytest.raises(UsageError, match=r"the same field as --vary steps\.3\.repeat"):
        parse_axes(sc, ["steps.3.repeat=1", "steps.forks.repeat=2"])
    with pytest.raises(UsageError, match="write KEY=V1,V2"):
        parse_axes(sc, ["machine.cpus"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_varied_scenario_at_the_files_own_values_is_the_file(path):
    sc = load(path)
    settings = [(resolve(sc, "machine.seed"), sc.machine.seed), (resolve(sc, "machine.cpus"), sc.machine.cpus)]
    for step in sc.steps:
        settings.append((resolve(sc, f"steps.{step.index}.repeat"), step.repeat))
    assert scenario_hash(with_values(sc, settings)) == scenario_hash(sc)


def test_step_names_are_checked():
    with pytest.raises(ScenarioError, match=r"^s.toml:26: two steps are named 'map'"):
        loads(NAMED.replace('name = "forks"', 'name = "map"'), "s.toml")
    with pytest.raises(ScenarioError, match=r"^s.toml:14: name = '3': a step's name starts with a letter"):
        loads(NAMED.replace('name = "map"', 'name = "3"'), "s.toml")
    named = loads(NAMED)
    assert [s.name for s in named.steps] == [None, "map", None, "forks"]
    assert scenario_hash(loads(NAMED.replace('name = "map"\n', ""))) != scenario_hash(named)


# --- the command --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_sweep_runs_every_shipped_scenario_and_a_point_equals_a_plain_run(path, tmp_path, capsys):
    sc = load(path)
    assert sweep(tmp_path / "r.db", "--vary", f"machine.seed={sc.machine.seed}", "--policy", "linux",
                 scenario=str(path)) == 0
    grid = grid_json(tmp_path / "r.db", capsys)
    assert [r["values"] for r in grid["runs"]] == [{"machine.seed": sc.machine.seed}]
    plain = SweepMetrics().measure(RunSpec("linux", sc, "linux", {}), run(sc, "linux"))
    assert grid["runs"][0]["metrics"] == plain


def test_bad_keys_and_values_are_one_line_and_status_2(tmp_path, capsys):
    db = tmp_path / "r.db"
    assert sweep(db, "--vary", "machine.cpu=1,2") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ptshare: {SEGMENT}: unknown field 'machine.cpu', known: machine.memory, ")
    assert err.count("\n") == 1
    assert sweep(db, "--vary", "steps.fork.count=1") == 2
    assert "unknown field 'steps.fork.count', known: steps.fork.pid, steps.fork.child" in capsys.readouterr().err
    assert sweep(db, "--vary", "objects.sga.size=1GiB,3000") == 2
    assert "--vary objects.sga.size=3000: object 'sga': size must be" in capsys.readouterr().err
    assert sweep(db, "--vary", "machine.cpus=1", "--policy", "nope") == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert not db.exists(), "nothing is run, nor any database made, before every point is checked"


def test_the_grid_is_stored_reused_and_exported(tmp_path, capsys):
    db = tmp_path / "r.db"
    assert sweep(db, *SMALL) == 0
    out = capsys.readouterr().out
    assert "sweep 1: 8 runs (8 made now, 0 reused)" in out
    grid = grid_json(db, capsys)
    assert [(r["policy"], r["values"]) for r in grid["runs"][:3]] == [
        ("linux", {"objects.sga.size": "64MiB", "steps.helper-reads.count": 100}),
        ("shared-pt", {"objects.sga.size": "64MiB", "steps.helper-reads.count": 100}),
        ("linux", {"objects.sga.size": "64MiB", "steps.helper-reads.count": 1000})]
    by = {r["run"]: r["metrics"] for r in grid["runs"]}
    assert by["linux@objects.sga.size=128MiB,steps.helper-reads.count=1000"]["minflt"] > \
        by["linux@objects.sga.size=128MiB,steps.helper-reads.count=100"]["minflt"]
    assert by["linux@objects.sga.size=128MiB,steps.helper-reads.count=100"]["frames_used"] == 2 * \
        by["linux@objects.sga.size=64MiB,steps.helper-reads.count=100"]["frames_used"] == 2 * (64 << 20) // 4096

    # the same sweep again is the same sweep, every run reused; a wider one reuses the points it shares
    assert sweep(db, *SMALL) == 0
    assert "sweep 1: 8 runs (0 made now, 8 reused)" in capsys.readouterr().out
    assert sweep(db, *SMALL[:2], "--vary", "steps.helper-reads.count=100,1000,2000", "--policy", "linux,shared-pt") == 0
    assert "sweep 2: 12 runs (4 made now, 8 reused)" in capsys.readouterr().out
    with ResultsDB(db) as results:
        rows = results.runs()
    assert len(rows) == len({r["key"] for r in rows}) == 12

    assert main(["results", "--sweep", "2", "--db", str(db), "--export", str(tmp_path / "grid.csv")]) == 0
    with open(tmp_path / "grid.csv") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == 12
    assert list(exported[0])[:5] == ["sweep", "run", "policy", "objects.sga.size", "steps.helper-reads.count"]
    assert (exported[-1]["policy"], exported[-1]["objects.sga.size"], exported[-1]["steps.helper-reads.count"]) == \
        ("shared-pt", "128MiB", "2000")


def test_report_draws_a_metric_against_a_varied_key(tmp_path, capsys):
    db = tmp_path / "r.db"
    assert sweep(db, *SMALL) == 0
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--x", "objects.sga.size", "--y", "step.fork.est_ms",
                 "--out", str(tmp_path / "fig")]) == 0
    png = Path(capsys.readouterr().out.strip())
    assert png == tmp_path / "fig" / "sweep-1-step.fork.est_ms-vs-objects.sga.size.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    svg = png.with_suffix(".svg").read_text()
    for line in ("linux, steps.helper-reads.count=100", "shared-pt, steps.helper-reads.count=1000",
                 "objects.sga.size (MiB)"):
        assert f"<!-- {line} -->" in svg
    assert main(["report", "--db", str(db), "--x", "machine.cpus", "--y", "est_ms"]) == 2
    assert "--x machine.cpus: sweep 1 does not vary it; it varies: objects.sga.size, steps.helper-reads.count" in \
        capsys.readouterr().err
    assert main(["report", "--db", str(db), "--x", "objects.sga.size", "--y", "nope"]) == 2
    assert "--y nope: the runs of sweep 1 have no such metric; they have: " in capsys.readouterr().err
    assert main(["report", "--db", str(db), "--x", "objects.sga.size"]) == 2
    assert "--x KEY and --y METRIC go together" in capsys.readouterr().err
    assert main(["results", "--db", str(db), "--sweep", "7"]) == 2
    err = capsys.readouterr().err
    assert "holds no sweep 7; its sweeps: 1: fork-shared-segment varying objects.sga.size, steps.helper-reads.count" \
        in err


def test_asking_for_a_cluster_without_dask_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    for argv in (["sweep", SEGMENT, *SMALL, "--workers", "2"], ["experiment", "fork-exec", "--quick", "--cluster",
                                                                 "tcp://127.0.0.1:1"]):
        assert main([*argv, "--db", str(tmp_path / "r.db")]) == 2
        err = capsys.readouterr().err
        assert err == (f"ptshare: {argv[-2]} runs on Dask distributed, which is not installed here: "
                       "pip install 'ptshare[dask]'\n")


def test_a_run_made_by_another_ptshare_is_refused_not_stored(tmp_path):
    from ptshare.cost import load_profile
    from ptshare.experiments.runner import Made, make_runs
    from ptshare.sweep.grid import jobs

    class OtherModel:  # an executor whose worker has other model sources
        def map(self, work, todo, bar):
            for job in todo:
                made = work(job, None)
                yield job, Made(made.metrics, made.wall_s, made.version, "0" * 16)

    sc = load(SEGMENT)
    todo = jobs(plan(sc, parse_axes(sc, ["objects.sga.size=64MiB"]), ["linux"]), load_profile())
    with ResultsDB(tmp_path / "r.db") as db:
        with pytest.raises(UsageError, match=r"was made by ptshare \S+ \(model 0{16}\), not this ptshare"):
            make_runs(todo, db, OtherModel())
        assert db.runs() == []


def test_host_runs_are_not_sent_to_a_cluster(tmp_path, capsys):
    for command in (["experiment", "fork-vs-segment", "--quick"], ["demo", "--quick", "--out", str(tmp_path / "o")]):
        assert main([*command, "--with-host", "--workers", "2"]) == 2
        assert capsys.readouterr().err == ("ptshare: --with-host measures this machine's kernel, one run at a time; "
                                           "it cannot run with --workers or --cluster\n")
