"""The experiments: every sentence's claim checked against the data its figure draws (at quick sizes)."""

import contextlib
import fcntl
import io
import itertools
import json
import os
import re
import struct
import termios
import time

import pytest

from ptshare.cli.main import main
from ptshare.experiments import EXPERIMENTS, ResultsDB, run_experiment
from ptshare.experiments.base import Outcome, Series, label, sig


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    db = ResultsDB(tmp_path_factory.mktemp("exp") / "results.db")
    out = {}
    for name, exp in EXPERIMENTS.items():
        out[name], _ = run_experiment(exp, exp.params(quick=True), db, progress=False)
    db.close()
    return out


def series(outcome: Outcome, panel: int, name: str) -> Series:
    return next(s for s in outcome.figure.panels[panel].series if s.name == name)


def text(outcome: Outcome) -> str:
    return " ".join(outcome.sentences)


def test_every_experiment_has_a_figure_a_table_and_sentences(outcomes):
    assert list(outcomes) == ["fork-vs-segment", "lazy-tradeoff", "fork-exec", "fork-private", "redis-snapshot",
                              "database", "aslr", "worst-cases"]
    for o in outcomes.values():
        assert o.figure.panels and all(p.series for p in o.figure.panels)
        assert o.table.rows and all(len(r) == len(o.table.headers) for r in o.table.rows)
        assert 2 <= len(o.sentences) <= 4 and all(s.endswith(".") for s in o.sentences)


def test_fork_private_claims(outcomes):
    o = outcomes["fork-private"]
    fork = {p: series(o, 0, label(p)).y for p in o.params["policies"]}
    tables = {p: series(o, 1, label(p)).y for p in o.params["policies"]}
    later = {p: series(o, 2, label(p)).y for p in o.params["policies"]}
    assert all(b > a for a, b in itertools.pairwise(fork["linux"])), "Linux's fork grows with the heap"
    for p in ("odf", "async-fork"):
        assert max(fork[p]) / min(fork[p]) < 1.2 and fork[p][-1] < fork["linux"][-1] / 10, f"{p}'s fork is flat"
    assert fork["odf"][-1] < fork["cow-pt"][-1] < fork["linux"][-1]  # cow-pt counts the pages at fork
    assert tables["odf"] == tables["cow-pt"] and len(set(tables["odf"])) == 1  # no PTE table at any size
    assert tables["async-fork"] == tables["linux"]  # copied, in the background
    assert later["async-fork"] == pytest.approx(later["linux"])
    assert later["odf"][-1] > later["cow-pt"][-1] > later["linux"][-1]
    speedup = fork["linux"][-1] / fork["odf"][-1]
    assert f"{sig(speedup)} times faster (the paper: 65 times at 1 GB; here {sig(speedup)} times at 128 MiB)" \
        in o.sentences[0]
    vmpte = o.facts["cow-pt_child_vmpte_kb"]
    assert vmpte == o.facts["linux_child_vmpte_kb"]
    assert f"{vmpte:,} kB (the v4 cover letter shows 44 kB" in o.sentences[1]
    assert f"adds {tables['odf'][-1]:,} kB of page tables instead of {tables['linux'][-1]:,} kB" in o.sentences[0]
    extra = later["odf"][-1] - later["linux"][-1]
    assert f"on-demand fork {sig(extra)} ms more than Linux" in o.sentences[3]


def test_redis_snapshot_claims(outcomes):
    o = outcomes["redis-snapshot"]
    f = o.facts
    heaps = o.params["heaps_gib"]
    assert f["linux_tables"] == 0 and f["linux_extra_ms"] == 0 and f["linux_cut_pct"] == 0
    assert f["async-fork_fork_ms"] < f["odf_fork_ms"] < f["cow-pt_fork_ms"] < f["linux_fork_ms"]
    linux = series(o, 0, label("linux")).y
    assert all(b > a for a, b in itertools.pairwise(linux)), "Linux's fork grows with the heap"
    # A span's table is copied by the first write that finds it shared (odf) or not yet copied (async-fork).
    assert 0 < f["async-fork_tables"] <= f["odf_tables"] <= heaps[-1] * 512
    cut = series(o, 1, label("async-fork")).y
    assert cut[-1] == pytest.approx(f["async-fork_cut_pct"]) and min(cut) > 90
    assert f"stalls {sig(f['linux_fork_ms'])} ms in Linux's fork" in o.sentences[0]
    assert f"{sig(f['async-fork_cut_at_pct'])}% under async-fork" in o.sentences[2]
    if f["async-fork_share_pct"] > 1:
        assert f"one table copy ({sig(f['odf_per_table_us'])} µs" in o.sentences[3]


