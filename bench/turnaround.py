"""Turnaround: how long one experiment takes end to end, and where the time goes.

Runs the demo scenario (shortened phases) a few times on one shared testbed and prints, per
run, the wall time of each stage and the migration's own figures.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from rich.table import Table

from bench.console import bench_console
from vmigrate.config import validate_scenario
from vmigrate.experiment import SilentObserver, run_experiment
from vmigrate.testbed.testbed import Testbed

REPETITIONS = 3


def main() -> None:
    console = bench_console()
    bed = Testbed("vmigb")
    started = time.monotonic()
    bed.up(1000)
    up_s = time.monotonic() - started
    scenario = validate_scenario(
        {"name": "bench", "phases": {"warmup_s": 1, "baseline_s": 1, "after_s": 1}}
    )
    table = Table(
        title=f"turnaround: 512 MiB web guest, precopy, 1 Gbit/s (testbed up {up_s:.2f} s)"
    )
    for column in ("run", "wall s", "boot→ready s", "migration s", "downtime ms", "MiB sent"):
        table.add_column(column, justify="right")
    walls = []
    try:
        for index in range(REPETITIONS):
            with tempfile.TemporaryDirectory(prefix="vmigrate-bench-") as tmp:
                t = time.monotonic()
                result = run_experiment(scenario, Path(tmp), bed, SilentObserver())
                wall = time.monotonic() - t
            walls.append(wall)
            marks = result.timeline_s
            mig = result.migration
            table.add_row(
                str(index + 1),
                f"{wall:.2f}",
                f"{marks['guest_ready'] - marks['boot_start']:.2f}",
                f"{mig.total_time_s:.3f}" if mig.total_time_s is not None else result.outcome,
                f"{mig.downtime_reported_ms:.1f}" if mig.downtime_reported_ms is not None else "—",
                f"{mig.transferred_bytes / 2**20:.1f}",
            )
    finally:
        bed.down()
    console.print(table)
    console.print(f"median wall time per run: {statistics.median(walls):.2f} s")
