"""Time predictions against real programs: `ptshare validate --times`, the fork probe, and a C
program's fork against `ptshare run` of the same scenario.

No assertion here depends on how fast this machine is: the checks are that the figures are
measured, positive, consistent with each other, and (for the C program) that prediction and
measurement are within a factor of two -- a band wide enough for a busy machine; `ptshare bench
--real` records the exact ratios.
"""

import json
import os
import statistics
import subprocess
import sys
import textwrap

import pytest

from ptshare.cli.main import main
from ptshare.host.backend import host_problem
from ptshare.realfork.predict import predict, probe_scenario
from ptshare.realfork.probe import compiler_problem, run_probe
from ptshare.scenario import run

HOST = host_problem()
CC = compiler_problem()
needs_host = pytest.mark.skipif(HOST is not None, reason=HOST or "")
needs_cc = pytest.mark.skipif(CC is not None, reason=CC or "")
MIB = 1 << 20



def scenario_toml(name: str, mib: int, child_reads: bool) -> str:
    """A process writes ``mib`` MiB of private anonymous memory and forks; the child (reads it and) exits."""
    steps = [{"op": "spawn", "pid": "p"}, {"op": "mmap", "pid": "p", "vma": "mem", "size": f"{mib}MiB"},
             {"op": "touch", "pid": "p", "vma": "mem", "access": "write"}, {"op": "fork", "pid": "p", "child": "c"},
             *([{"op": "touch", "pid": "c", "vma": "mem"}] if child_reads else []), {"op": "exit", "pid": "c"}]
    return f'name = "{name}"\n' + "".join("\n[[steps]]\n" + "".join(f'{k} = "{v}"\n' for k, v in step.items())
                                         for step in steps)


@pytest.mark.parametrize("value", ["-1", "lots", "1000%"])
def test_a_bad_time_tolerance_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--times", "--time-tolerance", value])
    assert exc.value.code == 2
    assert f"takes a fraction such as 0.15 or a percentage such as 15%, not {value!r}" in capsys.readouterr().err