def test_fork_vs_segment_claims(outcomes):
    o = outcomes["fork-vs-segment"]
    sizes = o.params["sizes_gib"]
    eager = series(o, 0, label("eager")).y
    assert all(b > a for a, b in itertools.pairwise(eager)), "eager fork grows with the segment"
    slope = (eager[-1] - eager[0]) / ((sizes[-1] - sizes[0]) * (1 << 30)) * 100e6
    assert o.facts["eager_ms_per_100mb"] == pytest.approx(slope, rel=1e-6)
    assert f"{slope:.2f} ms per 100 MB" in o.sentences[0]
    assert f"{eager[-1]:.1f} ms at 256 MiB" in o.sentences[0]
    for p in ("lazy", "linux"):
        ys = series(o, 0, label(p)).y
        assert max(ys) / min(ys) < 1.05, f"{p} fork is flat"
        assert max(ys) < eager[1]
    assert f"{max(series(o, 0, label('linux')).y):.3f} ms at every size" in o.sentences[2]
    shared = series(o, 0, label("shared-pt")).y
    assert all(s < e for s, e in zip(shared[1:], eager[1:], strict=True))
    assert f"{shared[-1]:.2f} ms at 256 MiB" in o.sentences[2]
    ratio = o.facts["published_ns_per_pte"] / o.facts["eager_ns_per_pte"]
    assert f"{ratio:.0f} times more" in o.sentences[1]


def test_lazy_tradeoff_claims(outcomes):
    o = outcomes["lazy-tradeoff"]
    panel = o.figure.panels[0]
    eager = series(o, 0, label("eager"))
    for p in ("lazy", "linux"):
        x = o.facts[f"{p}_breakeven_pct"]
        assert x is not None and f"less than {x:.1f}%" in o.sentences[0]
        ys = series(o, 0, label(p)).y
        for pct, y, e in zip(eager.x, ys, eager.y, strict=True):
            assert (y <= e) if pct < x else (y > e), f"{p} at {pct}%: {y} vs eager {e}"
        assert any(v[1] == pytest.approx(x) for v in panel.vlines)
        assert ys[-1] > eager.y[-1]
        assert f"{ys[-1]:.1f} ms under" in o.sentences[1]
    shared = series(o, 0, label("shared-pt")).y
    # "pays neither": less than eager's copy at every share of the segment the child reads, and than
    # lazy's faults once it reads any (reading nothing, lazy pays nothing and sharing its attach)
    lazy = series(o, 0, label("lazy")).y
    assert all(y < e for y, e in zip(shared, eager.y, strict=True))
    assert all(y < z for pct, y, z in zip(eager.x, shared, lazy, strict=True) if pct > 0)
    assert o.facts["shared-pt_faults_max"] == 0 and "0 faults" in o.sentences[2]


def test_fork_exec_claims(outcomes):
    o = outcomes["fork-exec"]
    child = {p: series(o, 0, label(p)).y for p in o.params["policies"]}
    for p, ys in child.items():
        assert f"{ys[-1]:.1f} ms under" in o.sentences[0]
        if p != "eager":
            assert all(y < e for y, e in zip(ys, child["eager"], strict=True))
    rewrites = series(o, 3, "parent's write faults").y
    assert len(set(rewrites)) == 1, "the parent's write faults are the same under every policy"
    assert f"({rewrites[0]:.1f} ms)" in o.sentences[2]
    linux = o.params["policies"].index("linux")
    total = sum(series(o, i, part).y[linux] for i, part in ((1, "fork"), (2, "exec"), (3, "parent's write faults")))
    assert f"{100 * rewrites[linux] / total:.0f}% of the total" in o.sentences[2]
    assert f"{o.facts['linux_ptes_copied']:,} PTEs" in o.sentences[1]


