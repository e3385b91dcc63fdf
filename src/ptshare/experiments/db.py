"""The results database: every run an experiment makes, in one SQLite file.

Where it is: ``--db PATH``; else ``$PTSHARE_DB``; else ``$XDG_DATA_HOME/ptshare/results.db``
(``~/.local/share/ptshare/results.db``), for every command: ``ptshare demo`` too, so that
``ptshare results`` and ``ptshare report`` find what it ran.

Each run is one row, written in a transaction of its own as soon as the run finishes, so an
interrupted experiment loses only the run it was in.  A run is identified by ``key``, a hash of
(experiment, scenario hash, policy, backend, parameters, ptshare version, cost profile): running
the same experiment again reuses the rows it finds instead of running them again.

``experiments`` records each invocation of an experiment: its parameters and the key of every run
it planned, and ``finished`` once all of them are stored.  The report reads the latest one of
each experiment.

``sweeps`` records each grid ``ptshare sweep`` runs: the scenario, the varied keys with their values,
the policies, and every point of the grid (its label, policy, varied values and run key).  Running
the same sweep again continues the same record, so its id stays the sweep's name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    experiment TEXT NOT NULL,
    label TEXT NOT NULL,
    scenario TEXT NOT NULL,
    scenario_hash TEXT NOT NULL,
    scenario_json TEXT NOT NULL,
    policy TEXT NOT NULL,
    backend TEXT NOT NULL,
    params TEXT NOT NULL,
    profile TEXT NOT NULL,
    machine TEXT NOT NULL,
    version TEXT NOT NULL,
    metrics TEXT NOT NULL,
    wall_s REAL NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs (experiment);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    version TEXT NOT NULL,
    profile TEXT NOT NULL,
    runs TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT
);
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY,
    scenario TEXT NOT NULL,
    source TEXT NOT NULL,
    vary TEXT NOT NULL,
    policies TEXT NOT NULL,
    points TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT
);
"""

RUN_COLUMNS = ("id", "key", "experiment", "label", "scenario", "scenario_hash", "scenario_json", "policy",
               "backend", "params", "profile", "machine", "version", "metrics", "wall_s", "created")


def default_path() -> Path:
    """``$PTSHARE_DB``, else ``$XDG_DATA_HOME/ptshare/results.db`` (``~/.local/share/...``)."""
    if os.environ.get("PTSHARE_DB"):
        return Path(os.environ["PTSHARE_DB"])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "ptshare" / "results.db"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class ExperimentRecord:
    id: int
    name: str
    params: dict[str, Any]
    version: str
    profile: str
    runs: dict[str, str]  # label -> run key
    started: str
    finished: str | None


@dataclass
class SweepRecord:
    id: int
    scenario: str
    source: str  # the scenario file
    vary: list[list[Any]]  # [[key, [values...]], ...] in the order given
    policies: list[str]
    points: list[dict[str, Any]]  # {"label", "key", "policy", "values": {key: value}}
    started: str
    finished: str | None


