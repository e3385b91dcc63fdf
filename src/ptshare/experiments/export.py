"""Stored runs as flat rows: for ``ptshare results``' CSV and Parquet exports.

One row per run; its parameters and metrics become columns ``param.NAME`` and ``metric.NAME``
(a list-valued metric, such as a time series, becomes a JSON text).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import UsageError

COLUMNS = ("id", "experiment", "label", "scenario", "scenario_hash", "policy", "backend", "profile", "machine",
           "version", "wall_s", "created")


def flatten(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    params = sorted({k for r in runs for k in r["params"]})
    metrics = sorted({k for r in runs for k in r["metrics"]})
    out = []
    for r in runs:
        row = {c: r[c] for c in COLUMNS}
        for k in params:
            row[f"param.{k}"] = _scalar(r["params"].get(k))
        for k in metrics:
            row[f"metric.{k}"] = _scalar(r["metrics"].get(k))
        out.append(row)
    return out


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def export(runs: list[dict[str, Any]], path: Path) -> None:
    """Write ``runs`` to ``path``: ``.csv``, or ``.parquet`` (needs pyarrow)."""
    write_rows(flatten(runs), path, list(COLUMNS))


def write_rows(rows: list[dict[str, Any]], path: Path, columns: list[str]) -> None:
    """Write flat ``rows`` to ``path``: ``.csv``, or ``.parquet`` (needs pyarrow); ``columns`` when there are none."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else columns)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError("writing Parquet needs pyarrow, which is not installed here (pip install pyarrow); "
                             "or export to a .csv file") from None
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise UsageError(f"--export {path}: the file name must end in .csv or .parquet")
