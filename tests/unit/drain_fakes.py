"""Fakes for the drain's tests: lane results as a lane writes them (no VM), a drain's host
series, and the drain file they belong to."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from test_result import ENV, VERIFIED

from vmigrate.analysis import analyze
from vmigrate.drain.account import LaneRecord
from vmigrate.drain.drain_file import Drain, validate_drain
from vmigrate.hypervisor.base import MigrationStats, MigrationStatus
from vmigrate.measure.resources import LINK_COLUMNS, PROCESS_COLUMNS
from vmigrate.migration.orchestrator import MigrationRecord, Outcome, ProgressSample
from vmigrate.report.result import build_result
from vmigrate.result import Result

S = 1_000_000_000
T0 = 5_000 * S  # the lanes' runs start here (monotonic ns)
RELEASE = T0 + 20 * S  # the drain's first release
DRAIN = {
    "name": "d",
    "testbed": {"hypervisors": 3},
    "base": {"vm": {"accel": "tcg", "memory_mib": 256}, "measure": {"resource_interval_ms": 1000}},
    "groups": [{"name": "web", "count": 2}, {"name": "mem", "vm": {"memory_mib": 384},
               "workload": {"kind": "memory", "dirty_rate_mib_s": 10}}],
    "drain": {"free_memory_mib": {"destination": 1024, "hv3": 1024}},
    "policy": {"parallel_per_host": 2},
}  # fmt: skip


def fake_drain(**changes: Any) -> Drain:
    return validate_drain({**DRAIN, **changes}, "d.toml", machine_mib=8192)


def lane_result(
    drain: Drain,
    name: str,
    destination: str,
    window_s: tuple[float, float],
    total_s: float = 2.0,
    outcome: Outcome = Outcome.COMPLETED,
    sent: int = 300_000_000,
    downtime_ms: float = 20.0,
    release_ns: int = RELEASE,
) -> Result:
    """What lane `name` writes: migrated to `destination` from window_s[0] to window_s[1]
    (seconds after the first release, at `release_ns`), the hypervisor's total time
    `total_s`."""
    guest = drain.guest(name)
    start, end = release_ns + round(window_s[0] * S), release_ns + round(window_s[1] * S)
    t0 = release_ns - 20 * S
    done = outcome == Outcome.COMPLETED
    final = MigrationStats(
        status=MigrationStatus.COMPLETED if done else MigrationStatus.FAILED,
        total_time_ms=total_s * 1000, downtime_ms=downtime_ms, transferred_bytes=sent,
        iterations=3,
    )  # fmt: skip
    record = MigrationRecord(
        strategy="precopy", outcome=outcome, started_ns=start, completed_ns=end, ended_ns=end,
        final=final, samples=[ProgressSample(start, final)],
        error=None if outcome == Outcome.COMPLETED else "it stalled",
    )  # fmt: skip
    environment = ENV.model_copy(
        update={"guest": guest.index, "source_host": "source", "destination_host": destination}
    )
    verification = VERIFIED
    if outcome != Outcome.COMPLETED:
        verification = VERIFIED.model_copy(update={"running_on": "source"})
    marks = {"boot_start": t0, "baseline_start": release_ns - 5 * S, "baseline_end": release_ns,
             "migration_start": start, "migration_end": end, "after_end": end + 3 * S}  # fmt: skip
    recorded = build_result(
        scenario=guest.scenario, record=record, started_at="x", t0_ns=t0, marks_ns=marks,
        environment=environment, verification=verification, error=record.error,
    )  # fmt: skip
    return analyze(Path("/nonexistent-run"), recorded)


def unbooted_result(drain: Drain, name: str) -> Result:
    """What a lane writes when its guest did not boot: no migration, the error."""
    recorded = build_result(
        scenario=drain.guest(name).scenario, record=None, started_at="x", t0_ns=T0,
        marks_ns={"boot_start": T0}, environment=ENV,
        verification=VERIFIED.model_copy(update={"running_on": "none"}),
        error="the guest did not boot",
    )  # fmt: skip
    return analyze(Path("/nonexistent-run"), recorded)


def lane_record(drain: Drain, name: str, destination: str, *args: Any, **kw: Any) -> LaneRecord:
    """A lane that booted, was released at its start and wrote `lane_result(...)`."""
    result = lane_result(drain, name, destination, *args, **kw)
    start = result.clock.t0_ns + round(result.timeline_s["migration_start"] * S)
    return LaneRecord(drain.guest(name), True, destination, start - S // 2, result)


def write_host_series(drain_dir: Path, seconds: int = 30) -> None:
    """A drain's series, a sample a second: the source sends 10 MB/s (20 MB/s from 4 s to 6 s
    after the first release), hv3 receives it; a QEMU on the source uses half a core."""
    series = drain_dir / "series"
    series.mkdir(parents=True, exist_ok=True)
    with open(series / "links.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LINK_COLUMNS)
        sent = 0
        for k in range(seconds + 1):
            t = RELEASE - 2 * S + k * S
            writer.writerow([t, "source", 0, sent, 0, 0])
            writer.writerow([t, "hv3", sent, 0, 0, 0])
            sent += 20_000_000 if 6 <= k < 8 else 10_000_000
    with open(series / "processes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PROCESS_COLUMNS)
        for k in range(seconds + 1):
            t = RELEASE - 2 * S + k * S
            writer.writerow([t, "source", 100, "qemu-system-x86", k * 0.5, 1 << 28, 0, 0])
            writer.writerow([t, "storage", 200, "ganesha.nfsd", k * 0.1, 1 << 24, 0, 0])