class ResultsDB:
    """One open results database.  Raises UsageError when ``path`` is not one."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"--db {self.path} is a directory; give the path of a database file")
        if not create and not self.path.exists():
            raise UsageError(f"there is no results database at {self.path}; 'ptshare experiment NAME' or "
                             "'ptshare demo' makes one")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30)
            # Write-ahead logging: a run's commit costs ~0.1 ms instead of an fsync (~20 ms here), so one
            # process can store the runs of many workers; a killed process still loses no committed run.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            with self.conn:
                self.conn.executescript(_SCHEMA)
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise UsageError(f"{self.path} cannot be used as a ptshare results database: {exc}") from None
        if row[0] != SCHEMA_VERSION:
            raise UsageError(f"{self.path} is a results database of schema {row[0]}; this ptshare reads schema "
                             f"{SCHEMA_VERSION}: give another --db")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs ----------------------------------------------------------------------------------------

    def metrics(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT metrics FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_run(self, row: dict[str, Any]) -> None:
        """Store one finished run, in a transaction of its own."""
        values = {**row, "params": json.dumps(row["params"], sort_keys=True),
                  "scenario_json": json.dumps(row["scenario_json"], sort_keys=True),
                  "metrics": json.dumps(row["metrics"]), "created": now()}
        names = [c for c in RUN_COLUMNS if c != "id"]
        with self.conn:
            self.conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(names)}) VALUES "
                              f"({', '.join('?' * len(names))})", [values[n] for n in names])

    def runs(self, experiment: str | None = None, policy: str | None = None,
             scenario: str | None = None) -> list[dict[str, Any]]:
        """Stored runs, oldest first; ``scenario`` may be a glob (``fork-vs-segment-*``)."""
        where, args = [], []
        for column, value, op in (("experiment", experiment, "="), ("policy", policy, "="),
                                  ("scenario", scenario, "GLOB")):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = []
        for values in self.conn.execute(sql + " ORDER BY id", args):
            row = dict(zip(RUN_COLUMNS, values, strict=True))
            for column in ("params", "scenario_json", "metrics"):
                row[column] = json.loads(row[column])
            out.append(row)
        return out

    # --- experiments ---------------------------------------------------------------------------------

    def start_experiment(self, name: str, params: dict[str, Any], version: str, profile: str,
                         runs: dict[str, str]) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO experiments (name, params, version, profile, runs, started) VALUES (?, ?, ?, ?, ?, ?)",
                (name, json.dumps(params, sort_keys=True), version, profile, json.dumps(runs), now()))
        return int(cur.lastrowid or 0)

    def finish_experiment(self, record_id: int) -> None:
        with self.conn:
            self.conn.execute("UPDATE experiments SET finished = ? WHERE id = ?", (now(), record_id))

    def latest_experiments(self) -> list[ExperimentRecord]:
        """The latest invocation of each experiment, by name."""
        rows = self.conn.execute(
            "SELECT id, name, params, version, profile, runs, started, finished FROM experiments "
            "WHERE id IN (SELECT MAX(id) FROM experiments GROUP BY name) ORDER BY id").fetchall()
        return [ExperimentRecord(r[0], r[1], json.loads(r[2]), r[3], r[4], json.loads(r[5]), r[6], r[7])
                for r in rows]

    def provenance(self, keys: list[str]) -> list[tuple[str, str, str]]:
        """(backend, cost profile, machine) of the stored runs among ``keys``, each once, sorted: the
        machine is the profile's for a simulated run, and the one measured for a host run."""
        found: set[tuple[str, str, str]] = set()
        for key in keys:
            row = self.conn.execute("SELECT backend, profile, machine FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None:
                found.add(tuple(row))
        return sorted(found)

    def stored(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """``{key: metrics}`` of those of ``keys`` that are stored."""
        out: dict[str, dict[str, Any]] = {}
        for key in keys:
            metrics = self.metrics(key)
            if metrics is not None:
                out[key] = metrics
        return out

    # --- sweeps --------------------------------------------------------------------------------------

    def start_sweep(self, scenario: str, source: str, vary: list[list[Any]], policies: list[str],
                    points: list[dict[str, Any]]) -> int:
        """The id of this sweep: that of the same grid stored before (same points, same run keys), else a new one."""
        text = json.dumps(points, sort_keys=True)
        with self.conn:
            row = self.conn.execute("SELECT id FROM sweeps WHERE points = ? ORDER BY id DESC LIMIT 1",
                                    (text,)).fetchone()
            if row is not None:
                return int(row[0])
            cur = self.conn.execute(
                "INSERT INTO sweeps (scenario, source, vary, policies, points, started) VALUES (?, ?, ?, ?, ?, ?)",
                (scenario, source, json.dumps(vary), json.dumps(policies), text, now()))
        return int(cur.lastrowid or 0)

    def finish_sweep(self, sweep_id: int) -> None:
        with self.conn:
            self.conn.execute("UPDATE sweeps SET finished = ? WHERE id = ?", (now(), sweep_id))

    def sweeps(self) -> list[SweepRecord]:
        """Every sweep stored, oldest first."""
        rows = self.conn.execute("SELECT id, scenario, source, vary, policies, points, started, finished "
                                 "FROM sweeps ORDER BY id").fetchall()
        return [SweepRecord(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), json.loads(r[5]), r[6], r[7])
                for r in rows]