@needs_host
def test_validate_times_reports_every_timed_step_and_the_worker_part(tmp_path, capsys):
    path = tmp_path / "forks.toml"
    path.write_text(scenario_toml("timed-forks", 64, child_reads=True))
    status = main(["validate", str(path), "--times", "--time-runs", "2", "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    times = doc["times"]
    assert [(s["step"], s["op"]) for s in times["steps"]] == [(2, "touch"), (3, "fork"), (4, "touch"), (5, "exit")]
    for s in times["steps"]:
        assert len(s["measured_ns"]) == 2 and all(ns > 0 for ns in s["measured_ns"])
        assert abs(s["kernel_ns"] - (statistics.median(s["measured_ns"]) - s["worker_overhead_ns"])) <= 1
        assert s["predicted_ns"] >= 0
    overhead = times["worker_overhead_ns"]
    assert overhead["fork"] > 0 and overhead["call"] > 0  # an interpreter's fork costs more than the kernel's own
    assert set(times["summary"]) == {"touch", "fork", "exit"}
    ok = all(op["median_abs_error"] <= 0.15 for op in times["summary"].values())
    assert times["ok"] == ok
    assert status == (0 if ok and doc["ok"] else 1)


@needs_cc
def test_the_probe_measures_what_it_was_asked_to():
    r = run_probe(8 * MIB, vmas=3, forks=2)
    assert (r.size, r.pages, r.vmas, r.layout) == (8 * MIB, 2048, 3, "fresh")
    assert len(r.forks) == len(r.exits) == 2
    assert all(f.cpu_ns > 0 and f.wall_ns > 0 for f in (*r.forks, *r.exits, r.munmap, r.touch))
    assert r.adjacent == -1 or 0 <= r.adjacent <= 1


def test_the_probe_scenario_copies_what_the_probe_wrote():
    p = predict(64 * MIB)
    assert p.ptes == 64 * MIB // 4096 and p.fork_events["pte_tables_copied"] == 32
    assert p.fork_ns > 0 and p.profile == "default"
    sparse = predict(64 * MIB, stride=2 * MIB)
    assert sparse.fork_events["ptes_copied"] == sparse.fork_events["pte_tables_copied"] == 32
    assert predict(0, vmas=10).fork_events["vmas_copied"] == 10


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
    size_t size = strtoul(argv[1], NULL, 0) << 20;
    char *a = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(a, size, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < size; i += 4096)
        a[i] = 1;
    for (int round = 0; round < 4; round++) {   /* the first is a warm-up */
        long long t0 = cpu();
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        long long t1 = cpu();
        waitpid(pid, NULL, 0);
        if (round)
            printf("%lld\n", t1 - t0);
    }
    return 0;
}
"""



@needs_cc
def test_a_c_programs_own_fork_against_ptshare_run(tmp_path):
    """A C program writes 2 GiB and times its own fork(); `ptshare run` of the same scenario says
    what the cost model predicts.  The ratio is printed; the check is a wide band."""
    mib = 2048
    source = tmp_path / "forkself.c"
    source.write_text(textwrap.dedent(C_PROGRAM))
    subprocess.run(["cc", "-O2", "-o", str(tmp_path / "forkself"), str(source)], check=True)
    out = subprocess.run([str(tmp_path / "forkself"), str(mib)], check=True, capture_output=True, text=True).stdout
    measured = sorted(int(x) for x in out.split())[1]  # the median of three
    (tmp_path / "c.toml").write_text(scenario_toml(f"c-program-{mib}m", mib, child_reads=False))
    doc = json.loads(subprocess.run([sys.executable, "-m", "ptshare", "run", str(tmp_path / "c.toml"), "--format",
                                     "json"], check=True, capture_output=True, text=True,
                                    env=dict(os.environ)).stdout)
    fork = next(s for s in doc["steps"] if s["op"] == "fork")
    assert fork["events"]["ptes_copied"] == mib * 256
    ratio = fork["est_ns"] / measured
    print(f"C program's fork of {mib} MiB: measured {measured / 1e6:.1f} ms (CPU), ptshare run predicts "
          f"{fork['est_ns'] / 1e6:.1f} ms: ratio {ratio:.2f}")
    assert 0.5 <= ratio <= 2.0, f"predicted / measured = {ratio:.2f}"


def test_the_probe_scenario_is_the_c_programs_scenario():
    """The scenario the test above runs through the CLI and the probe's own scenario price the fork alike."""
    from ptshare.scenario import loads

    cli = run(loads(scenario_toml("c-program", 64, child_reads=False)), "linux")
    probe = run(probe_scenario(64 * MIB), "linux")
    fork = [next(s for s in r.steps if s.op == "fork") for r in (cli, probe)]
    assert fork[0].events == fork[1].events and fork[0].est_ns == fork[1].est_ns


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="snapshots read /proc")
def test_whatif_names_the_profile_and_machine_its_times_come_from(tmp_path, capsys):
    path = tmp_path / "sleep.npz"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert main(["snapshot", "--pid", str(sleeper.pid), "-o", str(path)]) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    capsys.readouterr()
    assert main(["whatif", str(path), "--policy", "linux"]) == 0
    text = capsys.readouterr().out
    from ptshare.cost import load_profile

    profile = load_profile()
    assert f"times from the cost profile {profile.name!r}, measured on {profile.machine}" in " ".join(text.split())


@needs_cc
def test_bench_real_prints_and_writes_each_size(tmp_path, capsys, monkeypatch):
    from ptshare.realfork import compare

    monkeypatch.setattr(compare, "SIZES", (4 * MIB, 16 * MIB))
    monkeypatch.setattr(compare, "RUNS", 2)
    out = tmp_path / "bench.json"
    assert main(["bench", "--real", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fork of a C program" in text and "profile 'default'" in text
    real = json.loads(out.read_text())["real"]
    assert real["runs"] == 2 and [s["size"] for s in real["sizes"]] == [4 * MIB, 16 * MIB]
    for s in real["sizes"]:
        assert len(s["cpu_ns_all"]) == 2 and s["measured_cpu_ns"] == round(statistics.median(s["cpu_ns_all"]))
        assert s["ptes"] == s["size"] // 4096
        assert s["ratio"] == pytest.approx(s["predicted_ns"] / s["measured_cpu_ns"], rel=1e-3)
        assert 0 <= s["predicted_frames_adjacent"] <= 1
        assert s["ratio_with_measured_frames"] == pytest.approx(
            s["predicted_with_measured_frames_ns"] / s["measured_cpu_ns"], rel=1e-3)
    assert len(real["load_average"]) == 2
