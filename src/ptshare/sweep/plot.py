"""A sweep's figure: one metric against one varied key, drawn as the experiments' figures are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..experiments.base import Figure, Panel, Series
from ..experiments.db import SweepRecord
from ..units import parse_size
from .grid import text

GiB, MiB = 1 << 30, 1 << 20


def axis(values: list[Any]) -> tuple[list[Any], str]:
    """The x values to plot and their unit: numbers as they are, sizes in GiB or MiB, anything else as text."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return values, ""
    try:
        sizes = [parse_size(v) for v in values]
    except ValueError:
        return [text(v) for v in values], ""
    unit, name = (GiB, "GiB") if max(sizes) >= GiB else (MiB, "MiB")
    return [s / unit for s in sizes], f" ({name})"


def draw_sweep(record: SweepRecord, rows: list[dict[str, Any]], x: str, y: str, out: Path) -> Path:
    """Draw ``y`` against ``x`` for ``rows`` of ``record``: ``out/sweep-ID-Y-vs-X.png`` (and ``.svg``)."""
    from ..experiments.figures import draw

    keys = [k for k, _ in record.vary]
    if x not in keys:
        raise UsageError(f"--x {x}: sweep {record.id} does not vary it; it varies: {', '.join(keys) or 'nothing'}")
    metrics = sorted({k[len("metric."):] for r in rows for k in r if k.startswith("metric.")})
    if y not in metrics:
        raise UsageError(f"--y {y}: the runs of sweep {record.id} have no such metric; they have: {', '.join(metrics)}")
    others = [k for k in keys if k != x]
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        name = ", ".join([r["policy"], *(f"{k}={text(r[k])}" for k in others)])
        lines.setdefault(name, []).append(r)
    xs, unit = axis(next(v for k, v in record.vary if k == x))
    at = dict(zip(map(text, next(v for k, v in record.vary if k == x)), xs, strict=True))
    series = [Series(name, [at[text(r[x])] for r in line], [r[f"metric.{y}"] for r in line])
              for name, line in lines.items()]
    title = f"sweep {record.id}: {record.scenario}"
    figure = Figure(f"sweep-{record.id}", [Panel(title, x + unit, y, series)],
                    f"{y} against {x}, from the runs of sweep {record.id} ({record.source}).")
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"sweep-{record.id}-{y}-vs-{x}.png"
    png.with_suffix(".svg").write_text(draw(figure, png))
    return png
