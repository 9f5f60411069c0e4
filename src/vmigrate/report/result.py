"""result.json: the run's figures, each named with its unit, plus what was verified.

The document's shape is fixed by docs/result.schema.json (SCHEMA_VERSION); bump both together.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vmigrate.config import Scenario, scenario_to_dict
from vmigrate.migration.orchestrator import MigrationRecord

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _pauses(record: MigrationRecord | None, t0_ns: int) -> list[dict[str, Any]]:
    """Each interval post-copy spent paused (a broken link): when, why, how long, how many
    reconnections it took (recovered_at_s null: it never recovered)."""
    if record is None:
        return []
    return [
        {
            "paused_at_s": _round((p.paused_ns - t0_ns) / 1e9, 6),
            "recovered_at_s": None
            if p.recovered_ns is None
            else _round((p.recovered_ns - t0_ns) / 1e9, 6),
            "paused_ms": None
            if p.recovered_ns is None
            else _round((p.recovered_ns - p.paused_ns) / 1e6),
            "cause": p.cause,
            "reconnections": p.attempts,
        }
        for p in record.postcopy_pauses
    ]


def migration_figures(
    record: MigrationRecord | None, guest_ram_bytes: int, t0_ns: int = 0, tls: bool = False
) -> dict[str, Any]:
    """The migration section: how it was done (strategy, TLS), times, downtime, bytes,
    iterations, throughput."""
    if record is None or record.final is None:
        return {
            "strategy": record.strategy if record else None,
            "tls": tls,
            "total_time_s": None,
            "setup_time_s": None,
            "downtime_reported_ms": None,
            "transferred_bytes": 0,
            "remaining_bytes": None,
            "iterations": 0,
            "throughput_mbit_s": None,
            "guest_ram_bytes": guest_ram_bytes,
            "progress_samples": 0,
            "stall_detected": False,
            "disk_copy_bytes": 0,
            "attempts": record.attempts if record else 0,
            "postcopy_pauses": _pauses(record, t0_ns),
            "hypervisor_report": {},
            "actions": [],
        }
    final = record.final
    total_s = record.total_time_s
    wire_s = final.total_time_ms / 1000 if final.total_time_ms else None
    throughput = final.transferred_bytes * 8 / wire_s / 1e6 if wire_s else None
    return {
        "strategy": record.strategy,
        "tls": tls,
        "total_time_s": _round(total_s),
        "setup_time_s": _round(final.setup_time_ms / 1000 if final.setup_time_ms else None),
        "downtime_reported_ms": _round(record.downtime_reported_ms),
        "transferred_bytes": record.transferred_bytes,
        "remaining_bytes": final.remaining_bytes,
        "iterations": final.iterations,
        "throughput_mbit_s": _round(throughput),
        "guest_ram_bytes": guest_ram_bytes,
        "progress_samples": len(record.samples),
        "stall_detected": record.stall_detected,
        "disk_copy_bytes": record.disk_copy_bytes,
        "attempts": record.attempts,
        "postcopy_pauses": _pauses(record, t0_ns),
        "hypervisor_report": dict(final.report),
        "actions": [
            {"t_s": _round((t_ns - t0_ns) / 1e9, 6), "action": action}
            for t_ns, action in record.actions
        ],
    }


def build_result(
    *,
    scenario: Scenario,
    record: MigrationRecord | None,
    started_at: str,
    t0_ns: int,
    marks_ns: dict[str, int],
    environment: dict[str, Any],
    verification: dict[str, Any],
    error: str | None,
    preflight: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the result document from what the run recorded."""
    outcome = record.outcome if record is not None else "failed"
    events = (
        [
            {
                "t_s": _round((e.t_ns - t0_ns) / 1e9, 6),
                "host": e.host,
                "event": e.kind.value,
                "name": e.name,
                "data": e.data,
            }
            for e in record.events
        ]
        if record is not None
        else []
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "started_at": started_at,
        "clock": {"t0_ns": t0_ns},
        "scenario": scenario_to_dict(scenario),
        "environment": environment,
        "outcome": outcome,
        "error": error if error else (record.error if record is not None else None),
        "preflight": preflight,
        "migration": migration_figures(
            record, scenario.vm.memory_mib * 1024 * 1024, t0_ns, tls=scenario.migration.tls
        ),
        "timeline_s": {name: _round((t - t0_ns) / 1e9, 6) for name, t in marks_ns.items()},
        "events": events,
        "verification": verification,
        "files": {
            "qemu_log_source": "qemu-source.log",
            "qemu_log_destination": "qemu-destination.log",
            "serial_source": "serial-source.log",
            "serial_destination": "serial-destination.log",
        },
    }


def write_result(out_dir: Path, result: dict[str, Any]) -> Path:
    """Write result.json (atomically) into the run directory."""
    path = out_dir / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
