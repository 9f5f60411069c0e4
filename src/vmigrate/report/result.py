"""The recorded part of result.json, from what the run recorded: the migration's figures (each
named with its unit), its actions, pauses and events, and what was verified. The analysis
(vmigrate.analysis.analyze) completes it into the whole `Result`."""

from __future__ import annotations

import math

from vmigrate.config import Scenario, scenario_to_dict
from vmigrate.guest.facts import GuestFacts, integrity
from vmigrate.migration.orchestrator import MigrationRecord, Outcome
from vmigrate.result.document import Clock, Environment, Event, Recorded, Verification
from vmigrate.result.fault import Fault
from vmigrate.result.migration import Action, MigrationFigures, PostcopyPause
from vmigrate.result.preflight import PreflightResult

#: the logs every testbed run leaves in its directory
TESTBED_FILES = {
    "qemu_log_source": "qemu-source.log",
    "qemu_log_destination": "qemu-destination.log",
    "serial_source": "serial-source.log",
    "serial_destination": "serial-destination.log",
}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _since(t_ns: int, t0_ns: int) -> float:
    """Seconds from t0_ns to t_ns, to the µs."""
    return round((t_ns - t0_ns) / 1e9, 6)


def _pauses(record: MigrationRecord | None, t0_ns: int) -> list[PostcopyPause]:
    """Each interval post-copy spent paused (a broken link): when, why, how long, how many
    reconnections it took (recovered_at_s null: it never recovered)."""
    if record is None:
        return []
    return [
        PostcopyPause(
            paused_at_s=_since(p.paused_ns, t0_ns),
            recovered_at_s=None if p.recovered_ns is None else _since(p.recovered_ns, t0_ns),
            paused_ms=None
            if p.recovered_ns is None
            else _round((p.recovered_ns - p.paused_ns) / 1e6),
            cause=p.cause,
            reconnections=p.attempts,
        )
        for p in record.postcopy_pauses
    ]


def migration_figures(
    record: MigrationRecord | None, guest_ram_bytes: int, t0_ns: int = 0, tls: bool = False
) -> MigrationFigures:
    """The migration section: how it was done (strategy, TLS), times, downtime, bytes,
    iterations, throughput."""
    if record is None or record.final is None:
        return MigrationFigures(
            strategy=record.strategy if record else None,
            tls=tls,
            postcopy_preempt=record.postcopy_preempt if record else False,
            total_time_s=None,
            setup_time_s=None,
            downtime_reported_ms=None,
            transferred_bytes=0,
            remaining_bytes=None,
            iterations=0,
            throughput_mbit_s=None,
            guest_ram_bytes=guest_ram_bytes,
            progress_samples=0,
            stall_detected=False,
            disk_copy_bytes=0,
            attempts=record.attempts if record else 0,
            postcopy_pauses=_pauses(record, t0_ns),
            hypervisor_report={},
            actions=[],
        )
    final = record.final
    wire_s = final.total_time_ms / 1000 if final.total_time_ms else None
    throughput = final.transferred_bytes * 8 / wire_s / 1e6 if wire_s else None
    return MigrationFigures(
        strategy=record.strategy,
        tls=tls,
        postcopy_preempt=record.postcopy_preempt,
        total_time_s=_round(record.total_time_s),
        setup_time_s=_round(final.setup_time_ms / 1000 if final.setup_time_ms else None),
        downtime_reported_ms=_round(record.downtime_reported_ms),
        transferred_bytes=record.transferred_bytes,
        remaining_bytes=final.remaining_bytes,
        iterations=final.iterations,
        throughput_mbit_s=_round(throughput),
        guest_ram_bytes=guest_ram_bytes,
        progress_samples=len(record.samples),
        stall_detected=record.stall_detected,
        disk_copy_bytes=record.disk_copy_bytes,
        attempts=record.attempts,
        postcopy_pauses=_pauses(record, t0_ns),
        hypervisor_report=dict(final.report),
        actions=[Action(t_s=_since(t_ns, t0_ns), action=action) for t_ns, action in record.actions],
    )


def _events(record: MigrationRecord | None, t0_ns: int) -> list[Event]:
    if record is None:
        return []
    return [
        Event.model_validate(
            {
                "t_s": _since(e.t_ns, t0_ns),
                "host": e.host,
                "event": e.kind,
                "name": e.name,
                "data": e.data,
            }
        )
        for e in record.events
    ]


def guest_verification(
    before: GuestFacts, after: GuestFacts, running_on: str, source_state: str | None
) -> Verification:
    """Where the VM runs after the run, and whether the testbed guest's memory and disk are
    intact: its agent's answers before and after the migration, compared."""
    intact = integrity(before, after)
    return Verification.model_validate(
        {
            "running_on": running_on,
            "source_state_after": source_state,
            "service_ok_after": intact.same_guest,
            "memory_checksum_ok": intact.memory_checksum_ok,
            "memory_writes_intact": intact.memory_writes_intact,
            "working_set_pages_checked": after.pages_checked,
            "working_set_pages_mismatched": after.pages_mismatched,
            "disk_checksum_ok": intact.disk_checksum_ok,
            "disk_blocks_checked": after.disk_blocks_checked,
            "disk_blocks_mismatched": after.disk_blocks_mismatched,
            "boot_id_before": before.boot_id,
            "boot_id_after": after.boot_id,
            "memory_checksum_before": before.checksum,
            "memory_checksum_after": after.checksum,
        }
    )


def build_result(
    *,
    scenario: Scenario,
    record: MigrationRecord | None,
    started_at: str,
    t0_ns: int,
    marks_ns: dict[str, int],
    environment: Environment,
    verification: Verification,
    error: str | None,
    preflight: PreflightResult | None = None,
    fault: Fault | None = None,
    files: dict[str, str] | None = None,
) -> Recorded:
    """The recorded part of the result document, from what the run recorded; `files`: the
    run directory's logs (default: a testbed run's)."""
    optional = {"fault": fault} if fault is not None else {}
    return Recorded(
        started_at=started_at,
        clock=Clock(t0_ns=t0_ns),
        scenario=scenario_to_dict(scenario),
        environment=environment,
        outcome=record.outcome if record is not None else Outcome.FAILED,
        error=error if error else (record.error if record is not None else None),
        preflight=preflight,
        migration=migration_figures(
            record, scenario.vm.memory_mib * 1024 * 1024, t0_ns, tls=scenario.migration.tls
        ),
        timeline_s={name: _since(t, t0_ns) for name, t in marks_ns.items()},
        events=_events(record, t0_ns),
        verification=verification,
        files=dict(TESTBED_FILES if files is None else files),
        **optional,
    )
