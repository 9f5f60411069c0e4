"""A sweep of faults as one comparison table: per cell, how the runs ended, where the VM ended,
whether it came through intact, the service outage and the recovery time — over every run, not
only the completed ones (a fault's point is what happens when a migration does not complete).

Read from the sweep directory (summary.json and each run's result.json), so it can be rebuilt
at any time; written as DIR/faults.md and shown after `vmigrate sweep`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from vmigrate.errors import UsageError
from vmigrate.result import RESULT_FILE, Result, load_result
from vmigrate.stats import median_or_none

log = logging.getLogger(__name__)
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

    def add(self, result: Result) -> None:
        self.runs += 1
        self.outcomes[result.outcome.value] += 1
        fault, verification = result.fault, result.verification
        if fault is not None:
            self.ends_on[str(fault.vm_ends_on)] += 1
            self.intact += fault.intact
            for values, figure in (
                (self.outage_ms, fault.service_outage_ms),
                (self.recovery_ms, fault.recovery_ms),
            ):
                if figure is not None:
                    values.append(figure)
            return
        # The no-fault baseline: intact by the same checks; its outage is the migration's own.
        self.ends_on[verification.running_on] += 1
        self.intact += all(
            ok is True
            for ok in (
                verification.memory_checksum_ok,
                verification.memory_writes_intact,
                verification.disk_checksum_ok,
            )
        )
        if result.service.observed_downtime_ms is not None:
            self.outage_ms.append(result.service.observed_downtime_ms)

    def row(self) -> list[str]:
        def counts(counter: Counter[str]) -> str:
            return ", ".join(f"{n} {what}" for what, n in counter.most_common())

        def median(values: list[float]) -> str:
            middle = median_or_none(values)
            return f"{middle:,.0f}" if middle is not None else "—"

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
            path = sweep_dir / str(run.get("run_dir", "")) / RESULT_FILE
            if not path.is_file():
                continue  # the run crashed before it wrote one
            try:
                out.add(load_result(path))
            except UsageError as exc:
                log.warning("%s", exc)
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