def test_database_claims(outcomes):
    o = outcomes["database"]
    policies = o.params["policies"]
    for p in policies:
        peak = max(series(o, 0, label(p)).y)
        assert f"{sig(peak)} MiB under" in o.sentences[0]
    faults = dict(zip(series(o, 1, "faults per transaction").x, series(o, 1, "faults per transaction").y,
                      strict=True))
    times = dict(zip(series(o, 2, "µs per transaction").x, series(o, 2, "µs per transaction").y, strict=True))
    for p in policies:
        assert f"{sig(faults[p])} faults and {sig(times[p])} µs" in o.sentences[1]
    assert faults["shared-pt"] < faults["linux"] < faults["lazy"]
    assert o.facts["cheapest"] == min(times, key=times.get)
    # one all-CPU flush per exit that unshares (mmu_gather batching), not one per table
    flushes, unshared = o.facts["shared-pt_flushes_all"], o.facts["shared-pt_unshared"]
    assert 0 < flushes < unshared and f"unshared {unshared:,} tables with {flushes:,} all-CPU TLB flushes" in \
        o.sentences[1]
    linux, shared = series(o, 3, "Linux 6.18").y, series(o, 3, "shared page tables (2006)").y
    freed = series(o, 3, "freed by sharing").y
    assert freed == pytest.approx([a - b for a, b in zip(linux, shared, strict=True)])
    assert f"free {sig(freed[-1])} GB" in o.sentences[2]



def test_database_steady_state(outcomes):
    """The steady-state view: the gain its sentence gives is the one its panel draws, beside the
    published 3% and +25%, and shared tables never send more walk references to DRAM."""
    o = outcomes["database"]
    backends = o.params["steady_backends"]
    gain = series(o, 5, "model")
    assert gain.x == backends and o.figure.panels[5].hlines == [("McCracken 2005: 3%", 3.0), ("IBM 2006: +25%", 25.0)]
    for n, g in zip(backends, gain.y, strict=True):
        assert f"{g:+.1f}% with {n}" in o.sentences[3]
        us = o.facts[f"steady_us_per_txn@{n}"]
        assert g == pytest.approx(100 * (us["linux"] / us["shared-pt"] - 1))
    linux_dram = series(o, 4, f"{label('linux')}: DRAM").y
    shared_dram = series(o, 4, f"{label('shared-pt')}: DRAM").y
    assert all(s <= li for s, li in zip(shared_dram, linux_dram, strict=True))

def test_aslr_claims(outcomes):
    o = outcomes["aslr"]
    bits = o.params["bits"]
    rates = [s.y for s in o.figure.panels[0].series]
    assert all(r[0] == 100 for r in rates), "at 0 bits every process shares"
    for n, r in enumerate(rates):
        b = o.facts[f"v{n}_below_half"]
        if b is None:
            assert min(r) >= 50
        else:
            i = bits.index(b)
            assert r[i] < 50 and all(v >= 50 for v in r[:i])
    assert rates[0][-1] < 50 <= rates[4][-1], "at 28 bits only 1 GiB-aligned hugetlb still shares"
    assert f"{rates[0][-1]:.0f}% at 28" in o.sentences[0]
    assert f"1 GiB-aligned, {min(rates[4]):.0f}%" in o.sentences[2]


def test_aslr_points_are_means_over_seeds_with_their_spread(outcomes):
    o = outcomes["aslr"]
    seeds, bits = o.params["seeds"], o.params["bits"]
    assert len(seeds) >= 2
    hugetlb = o.figure.panels[0].series[3]
    assert hugetlb.low is not None and hugetlb.high is not None
    assert all(lo <= y <= hi for lo, y, hi in zip(hugetlb.low, hugetlb.y, hugetlb.high, strict=True))
    assert f"mean of {len(seeds)} seeds" in o.figure.caption and f"the mean of {len(seeds)} seeds" in o.sentences[2]
    assert len(EXPERIMENTS["aslr"].plan(o.params)) == 5 * len(bits) * len(seeds)


def test_worst_cases_claims(outcomes):
    o = outcomes["worst-cases"]
    sga = dict(zip(series(o, 0, "page tables").x, series(o, 0, "page tables").y, strict=True))
    huge = dict(zip(series(o, 1, "page tables").x, series(o, 1, "page tables").y, strict=True))
    assert f"{sig(sga[label('linux')])} GiB of page tables under Linux 6.18" in o.sentences[0]
    assert sga[label("shared-pt-2005")] < sga[label("shared-pt")] < sga[label("linux")]
    saved = huge[label("linux-no-pmd-share")] - huge[label("linux")]
    assert saved > 0 and f"{sig(saved)} GiB saved" in o.sentences[3]
    # mshare: the host's tables once, and one fault per reader (the link) instead of its reads.
    assert sga[label("mshare")] < sga[label("shared-pt-2005")]
    assert f"mshare region (the series' v3), it needs {sig(sga[label('mshare')])} GiB" in o.sentences[2]
    faults = {r[1]: r[3] for r in o.table.rows if r[0].startswith("sga")}
    pages, processes = o.facts["sga_gib"] * (1 << 18), o.facts["sga_processes"]
    assert faults["linux"] == pages + (processes - 1) * pages // 16  # fault-around: 16 pages a read fault
    assert faults["mshare"] == pages + processes  # the writer's faults, and one link per process
    assert o.notes, "a scaled-down run says the published figures are for the full size"


