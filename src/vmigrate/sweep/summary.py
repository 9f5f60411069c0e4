"""summary.json: per cell its runs and the statistics of its headline figures; and the table
of it for the terminal."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmigrate.stats import describe
from vmigrate.sweep.database import SweepDatabase

SUMMARY_VERSION = 1

MIB = 1024 * 1024

# The figures summarised per cell (dotted paths into result.json) and what people call them.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("migration.total_time_s", "total migration time"),
    ("service.observed_downtime_ms", "downtime observed (probe)"),
    ("migration.downtime_reported_ms", "downtime reported (hypervisor)"),
    ("service.latency_ms.during.p99", "latency p99 during"),
    ("outage.blackout_ms", "vCPU blackout"),
    ("outage.service_outage_ms", "service outage (HTTP)"),
    ("resources.hosts.source.migration_cpu_seconds.extra", "migration CPU, source"),
    ("resources.hosts.destination.migration_cpu_seconds.extra", "migration CPU, destination"),
    ("resources.hosts.storage.migration_cpu_seconds.extra", "migration CPU, storage"),
    ("migration.transferred_bytes", "transferred"),
    ("migration.throughput_mbit_s", "throughput"),
)


def summarize(db: SweepDatabase) -> dict[str, Any]:
    """summary.json: per cell (in sweep order) its runs, outcomes, and the statistics of the
    headline figures over its completed runs (a timed-out run's figures describe something
    else: they are listed per run, not averaged in)."""
    facts = db.facts()
    runs = db.runs()
    by_cell: dict[str, list[sqlite3.Row]] = {}
    for row in runs:
        by_cell.setdefault(str(row["cell_id"]), []).append(row)
    cells = []
    for cell in db.cells():
        rows = by_cell.get(str(cell["cell_id"]), [])
        outcomes: dict[str, int] = {}
        for row in rows:
            outcomes[str(row["outcome"])] = outcomes.get(str(row["outcome"]), 0) + 1
        completed = [r for r in rows if r["outcome"] == "completed"]
        cells.append(
            {
                "cell_id": cell["cell_id"],
                "label": cell["label"],
                "settings": json.loads(cell["settings_json"]),
                "runs": len(rows),
                "completed": len(completed),
                "outcomes": dict(sorted(outcomes.items())),
                "figures": {
                    key: describe(_column(r, key) for r in completed).as_dict()
                    for key, _ in HEADLINE
                },
                "run_list": [_run_entry(r) for r in rows],
            }
        )
    return {
        "summary_version": SUMMARY_VERSION,
        "name": facts.get("name", ""),
        "sweep_file": facts.get("sweep_file", ""),
        "repetitions": int(facts.get("repetitions", "0") or 0),
        "axes": json.loads(facts.get("axes", "[]")),
        "headline": {key: label for key, label in HEADLINE},
        "statistics": "over the completed runs of each cell, missing figures ignored; stdev is "
        "the sample standard deviation; ci95 is the 95 % confidence interval of the mean "
        "(Student t, n - 1 degrees of freedom)",
        "cells": cells,
    }


def _column(row: sqlite3.Row, key: str) -> float | None:
    value = row[key] if key in row.keys() else None  # noqa: SIM118 (sqlite3.Row has no `in`)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _run_entry(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "repetition": row["repetition"],
        "run_dir": row["run_dir"],
        "started_at": row["started_at"],
        "duration_s": row["duration_s"],
        "outcome": row["outcome"],
        "error": row["error"],
        "has_report": row["result_json"] is not None,
        "figures": {key: _column(row, key) for key, _ in HEADLINE},
    }


def _cell_text(stats: Mapping[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    mean, half = stats.get("mean"), stats.get("ci95_half")
    if mean is None:
        return "[dim]—[/dim]"
    text = f"{mean / scale:,.{digits}f}"
    return text + (f" ± {half / scale:,.{digits}f}" if half is not None else "")


def summary_table(document: Mapping[str, Any]) -> Table:
    """Per cell: completed runs and the headline figures as mean ± 95 % CI half-width."""
    table = Table(
        title=f"sweep {document.get('name', '')}: mean ± 95 % CI over completed runs",
        caption="migration CPU: CPU-seconds of the migration's own work above the baseline "
        "(the guest's vCPUs apart), source / destination / storage",
    )

    def figure(key: str, scale: float = 1.0, digits: int = 1) -> Callable[..., str]:
        return lambda figs: _cell_text(figs.get(key, {}), scale, digits)

    def cpu(figs: Mapping[str, Any]) -> RenderableType:
        parts = [
            _cell_text(figs.get(f"resources.hosts.{h}.migration_cpu_seconds.extra", {}), 1.0, 2)
            for h in ("source", "destination", "storage")
        ]
        return Group(*(Text.from_markup(p) for p in parts))

    columns: list[tuple[str, Callable[[Mapping[str, Any]], RenderableType]]] = [
        ("total s", figure("migration.total_time_s", digits=2)),
        ("downtime ms\nobserved", figure("service.observed_downtime_ms", digits=0)),
        ("downtime ms\nreported", figure("migration.downtime_reported_ms", digits=0)),
        ("blackout\nms", figure("outage.blackout_ms", digits=0)),
        ("p99 during\nms", figure("service.latency_ms.during.p99", digits=0)),
        ("sent MiB", figure("migration.transferred_bytes", MIB, 0)),
        ("Mbit/s", figure("migration.throughput_mbit_s", digits=0)),
        ("migration CPU s", cpu),
    ]
    table.add_column("cell")
    table.add_column("completed", justify="right")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for cell in document.get("cells", []):
        runs, completed = cell.get("runs", 0), cell.get("completed", 0)
        others = ", ".join(
            f"{n} {outcome}"
            for outcome, n in cell.get("outcomes", {}).items()
            if outcome != "completed"
        )
        done = f"{completed}/{runs}" + (f"\n{others}" if others else "")
        figs = cell.get("figures", {})
        table.add_row(
            str(cell.get("label", cell.get("cell_id"))),
            Text(done, style="red" if completed < runs or not runs else ""),
            *(render(figs) for _, render in columns),
        )
    return table
