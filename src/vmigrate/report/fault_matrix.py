"""A sweep of faults as one comparison table: per cell, how the runs ended, where the VM ended,
whether it came through intact, the service outage and the recovery time — over every run, not
only the completed ones (a fault's point is what happens when a migration does not complete).

Read from the sweep directory (summary.json and each run's result.json), so it can be rebuilt
at any time; written as DIR/faults.md and shown after `vmigrate sweep`.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

FAULTS_FILE = "faults.md"


@dataclass
class FaultCell:
    """One cell of a fault sweep, over its runs."""

    label: str
    runs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    ends_on: Counter[str] = field(default_factory=Counter)
    intact: int = 0
    outage_ms: list[float] = field(default_factory=list)
    recovery_ms: list[float] = field(default_factory=list)

    def add(self, result: dict[str, Any]) -> None:
        self.runs += 1
        self.outcomes[str(result.get("outcome"))] += 1
        fault = result.get("fault") or {}
        verification = result.get("verification") or {}
        self.ends_on[str(fault.get("vm_ends_on", verification.get("running_on")))] += 1
        if fault:
            self.intact += bool(fault.get("intact"))
            for values, key in (
                (self.outage_ms, "service_outage_ms"),
                (self.recovery_ms, "recovery_ms"),
            ):
                if isinstance(fault.get(key), int | float):
                    values.append(float(fault[key]))
            return
        # The no-fault baseline: intact by the same checks; its outage is the migration's own.
        self.intact += all(
            verification.get(key) is True
            for key in ("memory_checksum_ok", "memory_writes_intact", "disk_checksum_ok")
        )
        observed = (result.get("service") or {}).get("observed_downtime_ms")
        if isinstance(observed, int | float):
            self.outage_ms.append(float(observed))

    def row(self) -> list[str]:
        def counts(counter: Counter[str]) -> str:
            return ", ".join(f"{n} {what}" for what, n in counter.most_common())

        def median(values: list[float]) -> str:
            return f"{statistics.median(values):,.0f}" if values else "—"

        return [
            self.label,
            counts(self.outcomes),
            counts(self.ends_on),
            f"{self.intact}/{self.runs}",
            median(self.outage_ms),
            median(self.recovery_ms),
        ]


HEADERS = ["cell", "outcome", "VM ends on", "intact", "outage ms (median)", "recovery ms (median)"]


def fault_cells(sweep_dir: Path) -> list[FaultCell]:
    """The cells of the sweep in `sweep_dir`, each over its runs that left a result.json."""
    summary = json.loads((sweep_dir / "summary.json").read_text())
    cells = []
    for cell in summary.get("cells", []):
        out = FaultCell(str(cell.get("label", cell.get("cell_id"))))
        for run in cell.get("run_list", []):
            path = sweep_dir / str(run.get("run_dir", "")) / "result.json"
            if path.is_file():
                out.add(json.loads(path.read_text()))
        cells.append(out)
    return cells


def is_fault_sweep(sweep_dir: Path) -> bool:
    """True when some cell of the sweep injects a fault."""
    summary = json.loads((sweep_dir / "summary.json").read_text())
    return any(str(axis).startswith("fault") for axis in summary.get("axes", []))


def fault_table(cells: list[FaultCell]) -> Table:
    table = Table(title="faults: how each cell's runs ended (all runs, not only completed)")
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("cell", "outcome") else "right")
    for cell in cells:
        table.add_row(*cell.row())
    return table


def fault_markdown(cells: list[FaultCell]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell.row()) + " |" for cell in cells]
    return "\n".join(lines) + "\n"


def write_fault_matrix(sweep_dir: Path) -> tuple[list[FaultCell], Path]:
    """Build the table from the sweep directory and write DIR/faults.md."""
    cells = fault_cells(sweep_dir)
    path = sweep_dir / FAULTS_FILE
    path.write_text(fault_markdown(cells))
    return cells, path