def test_sentences_are_computed_not_fixed(tmp_path):
    """Other parameters, other numbers: the same sentence changes with the data."""
    exp = EXPERIMENTS["lazy-tradeoff"]
    db = ResultsDB(tmp_path / "r.db")
    a, _ = run_experiment(exp, exp.params(quick=True), db, progress=False)
    b, _ = run_experiment(exp, exp.params({"policies": ["eager", "linux"]}, quick=True), db, progress=False)
    c, _ = run_experiment(exp, exp.params({"segment_gib": 0.125}, quick=True), db, progress=False)
    assert a.sentences[0] != b.sentences[0] and "lazy copy" not in b.sentences[0]
    assert a.facts["eager_ms"] != c.facts["eager_ms"] and a.sentences[1] != c.sentences[1]


def test_rerun_reuses_the_stored_runs(tmp_path):
    exp = EXPERIMENTS["fork-exec"]
    db = ResultsDB(tmp_path / "r.db")
    first, tally = run_experiment(exp, exp.params(quick=True), db, progress=False)
    assert tally.ran == 8 and tally.reused == 0
    again, tally = run_experiment(exp, exp.params(quick=True), db, progress=False)
    assert tally.ran == 0 and tally.reused == 8
    assert again.sentences == first.sentences
    assert len(db.runs()) == 8


