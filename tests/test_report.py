"""The report: one self-contained HTML file that a real browser renders, every figure, no console errors.

The browser is Debian's ``chromium``, which ``make deps`` installs; when it is missing the browser
test is skipped and says why (under CI it fails).
"""

import html
import json
import re
import shutil
import subprocess

import pytest

from ptshare.cli.main import main
from ptshare.experiments import EXPERIMENTS, ResultsDB, run_experiment
from ptshare.experiments.report import write_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of every experiment at quick sizes: (its path, the outcomes it shows)."""
    out = tmp_path_factory.mktemp("report")
    outcomes = {}
    with ResultsDB(out / "results.db") as db:
        for name, exp in EXPERIMENTS.items():
            outcomes[name], _ = run_experiment(exp, exp.params(quick=True), db, progress=False)
        path = write_report(db, out)
    return path, outcomes


def test_report_is_one_self_contained_file(report):
    path, outcomes = report
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<section") == len(EXPERIMENTS)
    assert text.count("<svg") == len(EXPERIMENTS) and text.count("<table") == len(EXPERIMENTS)
    for tag in ("<script", "<link", "<img", "<iframe", "@import"):
        assert tag not in text, f"the report must load nothing: found {tag}"
    assert not re.search(r"url\((?!#)", text), "only references inside the page (clip paths)"
    assert set(re.findall(r"https?://[^\s\"'<>)]+", text)) <= {"http://www.w3.org/2000/svg",
                                                               "http://www.w3.org/1999/xlink"}
    for outcome in outcomes.values():
        for sentence in outcome.sentences:
            assert html.escape(sentence) in text
    assert not list(path.parent.glob(".*.tmp")), "the report is written whole or not at all"


def test_every_figure_is_also_a_png(report):
    path, _ = report
    pngs = sorted(p.name for p in (path.parent / "figures").glob("*.png"))
    assert pngs == sorted(f"{name}.png" for name in EXPERIMENTS)
    for png in (path.parent / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_user_text_is_escaped(tmp_path, capsys):
    db_path = tmp_path / "r.db"
    with ResultsDB(db_path) as db:
        db.start_experiment("<script>alert(1)</script>", {}, "0", "default", {})
        exp = EXPERIMENTS["fork-exec"]
        params = {**exp.params(quick=True), "policies": ["<b>eager</b>"]}
        db.start_experiment("fork-exec", params, "0", "default", {"a": "missing-key"})
    assert main(["report", "--db", str(db_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "--set policies=&lt;b&gt;eager&lt;/b&gt;" in text
    assert "Incomplete: 0 of 1 runs are stored" in text


def test_report_of_an_empty_or_missing_database_is_a_user_error(tmp_path, capsys):
    ResultsDB(tmp_path / "empty.db").close()
    assert main(["report", "--db", str(tmp_path / "empty.db"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no experiment results yet" in err
    assert main(["report", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"ptshare: there is no results database at {tmp_path / 'none.db'}; 'ptshare experiment NAME' " \
                  "or 'ptshare demo' makes one\n"
    assert not (tmp_path / "out" / "report.html").exists() and not (tmp_path / "none.db").exists()


# --- in a real browser -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium(need) -> str:
    """The path of Debian's chromium (``make deps`` installs it)."""
    return need(shutil.which("chromium") or shutil.which("chromium-browser"), "chromium (a real browser)")


# Injected into a copy of the report: record every error and console message, then, once the page
# has loaded, the size and drawn paths of every figure's SVG.
PROBE_HEAD = """<script>window.__problems = [];
addEventListener('error', function (e) {
  __problems.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || 'unknown'));
}, true);
['error', 'warn', 'log'].forEach(function (k) {
  var f = console[k];
  console[k] = function () { __problems.push(k + ': ' + [].join.call(arguments, ' ')); f.apply(console, arguments); };
});</script>"""
PROBE_END = """<script>addEventListener('load', function () {
  var figures = [].map.call(document.querySelectorAll('figure'), function (f) {
    var svg = f.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {name: f.getAttribute('aria-label'), width: box.width, height: box.height,
            paths: svg ? svg.querySelectorAll('path').length : 0};
  });
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({problems: __problems, figures: figures});
  document.body.appendChild(pre);
});</script>"""


def _browse(chromium: str, page, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=10000", *extra, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def test_report_renders_every_figure_in_chromium_without_errors(report, chromium, tmp_path):
    path, _ = report
    text = path.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_END + "</body>", 1))
    done = _browse(chromium, probed, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the page did not finish loading: {done.stderr[-2000:]}"
    probe = json.loads(html.unescape(match.group(1)))
    assert probe["problems"] == []
    assert sorted(f["name"] for f in probe["figures"]) == sorted(EXPERIMENTS)
    for figure in probe["figures"]:
        assert figure["width"] > 300 and figure["height"] > 150 and figure["paths"] > 20, figure
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []

    shot = tmp_path / "report.png"
    done = _browse(chromium, path, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.exists() and shot.read_bytes()[:4] == b"\x89PNG", done.stderr[-2000:]


def test_runs_stored_by_an_older_measure_are_reported_as_stale(tmp_path):
    with ResultsDB(tmp_path / "r.db") as db:
        exp = EXPERIMENTS["fork-exec"]
        run_experiment(exp, exp.params(quick=True), db, progress=False)
        with db.conn:
            db.conn.execute("UPDATE runs SET metrics = '{}' WHERE id = 1")
        path = write_report(db, tmp_path / "out")
    text = path.read_text()
    assert "The stored runs were measured by an older version of this experiment" in text
    assert "<svg" not in text


def test_measured_times_stand_beside_the_modelled_ones_and_name_their_machines(tmp_path):
    from ptshare.cost import load_profile
    from ptshare.experiments.runner import host_unavailable
    from ptshare.machine import describe

    why = host_unavailable()
    if why is not None:
        pytest.skip(f"the host backend is unavailable: {why}")
    exp = EXPERIMENTS["fork-vs-segment"]
    with ResultsDB(tmp_path / "r.db") as db:
        outcome, _ = run_experiment(exp, exp.params({"with_host": True, "sizes_gib": [0.0, 0.0625]}, quick=True), db,
                                    progress=False)
        text = write_report(db, tmp_path / "out").read_text()
    headers = outcome.table.headers
    at = headers.index("linux (ms, modelled)")
    assert headers[at + 1:at + 3] == ["linux (ms, measured)", "measured / modelled"]
    for row in outcome.table.rows:
        assert row[at + 1] > 0 and row[at + 2] == pytest.approx(row[at + 1] / row[at])
    assert "<th>linux (ms, modelled)</th><th>linux (ms, measured)</th><th>measured / modelled</th>" in text
    profile = load_profile()
    assert html.escape(f"Modelled times: cost profile {profile.name}, measured on {profile.machine}. "
                       f"Measured times: the kernel of {describe()}.") in text
    assert "this machine" not in text.lower()
