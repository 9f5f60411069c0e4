"""result.json: built from a recorded migration, valid against docs/result.schema.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from rich.console import Console

from vmigrate.analysis import analyze
from vmigrate.config import Scenario
from vmigrate.hypervisor.base import EventKind, HypervisorEvent, MigrationStats, MigrationStatus
from vmigrate.migration.orchestrator import MigrationRecord, ProgressSample
from vmigrate.report.result import build_result
from vmigrate.report.terminal import summary_table
from vmigrate.result import Recorded, load_result, write_result
from vmigrate.result.document import Environment, Verification

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs/result.schema.json").read_text())
ENV = Environment.model_validate(
    {
        "tool_version": "0",
        "testbed": "t",
        "accel": "tcg",
        "accel_reason": "requested",
        "backend": "qemu",
        "qemu_version": "7.2.0",
        "guest_kernel": "6.1",
        "guest_image_digest": "abc",
    }
)
VERIFIED = Verification.model_validate(
    {
        "running_on": "destination",
        "source_state_after": "postmigrate",
        "service_ok_after": True,
        "memory_checksum_ok": True,
        "memory_writes_intact": True,
        "working_set_pages_checked": 0,
        "working_set_pages_mismatched": 0,
        "disk_checksum_ok": True,
        "disk_blocks_checked": 1024,
        "disk_blocks_mismatched": 0,
    }
)


def completed_record(t0: int) -> MigrationRecord:
    final = MigrationStats(
        status=MigrationStatus.COMPLETED,
        total_time_ms=2000.0,
        setup_time_ms=5.0,
        downtime_ms=12.0,
        transferred_bytes=250_000_000,
        iterations=4,
    )
    return MigrationRecord(
        strategy="precopy",
        outcome="completed",
        started_ns=t0,
        completed_ns=t0 + 2_000_000_000,
        ended_ns=t0 + 2_100_000_000,
        final=final,
        samples=[ProgressSample(t0, final)],
        events=[
            HypervisorEvent(
                t0 + 1000, "source", EventKind.MIGRATION_STATUS, "MIGRATION", {"status": "setup"}
            )
        ],
    )


def result_of(record: MigrationRecord | None, t0: int) -> Recorded:
    """The recorded part of `record`'s result, with fixed environment and verification."""
    return build_result(
        scenario=Scenario(),
        record=record,
        started_at="x",
        t0_ns=t0,
        marks_ns={},
        environment=ENV,
        verification=VERIFIED,
        error=None,
    )


def completed_document() -> dict[str, Any]:
    """A whole result.json (as vmigrate writes it) of a completed run that recorded no series,
    for tests to edit."""
    t0 = 1_000_000_000_000
    result = analyze(Path("/nonexistent-run"), result_of(completed_record(t0), t0))
    return result.model_dump(mode="json")


def preflight_with(**figures: dict[str, Any]) -> dict[str, Any]:
    """A `preflight` section whose checks (by name) passed with these figures."""
    return {
        "skipped": False, "unsafe_allowed": False, "cpu_model_requested": "qemu64",
        "cpu_model": "qemu64", "machine": "pc-q35-10.0", "passed": True,
        "checks": [
            {"name": name, "status": "pass", "message": "", "fix": "", "figures": values}
            for name, values in figures.items()
        ],
    }  # fmt: skip


def test_a_completed_run_has_consistent_figures_and_validates(tmp_path: Path) -> None:
    t0 = time.monotonic_ns()
    result = build_result(
        scenario=Scenario(),
        record=completed_record(t0),
        started_at="2026-01-01T00:00:00+00:00",
        t0_ns=t0,
        marks_ns={"migration_start": t0 + 500_000_000},
        environment=ENV,
        verification=VERIFIED,
        error=None,
    )
    result = analyze(tmp_path, result)  # no series recorded: every section still present
    document = result.model_dump(mode="json")
    jsonschema.validate(document, SCHEMA)
    assert result.service.observed_downtime_ms is None
    assert [c.ok for c in result.checks] == [None, None, True, None, None]
    mig = result.migration
    assert mig.total_time_s == 2.0
    assert mig.setup_time_s == 0.005
    assert mig.downtime_reported_ms == 12.0
    # 250 MB in 2 s = 1000 Mbit/s.
    assert mig.throughput_mbit_s == pytest.approx(1000.0)
    assert result.timeline_s == {"migration_start": 0.5}
    assert result.events[0].t_s == pytest.approx(1e-6)
    path = write_result(tmp_path, result)
    assert json.loads(path.read_text()) == document
    assert list(document) == [
        "schema_version", "started_at", "clock", "scenario", "environment", "outcome", "error",
        "preflight", "migration", "timeline_s", "events", "verification", "files", "phases",
        "service", "outage", "resources", "data", "prediction", "checks",
    ]  # fmt: skip
    assert load_result(tmp_path) == result


def test_a_run_that_never_migrated_still_validates(tmp_path: Path) -> None:
    result = build_result(
        scenario=Scenario(),
        record=None,
        started_at="x",
        t0_ns=0,
        marks_ns={},
        environment=ENV,
        verification=VERIFIED.model_copy(update={"running_on": "none", "service_ok_after": False}),
        error="the guest did not report ready",
    )
    result = analyze(tmp_path, result)
    jsonschema.validate(result.model_dump(mode="json"), SCHEMA)
    assert result.outcome == "failed"
    assert result.migration.total_time_s is None


def test_the_schema_rejects_a_figure_without_its_unit(tmp_path: Path) -> None:
    t0 = time.monotonic_ns()
    result = analyze(tmp_path, result_of(completed_record(t0), t0)).model_dump(mode="json")
    jsonschema.validate(result, SCHEMA)
    result["migration"]["downtime"] = 12
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(result, SCHEMA)


def test_a_restarted_migration_bills_both_attempts_and_says_so(tmp_path: Path) -> None:
    t0 = time.monotonic_ns()
    record = completed_record(t0)
    record.attempts = 2
    record.earlier_attempts_bytes = 700_000_000
    record.completed_ns = t0 + 9_000_000_000  # the second attempt ended 9 s after the first began
    record.actions = [(t0 + 5_000_000_000, "restart with auto-converge")]
    result = analyze(tmp_path, result_of(record, t0))
    jsonschema.validate(result.model_dump(mode="json"), SCHEMA)
    mig = result.migration
    assert mig.attempts == 2
    assert mig.transferred_bytes == 950_000_000
    assert mig.total_time_s == 9.0  # not the 2 s QEMU counted for the last attempt alone
    console = Console(record=True, width=120)
    console.print(summary_table(result))
    text = console.export_text()
    assert "attempts (restarted after a stall)" in text
    assert "at 5.0 s" in text and "restart with auto-converge" in text
