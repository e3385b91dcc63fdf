"""The report: one self-contained HTML file (figures inline as SVG, no script, nothing fetched),
and every figure again as a PNG in ``figures/``.

It is made from the results database alone: for each experiment, the latest invocation stored,
analysed again from its runs.  An experiment whose runs are not all stored (an interrupted run)
gets a section saying how many are, and the command that finishes it.  Every text that comes from
the database or from the user is escaped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UsageError
from .base import Figure, Outcome, Table, coincidence_note, sig
from .db import ExperimentRecord, ResultsDB
from .params import as_options
from .progress import RunsBar
from .registry import EXPERIMENTS
from .runner import analyse_stored

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; }
.question { font-style: italic; color: #444; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; } td.n { text-align: right; } th { background: #f4f4f4; }
.meta, .notes { color: #555; font-size: 0.9em; } .incomplete { background: #fff4e0; padding: 0.8em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


@dataclass
class Section:
    name: str
    record: ExperimentRecord
    outcome: Outcome | None
    stored: int
    stale: bool = False  # its runs were stored by an older version of the experiment
    svg: str = ""


def write_report(db: ResultsDB, out: Path) -> Path:
    """Write ``out/report.html`` and ``out/figures/*.png`` from ``db``; return the report's path."""
    records = db.latest_experiments()
    if not records:
        raise UsageError(f"{db.path} holds no experiment results yet; run 'ptshare experiment NAME --db {db.path}' "
                         "or 'ptshare demo'")
    order = list(EXPERIMENTS)
    records.sort(key=lambda r: (order.index(r.name) if r.name in order else len(order), r.id))
    sections, unknown = [], []
    bar = RunsBar("report", len(records))
    try:
        for n, record in enumerate(records):
            bar.run(n, record.name)
            if record.name in EXPERIMENTS:
                sections.append(_analyse(record, db, out))
            else:
                unknown.append(record.name)
    finally:
        bar.close()
    path = out / "report.html"
    text = _page(db, sections, unknown)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report
    return path


def _analyse(record: ExperimentRecord, db: ResultsDB, out: Path) -> Section:
    """The section of one experiment; its figure drawn (and written as PNG) when its runs are all stored."""
    exp = EXPERIMENTS[record.name]
    try:
        outcome, stored = analyse_stored(exp, record.params, record.runs, db)
    except (KeyError, IndexError, TypeError):  # runs stored by an older measure() lack a metric
        return Section(record.name, record, None, 0, stale=True)
    section = Section(record.name, record, outcome, stored)
    if outcome is not None:
        from .figures import draw

        section.svg = draw(outcome.figure, out / "figures" / f"{record.name}.png")
    return section


def _page(db: ResultsDB, sections: list[Section], unknown: list[str]) -> str:
    machines = db.conn.execute("SELECT DISTINCT profile, machine FROM runs").fetchall()
    profile = "; ".join(f"{p} ({m})" for p, m in machines) or "none"
    toc = "".join(f'<li><a href="#{escape(s.name)}">{escape(EXPERIMENTS[s.name].title)}</a></li>' for s in sections)
    body = [
        "<h1>ptshare: what page tables cost, and what sharing them saves</h1>",
        f'<p class="meta">ptshare {escape(__version__)}, {escape(time.strftime("%Y-%m-%d %H:%M"))}; results from '
        f"<code>{escape(str(db.path))}</code>; estimated times from the cost model {escape(profile)}.</p>",
        "<p>Each experiment below is a set of simulator runs; its figure, table and sentences are computed from "
        "the stored runs. Estimated times are the modelled kernel's, from a cost model of nanoseconds per event "
        "measured on the machine named above; where the real kernel was measured too (the host backend), its "
        "time is shown beside the modelled one. Page-table memory is counted as Linux counts PageTables.</p>",
        f"<ol>{toc}</ol>",
        *(_section(s, db) for s in sections),
    ]
    if unknown:
        body.append(f'<p class="notes">Not shown, unknown to this ptshare: {escape(", ".join(unknown))}.</p>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ptshare report</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _section(s: Section, db: ResultsDB) -> str:
    exp = EXPERIMENTS[s.name]
    head = f'<section id="{escape(s.name)}"><h2>{escape(exp.title)}</h2><p class="question">{escape(exp.question)}</p>'
    total = len(s.record.runs)
    if s.outcome is None:
        command = escape(" ".join(["ptshare experiment", s.name, "--db", str(db.path),
                                   *as_options(exp, s.record.params)]))
        if s.stale:
            return (head + '<p class="incomplete">The stored runs were measured by an older version of this '
                    f"experiment. <code>{command}</code> makes them again.</p></section>")
        return (head + f'<p class="incomplete">Incomplete: {s.stored} of {total} runs are stored (the run was '
                f"interrupted). <code>{command}</code> finishes it, reusing the stored runs.</p></section>")
    o = s.outcome
    notes = "".join(f"<li>{escape(n)}</li>" for n in o.notes)
    params = ", ".join(f"{k} = {_value(v)}" for k, v in o.params.items())
    return "\n".join([
        head,
        "<ul>" + "".join(f"<li>{escape(t)}</li>" for t in o.sentences) + "</ul>",
        f'<figure aria-label="{escape(o.figure.name)}">{s.svg}<figcaption>{escape(caption(o.figure))}</figcaption>'
        "</figure>",
        _table(o.table),
        f'<p class="meta">{total} runs, started {escape(s.record.started)}; parameters: {escape(params)}. '
        f"{escape(provenance(db.provenance(list(s.record.runs.values()))))}</p>",
        f'<ul class="notes">{notes}</ul>' if notes else "",
        "</section>",
    ])


def provenance(rows: list[tuple[str, str, str]]) -> str:
    """Where the section's times come from: "Modelled times: cost profile P, measured on M.  Measured
    times: the kernel of M'." (per backend, from the runs' rows)."""
    modelled = sorted({f"cost profile {p}, measured on {m}" for b, p, m in rows if b == "sim"})
    measured = sorted({m for b, _, m in rows if b == "host"})
    out = [f"Modelled times: {'; '.join(modelled)}."] if modelled else []
    if measured:
        out.append(f"Measured times: the kernel of {'; '.join(measured)}.")
    return " ".join(out)


def caption(figure: Figure) -> str:
    """The figure's caption, and which of its lines are drawn apart because they coincide."""
    return " ".join(filter(None, [figure.caption, coincidence_note(figure)]))


def _value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(_value(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return f"<td>{escape(str(v or ''))}</td>"
    if isinstance(v, int):
        return f'<td class="n">{v:,}</td>'
    if isinstance(v, float):
        return f'<td class="n">{escape(sig(v))}</td>'
    return f"<td>{escape(str(v))}</td>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in t.headers)
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
