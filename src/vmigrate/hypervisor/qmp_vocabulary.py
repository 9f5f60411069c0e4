"""QMP's words in the backend-neutral vocabulary: migration statuses, run states, events (stamped
when QEMU emitted them) and query-migrate's counters."""

from __future__ import annotations

from typing import Any

from vmigrate.hypervisor.base import (
    EventKind,
    HypervisorEvent,
    MigrationStats,
    MigrationStatus,
    RunState,
)

# QMP's migration statuses and run states, in the backend-neutral vocabulary.
MIGRATION_STATUSES = {
    "none": MigrationStatus.NONE,
    "setup": MigrationStatus.SETUP,
    "active": MigrationStatus.ACTIVE,
    "wait-unplug": MigrationStatus.ACTIVE,
    "pre-switchover": MigrationStatus.DEVICE,
    "device": MigrationStatus.DEVICE,
    "postcopy-active": MigrationStatus.POSTCOPY,
    "postcopy-paused": MigrationStatus.POSTCOPY_PAUSED,
    "postcopy-recover-setup": MigrationStatus.POSTCOPY_RECOVER,
    "postcopy-recover": MigrationStatus.POSTCOPY_RECOVER,
    "cancelling": MigrationStatus.CANCELLING,
    "completed": MigrationStatus.COMPLETED,
    "failed": MigrationStatus.FAILED,
    "cancelled": MigrationStatus.CANCELLED,
}
RUN_STATES = {
    "running": RunState.RUNNING,
    "paused": RunState.PAUSED,
    "inmigrate": RunState.INCOMING,
    "finish-migrate": RunState.FINISHING,
    "postmigrate": RunState.MIGRATED,
}
EVENT_KINDS = {
    "STOP": EventKind.STOPPED,
    "RESUME": EventKind.RESUMED,
    "MIGRATION": EventKind.MIGRATION_STATUS,
    "MIGRATION_PASS": EventKind.MIGRATION_PASS,
}


def migration_status(qmp_status: str) -> MigrationStatus:
    """QMP's word for a migration's status, as a MigrationStatus (unknown ones: ACTIVE)."""
    return MIGRATION_STATUSES.get(qmp_status, MigrationStatus.ACTIVE)


def emitted_monotonic_ns(received_ns: int, realtime_minus_monotonic_ns: int, stamp: Any) -> int:
    """When QEMU emitted an event, on our monotonic clock: its own wall-clock stamp (µs), moved
    by the clocks' offset. Our receipt time waits for the event loop (8 ms late under load, seen
    in CI), QEMU's stamp does not. A stamp missing, later than the receipt or more than 1 s before
    it (the wall clock stepped) is not trusted: the receipt time stands."""
    if not isinstance(stamp, dict):
        return received_ns
    try:
        wall_ns = int(stamp["seconds"]) * 1_000_000_000 + int(stamp["microseconds"]) * 1_000
    except (KeyError, TypeError, ValueError):
        return received_ns
    emitted_ns = wall_ns - realtime_minus_monotonic_ns
    return emitted_ns if received_ns - 1_000_000_000 <= emitted_ns <= received_ns else received_ns


def event_from_qmp(
    host: str, received_ns: int, event: dict[str, Any], realtime_minus_monotonic_ns: int = 0
) -> HypervisorEvent:
    """A QMP event message as a HypervisorEvent stamped when QEMU emitted it (a MIGRATION
    event's status normalised)."""
    name = str(event["event"])
    raw = event.get("data", {})
    data = dict(raw) if isinstance(raw, dict) else {}
    if name == "MIGRATION" and "status" in data:
        data["status"] = migration_status(str(data["status"])).value
    stamp = event.get("timestamp")
    return HypervisorEvent(
        t_ns=emitted_monotonic_ns(received_ns, realtime_minus_monotonic_ns, stamp),
        host=host,
        kind=EVENT_KINDS.get(name, EventKind.OTHER),
        name=name,
        data=data,
        emitted_s=stamp["seconds"] + stamp["microseconds"] / 1e6
        if isinstance(stamp, dict)
        else None,
    )


def stats_from_query(reply: dict[str, Any]) -> MigrationStats:
    """Normalise QEMU's query-migrate reply (names and units) into MigrationStats."""
    ram: dict[str, Any] = reply.get("ram", {})

    def opt_float(key: str) -> float | None:
        value = reply.get(key)
        return float(value) if value is not None else None

    def opt_int(key: str) -> int | None:
        value = ram.get(key)
        return int(value) if value is not None else None

    return MigrationStats(
        status=migration_status(str(reply.get("status", "none"))),
        total_time_ms=opt_float("total-time"),
        setup_time_ms=opt_float("setup-time"),
        downtime_ms=opt_float("downtime"),
        expected_downtime_ms=opt_float("expected-downtime"),
        transferred_bytes=int(ram.get("transferred", 0)),
        remaining_bytes=int(ram.get("remaining", 0)),
        total_bytes=int(ram.get("total", 0)),
        zero_pages=int(ram.get("duplicate", 0)),
        normal_pages=int(ram.get("normal", 0)),
        normal_bytes=int(ram.get("normal-bytes", 0)),
        dirty_pages_rate=int(ram.get("dirty-pages-rate", 0)),
        page_size_bytes=int(ram.get("page-size", 4096)),
        throughput_mbit_s=float(ram.get("mbps", 0.0)),
        iterations=int(ram.get("dirty-sync-count", 0)),
        precopy_bytes=opt_int("precopy-bytes"),
        downtime_bytes=opt_int("downtime-bytes"),
        postcopy_bytes=opt_int("postcopy-bytes"),
        cpu_throttle_pct=int(reply.get("cpu-throttle-percentage", 0)),
        error=reply.get("error-desc"),
        raw=reply,
    )
