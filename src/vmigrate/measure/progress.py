"""The migration's progress polls and hypervisor events, written as the `migration` and
`events` series (see docs/series.md)."""

from __future__ import annotations

import json

from vmigrate.measure.recorder import Recorder
from vmigrate.migration.orchestrator import MigrationRecord

MIB = 1024 * 1024
MIGRATION_COLUMNS = [
    "t_ns", "status", "transferred_bytes", "remaining_bytes", "total_bytes", "zero_pages",
    "normal_pages", "normal_bytes", "precopy_bytes", "downtime_bytes", "postcopy_bytes",
    "dirty_rate_mib_s", "throughput_mbit_s", "iterations", "expected_downtime_ms",
    "cpu_throttle_pct", "attempt",
]  # fmt: skip
EVENT_COLUMNS = ["t_ns", "host", "event", "name", "detail"]


def record_migration(recorder: Recorder, record: MigrationRecord) -> None:
    """Write every progress poll and every event of a migration."""
    polls = recorder.series("migration", MIGRATION_COLUMNS)
    for sample in record.samples:
        s = sample.stats
        polls.append(
            (
                sample.t_ns,
                s.status.value,
                s.transferred_bytes,
                s.remaining_bytes,
                s.total_bytes,
                s.zero_pages,
                s.normal_pages,
                s.normal_bytes,
                "" if s.precopy_bytes is None else s.precopy_bytes,
                "" if s.downtime_bytes is None else s.downtime_bytes,
                "" if s.postcopy_bytes is None else s.postcopy_bytes,
                round(s.dirty_pages_rate * s.page_size_bytes / MIB, 3),
                s.throughput_mbit_s,
                s.iterations,
                "" if s.expected_downtime_ms is None else s.expected_downtime_ms,
                s.cpu_throttle_pct,
                sample.attempt,
            )
        )
    events = recorder.series("events", EVENT_COLUMNS)
    for event in record.events:
        events.append(
            (event.t_ns, event.host, event.kind.value, event.name, json.dumps(event.data))
        )
    recorder.flush()
