"""The demo's outage, decomposed (issue 11): `examples/demo.toml` run REPETITIONS times on one
testbed; per part of the outage and per step of the switch-over, the median over the runs (and
the range), as result.json's `outage` section gives them."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.console import bench_console
from vmigrate.config import load_scenario
from vmigrate.experiment import SilentObserver, run_experiment
from vmigrate.testbed.testbed import Testbed

REPETITIONS = 5
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.toml"
PARTS = (
    ("hypervisor's downtime", "hypervisor_downtime_ms"),
    ("vCPU blackout (stop → running)", "blackout_ms"),
    ("network reconvergence (running → 1st reply)", "reconvergence_ms"),
    ("network outage (probe)", "network_outage_ms"),
    ("network outage (packet capture)", "capture.network_outage_ms"),
    ("service outage (no HTTP response)", "service_outage_ms"),
    ("brownout (over the SLA)", "brownout_ms"),
)
STEPS = (
    ("stop → the last RAM written (QEMU)", "stop", "ram_saved"),
    ("the last RAM → the device state written (QEMU)", "ram_saved", "devices_saved"),
    ("device state written → the source has sent it all", "devices_saved", "source_done"),
    ("sent → the destination has loaded it (QEMU)", "source_done", "destination_loaded"),
    ("loaded → the destination runs", "destination_loaded", "destination_running"),
    ("runs → the guest's announcement on the wire", "destination_running", "announce"),
    ("runs → first probe reply", "destination_running", "first_packet"),
    ("runs → first HTTP response", "destination_running", "first_response"),
)


def _get(outage: dict[str, Any], dotted: str) -> float | None:
    value: Any = outage
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _row(values: list[float | None]) -> tuple[str, str]:
    seen = [v for v in values if v is not None]
    if not seen:
        return "—", "—"
    return f"{statistics.median(seen):.1f}", f"{min(seen):.1f} to {max(seen):.1f}"


def outages(repetitions: int = REPETITIONS) -> list[dict[str, Any]]:
    """The `outage` sections (plus the HTTP p99 during) of `repetitions` demo runs."""
    scenario = load_scenario(DEMO, [])
    bed = Testbed("vmigb")
    bed.up(scenario.network.bandwidth_mbit)
    found = []
    try:
        for _ in range(repetitions):
            with tempfile.TemporaryDirectory(prefix="vmigrate-bench-") as tmp:
                result = run_experiment(scenario, Path(tmp), bed, SilentObserver())
            outage = result.outage.model_dump() if result.outage else {}
            during = result.service.latency_ms.get("during")
            outage["p99_during_ms"] = during.p99 if during else None
            found.append(outage)
    finally:
        bed.down()
    return found


def main() -> None:
    console = bench_console()
    runs = outages()
    table = Table(title=f"the demo's outage, decomposed: median of {len(runs)} runs (ms)")
    for column in ("part", "median ms", "range ms"):
        table.add_column(column, justify="right" if column != "part" else "left")
    for label, key in PARTS:
        table.add_row(label, *_row([_get(o, key) for o in runs]))
    table.add_row("HTTP p99 during the migration", *_row([o["p99_during_ms"] for o in runs]))
    console.print(table)
    table = Table(title="the switch-over, step by step: median of the runs (ms)")
    for column in ("step", "median ms", "range ms"):
        table.add_column(column, justify="right" if column != "step" else "left")
    for label, first, then in STEPS:
        spans = []
        for o in runs:
            a, b = _get(o, f"waterfall_s.{first}"), _get(o, f"waterfall_s.{then}")
            spans.append((b - a) * 1000 if a is not None and b is not None else None)
        table.add_row(label, *_row(spans))
    console.print(table)


if __name__ == "__main__":
    main()
