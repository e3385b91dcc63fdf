"""The command line and the JSON contract other tools depend on."""

import csv
import io
import json

import pytest

from ptshare.cli.main import main

SCENARIO = """\
name = "cli"

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
vma = "s"
object = "seg"
shared = true
align = "2MiB"

[[steps]]
op = "touch"
pid = "p"
vma = "s"
access = "write"

[[steps]]
op = "fork"
pid = "p"
child = "c{i}"
repeat = 2

[[steps]]
op = "touch"
pid = "c{i}"
vma = "s"
repeat = 2

[[steps]]
op = "exit"
pid = "c0"
"""


def _scenario(tmp_path):
    path = tmp_path / "cli.toml"
    path.write_text(SCENARIO)
    return str(path)


def test_json_contract(tmp_path, capsys):
    assert main(["run", _scenario(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "ptshare.run/1"
    assert (doc["scenario"], doc["policy"], doc["backend"]) == ("cli", "linux", "sim")
    assert doc["final"] == doc["steps"][-1]
    for n, step in enumerate(doc["steps"]):
        assert step["index"] == n
        assert {"index", "op", "pid", "processes", "system", "est_ns", "wall_ns"} <= set(step)
        assert {"pagetables_kb", "frames_used", "tlb_flush_all"} <= set(step["system"])
        for proc in step["processes"].values():
            assert {"minflt", "vmpte_kb", "rss_kb", "alive"} <= set(proc)
    final = doc["final"]["processes"]
    assert final["c0"]["alive"] is False and final["c0"]["minflt"] == 128  # kept after exit
    assert final["c1"]["alive"] is True


def test_json_several_policies_is_an_array(tmp_path, capsys):
    assert main(["run", _scenario(tmp_path), "--policy", "eager,linux", "--format", "json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["policy"] for d in docs] == ["eager", "linux"]


@pytest.mark.parametrize("policies", ["linux", "eager,linux"])
def test_jsonl_is_one_object_per_line_however_many_policies(tmp_path, capsys, policies):
    assert main(["run", _scenario(tmp_path), "--policy", policies, "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["policy"] for d in docs] == policies.split(",")
    assert all(d["schema"] == "ptshare.run/1" for d in docs)
    assert main(["run", _scenario(tmp_path), "--policy", policies, "--format", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert [set(d) for d in (as_json if "," in policies else [as_json])] == [set(d) for d in docs]
    assert main(["compare", _scenario(tmp_path), "--format", "jsonl"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["schema"] == "ptshare.compare/1"


def test_csv(tmp_path, capsys):
    assert main(["run", _scenario(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and {"policy", "step", "process", "minflt", "vmpte_kb"} <= set(rows[0])


def test_table_is_readable(tmp_path, capsys):
    assert main(["run", _scenario(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PageTables kB" in out and "VmPTE kB" in out and "c1" in out
    steps, processes = out.split("\n\n")[:2]
    assert steps.splitlines()[1].split()[3:6] == ["faults", "in", "step"]  # per step; minflt is cumulative
    assert processes.splitlines()[0].split()[2:4] == ["minflt", "(total)"]


@pytest.mark.parametrize("columns", [50, 80, 120])
def test_help_never_breaks_a_name_at_a_hyphen(capsys, monkeypatch, columns):
    from ptshare.bench.cases import ALL

    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    words = capsys.readouterr().out.replace(",", " ").split()
    assert set(ALL) <= set(words)
    assert not [w for w in words if w.endswith("-")]


def test_compare(tmp_path, capsys):
    assert main(["compare", _scenario(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["policies"]) >= {"eager", "lazy", "linux", "shared-pt"}
    assert doc["policies"]["eager"]["ptes_copied"] > 0
    assert main(["compare", _scenario(tmp_path)]) == 0
    assert "PTEs copied at fork" in capsys.readouterr().out


def test_policies(capsys):
    assert main(["policies", "--format", "json"]) == 0
    names = [p["name"] for p in json.loads(capsys.readouterr().out)]
    assert names[:3] == ["eager", "lazy", "linux"]


def test_check_flag_runs_the_invariants(tmp_path, capsys):
    assert main(["run", _scenario(tmp_path), "--check", "--policy", "shared-pt"]) == 0


def test_output_that_cannot_be_written_is_refused_before_running(tmp_path, capsys, monkeypatch):
    import ptshare.scenario as scenario_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("ran before checking -o")

    monkeypatch.setattr(scenario_module, "run", must_not_run)
    for command in ("run", "compare"):
        assert main([command, _scenario(tmp_path), "-o", str(tmp_path / "no" / "such" / "out.json")]) == 2
        assert "the directory" in capsys.readouterr().err
        assert main([command, _scenario(tmp_path), "-o", str(tmp_path)]) == 2
        assert "is a directory" in capsys.readouterr().err


def test_output_that_fails_to_write_is_printed_instead(tmp_path, capsys):
    """A full disk after the run: the result goes to stdout, and the error names the file."""
    assert main(["run", _scenario(tmp_path), "--format", "json", "-o", "/dev/full"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["scenario"] == "cli"
    assert "cannot write /dev/full" in captured.err and "printed above" in captured.err


def test_a_profile_that_is_not_text_is_refused(tmp_path, capsys):
    profile = tmp_path / "p.toml"
    profile.write_bytes(b"\xff\xfe\x00binary")
    assert main(["run", _scenario(tmp_path), "--profile", str(profile)]) == 2
    err = capsys.readouterr().err
    assert "not a text file" in err and "Traceback" not in err


def test_a_profile_with_a_number_that_is_not_finite_is_refused(tmp_path, capsys):
    for bad in ("nan", "inf"):
        profile = tmp_path / "p.toml"
        profile.write_text(f"[ns]\nfault = {bad}\n")
        assert main(["run", _scenario(tmp_path), "--profile", str(profile)]) == 2
        err = capsys.readouterr().err
        assert f"fault = {bad} must be a non-negative, finite number of nanoseconds" in err
    assert main(["run", _scenario(tmp_path), "--profile", "/dev/zero"]) == 2
    assert "is not a file" in capsys.readouterr().err
