"""Drawing an experiment's :class:`~.base.Figure` with matplotlib, as SVG text and as a PNG file.

matplotlib is imported here only, when a figure is drawn: the simulator never loads it.  No
pyplot: each figure is its own ``matplotlib.figure.Figure``, so nothing global is left behind.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from .base import Figure, Panel, coincident, policy_of, sig

# Lines that are not one policy's (the aslr variants): colours and markers no policy uses.
OTHER_COLORS = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#000000", "#aec7e8", "#98df8a")
OTHER_MARKERS = ("<", ">", "*", "h", "x", "d", "p")
APART_POINTS = 4.0  # how far apart coinciding lines are drawn: this far right, half as far up (a flat line
# needs the rise to be seen; keeping it small keeps the value read off the axis close)


def style_of(name: str, n: int) -> tuple[str, str]:
    """(colour, marker) of a series or bar called ``name``: its policy's own when it is named after one
    (the same in every figure), else the ``n``-th of the others."""
    from ..policies import POLICIES

    policy = policy_of(name)
    if policy is not None:
        return POLICIES[policy].color, POLICIES[policy].marker
    return OTHER_COLORS[n % len(OTHER_COLORS)], OTHER_MARKERS[n % len(OTHER_MARKERS)]


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
    """One panel; ``outside``: its legend to the right of the plot, where it hides no line.  Lines
    that would hide each other (:func:`~.base.coincident`) are shifted a few points apart."""
    from matplotlib.transforms import ScaledTranslation

    bars = [s for s in panel.series if s.style == "bar"]
    if bars:
        _bars(ax, panel)
    shift = {name: k for names, _ in coincident(panel) for k, name in enumerate(names)}
    others = 0
    for s in (x for x in panel.series if x.style != "bar"):
        if s.style == "marker":
            ax.plot(s.x, s.y, "s", color="black", markersize=6, label=s.name)
            continue
        if s.style == "dashed":
            ax.plot(s.x, s.y, "--", color="gray", linewidth=1.2, label=s.name)
            continue
        color, marker = style_of(s.name, others)
        others += policy_of(s.name) is None
        drawn = ax.plot(s.x, s.y, marker=marker, color=color, linewidth=1.5, label=s.name,
                        markersize=5 if len(s.x) <= 20 else 0, markerfacecolor="none", markeredgewidth=1.2)
        if s.low is not None and s.high is not None:
            drawn.append(ax.fill_between(s.x, s.low, s.high, color=color, alpha=0.18, linewidth=0))
        if shift.get(s.name):  # moved once drawn, so that the axes' limits stay those of the data
            apart = shift[s.name] * APART_POINTS / 72
            for artist in drawn:
                artist.set_transform(ax.transData + ScaledTranslation(apart, apart / 2, ax.figure.dpi_scale_trans))
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
        colors = [style_of(str(c), i)[0] for i, c in enumerate(cats)] if len(bars) == 1 else style_of(s.name, n)[0]
        drawn = ax.bar(xs, s.y, width, color=colors, label=s.name if len(bars) > 1 else None)
        ax.bar_label(drawn, labels=[sig(v) for v in s.y], fontsize=8, padding=2)
    ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=12 if len(cats) > 3 else 0, fontsize=8)
    ax.margins(y=0.15)
