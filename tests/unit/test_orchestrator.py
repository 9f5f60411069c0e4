"""The migration state machine against a scripted fake hypervisor: every ending leaves the VM
running on exactly one host."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from vmigrate.config import MigrationSpec
from vmigrate.errors import MigrationError
from vmigrate.hypervisor.base import Domain, HypervisorEvent, MigrationStats
from vmigrate.migration.orchestrator import migrate
from vmigrate.migration.stall import StallDetector
from vmigrate.migration.strategy import UNLIMITED_BYTES_S, plan_for


class FakeDomain(Domain):
    """A VM instance whose migration goes through a scripted list of statuses."""

    def __init__(self, role: str, state: str, script: list[str] | None = None) -> None:
        self.host_role = role
        self.state = state
        self.script = list(script or [])
        self.calls: list[str] = []
        self.capabilities: dict[str, bool] = {}
        self.parameters: dict[str, Any] = {}
        self.peer: FakeDomain | None = None
        self.migration_status = "none"
        self.polls = 0

    async def run_state(self) -> str:
        return self.state

    async def pause(self) -> None:
        self.calls.append("pause")
        self.state = "paused"

    async def resume(self) -> None:
        self.calls.append("resume")
        self.state = "running"

    async def set_migration_capabilities(self, capabilities: dict[str, bool]) -> None:
        self.capabilities.update(capabilities)

    async def set_migration_parameters(self, parameters: dict[str, Any]) -> None:
        self.parameters.update(parameters)

    async def accept_migration(self, uri: str) -> None:
        self.calls.append(f"incoming {uri}")

    async def start_postcopy(self) -> None:
        self.calls.append("postcopy")

    async def start_migration(self, uri: str) -> None:
        self.calls.append(f"migrate {uri}")

    async def export_disk(self, address: str, port: int) -> None:
        self.calls.append(f"export {address}:{port}")

    async def unexport_disk(self) -> None:
        self.calls.append("unexport")

    async def start_disk_mirror(self, address: str, port: int) -> None:
        self.calls.append(f"mirror {address}:{port}")
        self.mirror_polls = 0

    async def disk_mirror_progress(self) -> tuple[bool, int, int]:
        self.mirror_polls += 1
        return self.mirror_polls >= 3, min(self.mirror_polls, 3) * 100, 300

    async def finish_disk_mirror(self, abort: bool = False) -> None:
        self.calls.append("abort mirror" if abort else "finish mirror")

    async def migration_stats(self) -> MigrationStats:
        self.polls += 1
        if self.migration_status not in ("completed", "failed", "cancelled") and self.script:
            self.migration_status = self.script.pop(0)
            if self.migration_status == "completed":
                was_running = self.state == "running"
                self.state = "postmigrate"
                assert self.peer is not None
                self.peer.state = "running" if was_running else "paused"
        return MigrationStats(
            status=self.migration_status,
            total_time_ms=1234.0,
            downtime_ms=7.0,
            transferred_bytes=1000,
            iterations=self.polls,
            remaining_bytes=0 if self.migration_status == "completed" else 500,
        )

    async def touched_memory_bytes(self) -> int | None:
        return None

    async def measure_dirty_rate(self, seconds: int) -> float:
        return 0.0

    async def cancel_migration(self) -> None:
        self.calls.append("cancel")
        self.migration_status = "cancelled"
        self.script.clear()

    def drain_events(self) -> list[HypervisorEvent]:
        return []

    async def shutdown(self) -> None:
        self.calls.append("shutdown")
        self.state = "gone"


def pair(script: list[str]) -> tuple[FakeDomain, FakeDomain]:
    source = FakeDomain("source", "running", script)
    destination = FakeDomain("destination", "inmigrate")
    source.peer = destination
    return source, destination


def run(source: FakeDomain, destination: FakeDomain, **spec: Any) -> Any:
    return asyncio.run(
        migrate(source, destination, MigrationSpec(**spec), "tcp:x:1", poll_interval_s=0.001)
    )


def test_precopy_completes_on_the_destination() -> None:
    source, destination = pair(["setup", "active", "active", "completed"])
    record = run(source, destination)
    assert record.outcome == "completed"
    assert destination.state == "running"
    assert source.state == "postmigrate"
    assert record.source_state_after == "postmigrate"
    assert record.downtime_reported_ms == 7.0
    assert record.total_time_s == pytest.approx(1.234)
    assert len(record.samples) == 4
    assert source.capabilities == {"events": True}
    assert source.parameters["max-bandwidth"] == UNLIMITED_BYTES_S


def test_timeout_cancels_and_keeps_the_vm_on_the_source() -> None:
    source, destination = pair(["active"] * 100000)
    record = run(source, destination, timeout_s=0.05)
    assert record.outcome == "timeout"
    assert "cancel" in source.calls
    assert source.state == "running"
    assert destination.state == "gone"
    assert record.downtime_reported_ms is None


def test_failure_keeps_the_vm_on_the_source() -> None:
    source, destination = pair(["active", "failed"])
    record = run(source, destination)
    assert record.outcome == "failed"
    assert source.state == "running"
    assert destination.state == "gone"


def test_cold_pauses_first_and_resumes_on_the_destination() -> None:
    source, destination = pair(["active", "completed"])
    record = run(source, destination, strategy="cold")
    assert source.calls[0] == "pause"
    assert "resume" in destination.calls
    assert record.outcome == "completed"
    assert destination.state == "running"
    assert record.downtime_reported_ms is not None and record.downtime_reported_ms >= 0
    assert record.downtime_reported_ms == pytest.approx(record.total_time_s * 1000)


def test_failed_cold_migration_resumes_the_source() -> None:
    source, destination = pair(["active", "failed"])
    record = run(source, destination, strategy="cold")
    assert record.outcome == "failed"
    assert source.state == "running"


def test_bandwidth_cap_is_passed_in_bytes() -> None:
    plan = plan_for(MigrationSpec(max_bandwidth_mib_s=10, downtime_limit_ms=50))
    assert plan.source_parameters == {"downtime-limit": 50, "max-bandwidth": 10 * 1024 * 1024}
    assert plan.destination_parameters == {}


def test_the_destination_listens_only_once_configured() -> None:
    source, destination = pair(["active", "completed"])
    run(source, destination)
    assert destination.calls[0] == "incoming tcp:x:1"
    assert destination.capabilities == {"events": True}


@pytest.mark.parametrize(("strategy", "after"), [("postcopy", 1), ("hybrid", 3)])
def test_postcopy_switches_after_the_configured_passes(strategy: str, after: int) -> None:
    source, destination = pair(["active"] * 6 + ["postcopy-active", "completed"])
    record = run(source, destination, strategy=strategy)
    assert record.outcome == "completed"
    assert source.calls.count("postcopy") == 1
    assert [a for _, a in record.actions] == ["postcopy"]
    assert source.calls == ["migrate tcp:x:1", "postcopy"]
    # The switch came on the first poll that saw more than `after` passes.
    assert source.capabilities["postcopy-ram"] is True
    assert destination.capabilities["postcopy-ram"] is True
    assert record.samples[after].stats.iterations == after + 1


@pytest.mark.parametrize(
    ("strategy", "caps", "source_params", "both_params"),
    [
        ("auto-converge", {"auto-converge"}, {"cpu-throttle-initial": 20}, {}),
        ("xbzrle", {"xbzrle"}, {"xbzrle-cache-size": 64 * 1024 * 1024}, {}),
        ("multifd", {"multifd"}, {}, {"multifd-channels": 2, "multifd-compression": "none"}),
        ("precopy", set(), {}, {}),
    ],
)
def test_each_strategy_sets_its_capabilities_and_parameters(
    strategy: str, caps: set[str], source_params: dict[str, Any], both_params: dict[str, Any]
) -> None:
    plan = plan_for(MigrationSpec(strategy=strategy))  # type: ignore[arg-type]
    assert {c for c, on in plan.capabilities.items() if on} == {"events", *caps}
    assert source_params.items() <= plan.source_parameters.items()
    assert both_params.items() <= plan.source_parameters.items()
    assert plan.destination_parameters == both_params


def stats_at(iteration: int, remaining: int) -> MigrationStats:
    return MigrationStats(status="active", iterations=iteration, remaining_bytes=remaining)


def test_a_migration_that_stops_shrinking_is_a_stall() -> None:
    detector = StallDetector(patience=3)
    flat = [(1, 500), (2, 100), (2, 90), (3, 100), (4, 99), (5, 101)]
    assert [detector.observe(stats_at(i, r)) for i, r in flat] == [False] * 5 + [True]


def test_a_shrinking_migration_never_stalls() -> None:
    detector = StallDetector(patience=2)
    assert not any(detector.observe(stats_at(i, 1000 // i)) for i in range(1, 20))


class StallingDomain(FakeDomain):
    """Active forever: every poll is a new pass that leaves as much to send as before."""

    async def migration_stats(self) -> MigrationStats:
        self.polls += 1
        status = self.migration_status if self.migration_status == "cancelled" else "active"
        if "postcopy" in self.calls:  # post-copy always finishes
            status, self.state = "completed", "postmigrate"
            assert self.peer is not None
            self.peer.state = "running"
        return MigrationStats(
            status=status, iterations=self.polls, remaining_bytes=1000, expected_downtime_ms=900
        )


def stalling_pair() -> tuple[FakeDomain, FakeDomain]:
    source = StallingDomain("source", "running")
    destination = FakeDomain("destination", "inmigrate")
    source.peer = destination
    return source, destination


def test_on_stall_fail_cancels_and_keeps_the_vm_on_the_source() -> None:
    source, destination = stalling_pair()
    record = run(source, destination, on_stall="fail", stall_iterations=2)
    assert record.stall_detected is True
    assert record.outcome == "failed"
    assert "stalled" in record.error
    assert "cancel" in source.calls
    assert source.state == "running"


def test_on_stall_postcopy_switches() -> None:
    source, destination = stalling_pair()
    record = run(source, destination, on_stall="postcopy", stall_iterations=2, timeout_s=0.05)
    assert source.capabilities["postcopy-ram"] is True
    assert [a for _, a in record.actions] == ["stall detected (no progress)", "postcopy"]
    assert record.outcome == "completed"
    assert destination.state == "running"


def test_on_stall_raise_downtime_allows_the_expected_stop_and_copy() -> None:
    source, destination = stalling_pair()
    record = run(source, destination, on_stall="raise-downtime", timeout_s=0.2)
    assert source.parameters["downtime-limit"] == 1080  # 1.2 x the 900 ms QEMU expects
    assert record.actions[1][1] == "raise-downtime 1080 ms"
    assert record.outcome == "timeout"  # the fake never converges: a second timeout ends it


class ThrottledDomain(StallingDomain):
    """Stalls until it migrates with auto-converge on; then the throttle lets it finish. Every
    attempt's counters start over, as QEMU's do."""

    async def start_migration(self, uri: str) -> None:
        await super().start_migration(uri)
        self.polls = 0
        self.migration_status = "active"

    async def migration_stats(self) -> MigrationStats:
        if not self.capabilities.get("auto-converge"):
            stats = await super().migration_stats()
            return dataclasses.replace(stats, transferred_bytes=5000 * self.polls)
        self.polls += 1
        if self.polls >= 3:
            self.migration_status, self.state = "completed", "postmigrate"
            assert self.peer is not None
            self.peer.state = "running"
        return MigrationStats(
            status=self.migration_status, iterations=self.polls, transferred_bytes=700,
            remaining_bytes=0, cpu_throttle_pct=30,
        )  # fmt: skip


def test_on_stall_auto_converge_restarts_with_the_throttle_on_a_fresh_destination() -> None:
    source = ThrottledDomain("source", "running")
    first = FakeDomain("destination", "inmigrate")
    source.peer = first
    fresh: list[FakeDomain] = []

    async def restart() -> FakeDomain:
        assert first.state == "gone", "the spent destination is stopped before a new one"
        fresh.append(FakeDomain("destination", "inmigrate"))
        source.peer = fresh[-1]
        return fresh[-1]

    spec = MigrationSpec(on_stall="auto-converge", stall_iterations=2, cpu_throttle_initial_pct=40)
    record = asyncio.run(
        migrate(source, first, spec, "tcp:x:1", poll_interval_s=0.001, restart_destination=restart)
    )
    assert record.outcome == "completed"
    assert [a for _, a in record.actions] == [
        "stall detected (no progress)",
        "restart with auto-converge",
    ]
    assert source.calls == ["migrate tcp:x:1", "cancel", "migrate tcp:x:1"]
    assert len(fresh) == 1 and fresh[0].state == "running"
    assert fresh[0].calls == ["incoming tcp:x:1"] and fresh[0].capabilities["auto-converge"]
    assert source.parameters["cpu-throttle-initial"] == 40
    assert record.attempts == 2
    assert {s.attempt for s in record.samples} == {1, 2}
    # The first attempt's bytes count: it sent 5000 per poll until the stall (poll 4).
    assert record.earlier_attempts_bytes == 5000 * 4
    assert record.transferred_bytes == 5000 * 4 + 700
    assert record.total_time_s is not None and record.completed_ns is not None
    assert record.total_time_s == (record.completed_ns - record.started_ns) / 1e9


def test_on_stall_auto_converge_without_a_way_to_restart_is_refused() -> None:
    source, destination = stalling_pair()
    with pytest.raises(MigrationError, match="restart the destination"):
        run(source, destination, on_stall="auto-converge")


def test_without_a_stall_policy_a_stall_is_only_recorded() -> None:
    source, destination = stalling_pair()
    record = run(source, destination, timeout_s=0.05, stall_iterations=2)
    assert record.stall_detected is True
    assert record.outcome == "timeout"


def test_local_storage_is_mirrored_in_sync_before_the_ram_moves() -> None:
    source, destination = pair(["active", "completed"])
    record = asyncio.run(
        migrate(
            source, destination, MigrationSpec(), "tcp:x:1", poll_interval_s=0.001,
            disk_copy_to=("10.0.0.2", 10809),
        )
    )  # fmt: skip
    assert record.outcome == "completed"
    assert source.calls == ["mirror 10.0.0.2:10809", "migrate tcp:x:1", "finish mirror"]
    assert destination.calls == ["incoming tcp:x:1", "export 10.0.0.2:10809", "unexport"]
    assert [a for _, a in record.actions] == ["disk mirror started", "disk mirror ready"]
    assert record.disk_copy_bytes == 300


def test_a_failed_migration_aborts_the_disk_mirror() -> None:
    source, destination = pair(["active", "failed"])
    record = asyncio.run(
        migrate(
            source, destination, MigrationSpec(), "tcp:x:1", poll_interval_s=0.001,
            disk_copy_to=("10.0.0.2", 10809),
        )
    )  # fmt: skip
    assert record.outcome == "failed"
    assert "abort mirror" in source.calls
    assert source.state == "running"
