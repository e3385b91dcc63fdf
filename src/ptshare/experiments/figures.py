"""Drawing an experiment's :class:`~.base.Figure` with matplotlib, as SVG text and as a PNG file.

matplotlib is imported here only, when a figure is drawn: the simulator never loads it.  No
pyplot: each figure is its own ``matplotlib.figure.Figure``, so nothing global is left behind.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from .base import Figure, Panel, sig

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # lines that coincide stay distinguishable
DASHES = ("-", (0, (5, 2)), "-", (0, (1, 1)), "-", (0, (5, 2)), "-")


def draw(figure: Figure, png: Path | None = None) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, ready to inline); also written to ``png``."""
    import matplotlib
    from matplotlib.figure import Figure as MplFigure

    n = len(figure.panels)
    cols = 1 if n == 1 else 2
    rows = -(-n // cols)
    with matplotlib.rc_context({"svg.hashsalt": figure.name, "svg.fonttype": "path", "font.size": 9}):
        fig = MplFigure(figsize=(9.5 if cols == 1 else 11, 4.4 * rows), layout="constrained")
        for i, panel in enumerate(figure.panels):
            _panel(fig.add_subplot(rows, cols, i + 1), panel, outside=n == 1)
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
        if png is not None:
            png.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(png, format="png", dpi=110)
    svg = out.getvalue()
    svg = svg[re.search(r"<svg[\s>]", svg).start():]  # type: ignore[union-attr]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)  # RDF naming its own web sites


def _panel(ax, panel: Panel, outside: bool) -> None:
    """One panel; ``outside``: its legend to the right of the plot, where it hides no line."""
    bars = [s for s in panel.series if s.style == "bar"]
    if bars:
        _bars(ax, panel)
    for n, s in enumerate(x for x in panel.series if x.style != "bar"):
        color = COLORS[n % len(COLORS)]
        if s.style == "marker":
            ax.plot(s.x, s.y, "s", color="black", markersize=6, label=s.name)
        elif s.style == "dashed":
            ax.plot(s.x, s.y, "--", color="gray", linewidth=1.2, label=s.name)
        else:
            ax.plot(s.x, s.y, linestyle=DASHES[n % len(DASHES)], marker=MARKERS[n % len(MARKERS)], color=color,
                    linewidth=1.5, label=s.name,
                    markersize=4 if len(s.x) <= 20 else 0, markerfacecolor="none")
    for label, y in panel.hlines:
        ax.axhline(y, linestyle=":", color="black", linewidth=1, label=label)
    for label, x in panel.vlines:
        ax.axvline(x, linestyle=":", color="gray", linewidth=1, label=f"{label} ({sig(x, 2)})")
    if panel.logy:
        _log_axis(ax)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, which="major", alpha=0.3)
    where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if outside else {}
    if panel.series and (len(panel.series) > 1 or panel.hlines or panel.vlines) and not bars:
        ax.legend(fontsize=8, **where)
    elif panel.hlines:
        ax.legend(fontsize=8, loc="upper right")


def _log_axis(ax) -> None:
    """A log y axis labelled with plain numbers (0.5, 4, 200), minor ticks too when it spans under a decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: sig(v, 2))
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


def _bars(ax, panel: Panel) -> None:
    """Categories along x; one bar per series in each, its value written on it."""
    bars = [s for s in panel.series if s.style == "bar"]
    cats = bars[0].x
    width = 0.8 / len(bars)
    for n, s in enumerate(bars):
        xs = [i + (n - (len(bars) - 1) / 2) * width for i in range(len(cats))]
        drawn = ax.bar(xs, s.y, width, color=[COLORS[i % len(COLORS)] for i in range(len(cats))]
                       if len(bars) == 1 else COLORS[n], label=s.name if len(bars) > 1 else None)
        ax.bar_label(drawn, labels=[sig(v) for v in s.y], fontsize=8, padding=2)
    ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=12 if len(cats) > 3 else 0, fontsize=8)
    ax.margins(y=0.15)
