"""SWEEP_DIR/sweep.db: one row per run, every scenario key and numeric figure a column."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vmigrate.config import Scenario, scenario_to_dict
from vmigrate.result import Result
from vmigrate.sweep.plan import PlannedRun, Sweep

# result.json parts that are not figures of the run (the scenario gets its own columns)
_NOT_FIGURES = {"schema_version", "started_at", "scenario", "environment", "files", "clock"}


def is_number(value: Any) -> bool:
    """An int or float, not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}; lists are left out (they are not single figures)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    elif not isinstance(value, list):
        out[prefix] = value
    return out


def result_figures(result: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric figure of a result document (as JSON: the columns follow its keys) under
    its dotted name; booleans (verification) as 0/1, and each consistency check as
    `checks.NAME.ok`."""
    figures: dict[str, float] = {}
    for key, value in result.items():
        if key in _NOT_FIGURES:
            continue
        for dotted, leaf in flatten(value, key).items():
            if isinstance(leaf, bool):
                figures[dotted] = int(leaf)
            elif is_number(leaf) and math.isfinite(leaf):
                figures[dotted] = leaf
    for check in result.get("checks", []) or []:
        if isinstance(check, dict) and isinstance(check.get("ok"), bool) and check.get("name"):
            figures[f"checks.{check['name']}.ok"] = int(check["ok"])
    return figures


def scenario_columns(scenario: Scenario) -> dict[str, Any]:
    """The effective scenario as `scenario.section.key` columns."""
    return flatten(scenario_to_dict(scenario), "scenario")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_FIXED_COLUMNS = (
    "run_id TEXT PRIMARY KEY",
    "cell_id TEXT NOT NULL",
    "repetition INTEGER NOT NULL",
    "run_dir TEXT NOT NULL",
    "started_at TEXT",
    "duration_s REAL",
    "outcome TEXT NOT NULL",
    "error TEXT",
    "scenario_json TEXT NOT NULL",
    "result_json TEXT",
)


@dataclass
class RunRecord:
    """What the database keeps of one run."""

    run: PlannedRun
    started_at: str
    duration_s: float
    outcome: str
    error: str | None
    result: Result | None


def scenario_json(scenario: Scenario) -> str:
    return json.dumps(scenario_to_dict(scenario), sort_keys=True)


class SweepDatabase:
    """SWEEP_DIR/sweep.db: table `runs` (one row per run: ids, outcome, every scenario key as a
    `scenario.section.key` column, every numeric figure as a dotted column, the whole
    result.json) and table `cells` (the sweep's cells in order, their labels and settings)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path)
        self.conn.row_factory = sqlite3.Row
        with self.conn:
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(_FIXED_COLUMNS)})")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS cells (cell_id TEXT PRIMARY KEY, position INTEGER "
                "NOT NULL, label TEXT NOT NULL, settings_json TEXT NOT NULL)"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS sweep (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
        self._columns = self._existing_columns()

    def __enter__(self) -> SweepDatabase:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def _existing_columns(self) -> set[str]:
        return {str(row["name"]) for row in self.conn.execute("PRAGMA table_info(runs)")}

    def _ensure_columns(self, values: Mapping[str, Any], kind: str) -> None:
        for name in values:
            if name not in self._columns:
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {_quote(name)} {kind}".rstrip())
                self._columns.add(name)

    def finished(self) -> dict[str, str]:
        """run_id -> scenario_json of every run that has a result (skipped when resuming)."""
        rows = self.conn.execute(
            "SELECT run_id, scenario_json FROM runs WHERE result_json IS NOT NULL"
        )
        return {str(r["run_id"]): str(r["scenario_json"]) for r in rows}

    def save_sweep(self, sweep: Sweep) -> None:
        """The sweep's cells (their order and labels) and facts, for the summary."""
        with self.conn:
            self.conn.execute("DELETE FROM cells")
            self.conn.executemany(
                "INSERT INTO cells (cell_id, position, label, settings_json) VALUES (?, ?, ?, ?)",
                [
                    (c.cell_id, c.position, c.label, json.dumps(c.settings, sort_keys=True))
                    for c in sweep.cells
                ],
            )
            facts = {
                "name": sweep.name,
                "sweep_file": str(sweep.path),
                "repetitions": str(sweep.repetitions),
                "axes": json.dumps([a.key for a in sweep.axes]),
            }
            self.conn.executemany(
                "INSERT OR REPLACE INTO sweep (key, value) VALUES (?, ?)", facts.items()
            )

    def record(self, rec: RunRecord, run_dir: str) -> None:
        """Insert (or replace an earlier failed attempt of) one run."""
        scenario = scenario_columns(rec.run.cell.scenario)
        document = rec.result.model_dump(mode="json") if rec.result is not None else None
        figures = result_figures(document) if document is not None else {}
        row: dict[str, Any] = {
            "run_id": rec.run.run_id,
            "cell_id": rec.run.cell.cell_id,
            "repetition": rec.run.repetition,
            "run_dir": run_dir,
            "started_at": rec.started_at,
            "duration_s": round(rec.duration_s, 3),
            "outcome": rec.outcome,
            "error": rec.error,
            "scenario_json": scenario_json(rec.run.cell.scenario),
            "result_json": json.dumps(document) if document is not None else None,
        }
        with self.conn:
            self._ensure_columns(scenario, "")
            self._ensure_columns(figures, "REAL")
            row.update(scenario)
            row.update(figures)
            names = ", ".join(_quote(k) for k in row)
            marks = ", ".join("?" for _ in row)
            self.conn.execute(
                f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})", list(row.values())
            )

    def facts(self) -> dict[str, str]:
        return {str(r["key"]): str(r["value"]) for r in self.conn.execute("SELECT * FROM sweep")}

    def cells(self) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM cells ORDER BY position"))

    def runs(self) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM runs ORDER BY repetition, run_id"))