def test_experiment_command_json(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    assert main(["experiment", "fork-exec", "--quick", "--format", "json", "--db", db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "ptshare.experiment/1" and doc["experiment"] == "fork-exec"
    assert doc["runs"] == {"made": 8, "reused": 0} and len(doc["sentences"]) == 3
    assert main(["experiment", "fork-exec", "--quick", "--db", db, "--figure", str(tmp_path / "f.svg")]) == 0
    out = capsys.readouterr().out
    assert "8 runs (0 made now, 8 reused)" in out and out.count("* ") == 3
    assert (tmp_path / "f.svg").read_text().startswith("<svg")


@pytest.mark.parametrize(("argv", "message"), [
    (["experiment", "nope"], "unknown experiment 'nope'; experiments: fork-vs-segment, "),
    (["experiment", "aslr", "--set", "nope=1"], "experiment aslr has no parameter 'nope'; its parameters: bits"),
    (["experiment", "aslr", "--set", "bits"], "--set 'bits': write KEY=VALUE"),
    (["experiment", "aslr", "--set", "processes=many"], "--set processes=many: the value must be a whole number"),
    (["experiment", "aslr", "--set", "processes=1"], "processes must be at least 2"),
    (["experiment", "database", "--set", "policies=eager,bogus"], "policies: unknown policy 'bogus'"),
    (["experiment", "aslr", "--with-host"], "--with-host applies to fork-vs-segment only"),
    (["experiment", "aslr", "--figure", "x.pdf"], "--figure x.pdf: the file name must end in .png or .svg"),
    (["results", "--experiment", "nope"], "unknown experiment 'nope'"),
    (["results", "--export", "runs.xlsx"], "the file name must end in .csv or .parquet"),
    (["experiment", "aslr", "--set", "seeds=1,-1"], "--set seeds=-1: the value must be a whole number, 0 or more"),
    (["experiment", "aslr", "--set", "seeds=3,3"], "seeds must be one or more different seeds"),
    (["experiment", "database", "--set", "zipf_s=nan"], "--set zipf_s=nan: the value must be a finite number"),
    (["experiment", "database", "--set", "zipf_s=20"], "zipf_s must be at most 10"),
    (["experiment", "aslr", "--figure", "/nonexistent/f.png"], "--figure /nonexistent/f.png: the directory"),
    (["results", "--export", "/nonexistent/runs.csv"], "--export /nonexistent/runs.csv: the directory"),
    (["report", "--out", __file__], "exists and is not a directory"),
])
def test_user_errors_are_one_line_and_status_2(tmp_path, capsys, argv, message):
    ResultsDB(tmp_path / "r.db").close()
    assert main([*argv, "--db", str(tmp_path / "r.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_with_host_when_the_host_backend_is_unavailable(tmp_path, capsys, monkeypatch):
    import ptshare.experiments.runner as runner

    monkeypatch.setattr(runner, "host_unavailable", lambda: "the host backend needs Linux; this is plan9")
    assert main(["experiment", "fork-vs-segment", "--with-host", "--quick", "--db", str(tmp_path / "r.db")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"ptshare: the host backend is unavailable, so --with-host cannot run: the host backend "
                        r"needs Linux; this is plan9\n", err)
    assert not (tmp_path / "r.db").exists(), "nothing is stored for a run that cannot start"


def test_a_file_that_is_not_a_database(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_text("not sqlite at all, " * 100)
    assert main(["results", "--db", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be used as a ptshare results database" in err


@contextlib.contextmanager
def terminal(columns: int):
    """A pseudo-terminal ``columns`` wide: (the stream a program writes to, a function that returns
    what has been written to it so far)."""
    main_fd, sub_fd = os.openpty()
    fcntl.ioctl(sub_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    os.set_blocking(main_fd, False)
    stream = open(sub_fd, "w")  # noqa: SIM115 -- closed below

    def written() -> str:
        stream.flush()
        out = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(main_fd, 65536):
                out += chunk
        return out.decode()

    try:
        yield stream, written
    finally:
        stream.close()
        os.close(main_fd)


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_progress_bar_fits_the_terminal_moves_inside_runs_and_is_erased(columns):
    from ptshare.experiments.progress import RunsBar

    with terminal(columns) as (stream, written):
        bar = RunsBar("fork-vs-segment", 4, stream=stream, delay=0)
        step = bar.run(2, "shared-pt-2005@16GiB-with-a-long-name")
        for done in (1, 2):
            time.sleep(0.15)  # a bar is redrawn at most ten times a second
            step(done, 2)
        drawn = [line for line in written().split("\r") if line.strip()]
        bar.close()
        erased = written()
    assert drawn and all(len(line) < columns for line in drawn), drawn
    assert drawn[-1].startswith("fork-vs-segment |")
    if columns >= 80:
        assert drawn[-1].startswith("fork-vs-segment |#") and "run 3/4 shared-pt-2005@16GiB" in drawn[-1]
    if columns >= 200:
        assert len(drawn[-1]) > 150  # the bar grows to fill the line
    assert erased.startswith("\r") and erased.endswith("\r") and not erased.strip()


def test_progress_off_a_terminal_is_one_line_per_finished_run():
    from ptshare.experiments.progress import RunsBar

    piped = io.StringIO()
    bar = RunsBar("aslr", 2, stream=piped)
    first = bar.run(0, "v0@0")
    first(1, 3)
    first(3, 3)
    first(1, 1)  # reported once
    bar.run(1, "v0@8")(1, 1)
    bar.close()
    lines = piped.getvalue().splitlines()
    assert [line.rsplit(" in ", 1)[0] for line in lines] == ["aslr: run 1/2 v0@0 done", "aslr: run 2/2 v0@8 done"]
    assert all(re.fullmatch(r"\d+\.\d s", line.rsplit(" in ", 1)[1]) for line in lines)
    quiet = io.StringIO()
    silent = RunsBar("x", 1, stream=quiet, enabled=False)
    silent.run(0, "a")(1, 1)
    silent.close()
    assert quiet.getvalue() == ""


def test_counts_agree_in_number_and_carry_separators():
    from ptshare.experiments.base import count

    assert count(1, "all-CPU TLB flush") == "1 all-CPU TLB flush"
    assert count(0, "all-CPU TLB flush") == "0 all-CPU TLB flushes"
    assert count(2048, "table") == "2,048 tables"
    assert count(3, "process", "processes") == "3 processes"


def test_sentences_write_numbers_as_people_read_them(outcomes):
    for name, o in outcomes.items():
        for text in [*o.sentences, *o.notes, o.figure.caption]:
            assert not re.search(r"\b1 [^,;.()]*(flushes|tables|processes|faults|agents)\b", text), (name, text)
            bare = set(re.findall(r"(?<![\d.,])\d{4,}(?![\d,])", text)) - {"2005", "2006"}  # years
            assert not bare, (name, bare, text)
