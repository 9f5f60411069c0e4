"""The migration state machine: set up both ends, migrate, follow progress, finish or roll back.

Whatever happens (failure, timeout, Ctrl-C), the VM ends up running on exactly one host: on the
destination after a completed migration, else back on the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from vmigrate.config import MigrationSpec
from vmigrate.errors import HypervisorError, MigrationError
from vmigrate.hypervisor.base import Domain, HypervisorEvent, MigrationStats
from vmigrate.migration.stall import StallDetector
from vmigrate.migration.strategy import MigrationPlan, plan_for, with_auto_converge

CANCEL_WAIT_S = 15.0
RESUME_WAIT_S = 15.0


class MigrationObserver(Protocol):
    """Told about progress while a migration runs (the CLI draws it; tests may record it)."""

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None: ...


@dataclass(frozen=True)
class ProgressSample:
    """One poll of the migration counters, on the monotonic clock; `attempt` counts from 1 (a
    migration restarted by on_stall = auto-converge has its counters start over)."""

    t_ns: int
    stats: MigrationStats
    attempt: int = 1


@dataclass
class MigrationRecord:
    """What happened: outcome, times, the last counters, every poll and every event."""

    strategy: str
    outcome: str = "failed"  # completed | failed | cancelled | timeout
    error: str | None = None
    started_ns: int = 0
    completed_ns: int | None = None
    ended_ns: int = 0
    paused_ns: int | None = None
    resumed_ns: int | None = None
    final: MigrationStats | None = None
    source_state_after: str | None = None
    stall_detected: bool = False
    disk_copy_bytes: int = 0
    attempts: int = 1
    earlier_attempts_bytes: int = 0  # what cancelled attempts sent before the last one began
    actions: list[tuple[int, str]] = field(
        default_factory=list
    )  # (t_ns, what the orchestrator did)
    samples: list[ProgressSample] = field(default_factory=list)
    events: list[HypervisorEvent] = field(default_factory=list)

    @property
    def total_time_s(self) -> float | None:
        """Hypervisor-reported total time; for cold, from the pause to the resume; for a
        restarted migration, from the first attempt's start to the completion."""
        if self.outcome != "completed":
            return None
        if self.paused_ns is not None and self.resumed_ns is not None:
            return (self.resumed_ns - self.paused_ns) / 1e9
        if self.attempts > 1 and self.completed_ns is not None:
            return (self.completed_ns - self.started_ns) / 1e9
        if self.final is not None and self.final.total_time_ms is not None:
            return self.final.total_time_ms / 1000
        return None

    @property
    def downtime_reported_ms(self) -> float | None:
        """The hypervisor's pause; for cold the whole pause, timed from stop to resume."""
        if self.outcome != "completed":
            return None
        if self.paused_ns is not None and self.resumed_ns is not None:
            return (self.resumed_ns - self.paused_ns) / 1e6
        return self.final.downtime_ms if self.final is not None else None

    @property
    def transferred_bytes(self) -> int:
        """Every byte the migration sent, over all its attempts."""
        last = self.final.transferred_bytes if self.final is not None else 0
        return self.earlier_attempts_bytes + last


async def _wait_state(domain: Domain, wanted: set[str], timeout_s: float) -> str:
    """Poll until the domain is in one of `wanted` states (or gone); return the last state."""
    deadline = time.monotonic() + timeout_s
    state = await domain.run_state()
    while state not in wanted and state != "gone" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        state = await domain.run_state()
    return state


RestartDestination = Callable[[], Awaitable[Domain]]


async def migrate(
    source: Domain,
    destination: Domain,
    spec: MigrationSpec,
    uri: str,
    observer: MigrationObserver | None = None,
    poll_interval_s: float = 0.1,
    disk_copy_to: tuple[str, int] | None = None,
    restart_destination: RestartDestination | None = None,
) -> MigrationRecord:
    """Move the VM from `source` to `destination` (started with `-incoming defer`) via `uri`.

    With `disk_copy_to` (address, port) — storage that is not shared — the disk is first
    mirrored into an NBD export on the destination and kept in sync while the RAM moves.
    `restart_destination` starts a fresh destination: on_stall = auto-converge needs one, since
    QEMU takes capabilities only between migrations and an abandoned incoming QEMU is spent.
    """
    if spec.on_stall == "auto-converge" and restart_destination is None:
        raise MigrationError(
            "migration.on_stall = auto-converge needs a way to restart the destination"
        )
    plan = plan_for(spec)
    record = MigrationRecord(strategy=plan.strategy)
    mirroring = False
    stall = StallDetector(spec.stall_iterations)
    deadline_s = spec.timeout_s
    active = False
    try:
        mirroring = disk_copy_to is not None
        await _start(source, destination, plan, uri, disk_copy_to, record, spec.timeout_s)
        record.started_ns = time.monotonic_ns()
        active = True
        attempt_started_ns = record.started_ns
        while True:
            stats = await source.migration_stats()
            now = time.monotonic_ns()
            record.samples.append(ProgressSample(now, stats, record.attempts))
            elapsed = (now - attempt_started_ns) / 1e9
            if observer is not None:
                observer.migration_progress((now - record.started_ns) / 1e9, stats)
            if stats.status == "completed":
                record.completed_ns = now
                active = False
                break
            if stats.status in ("failed", "cancelled"):
                active = False
                record.outcome = stats.status
                record.error = stats.error or f"migration {stats.status}"
                break
            if (
                plan.postcopy_after_passes is not None
                and stats.status == "active"
                and stats.iterations > plan.postcopy_after_passes
                and not any(action == "postcopy" for _, action in record.actions)
            ):
                await source.start_postcopy()
                record.actions.append((time.monotonic_ns(), "postcopy"))
            timed_out = elapsed > deadline_s
            switching = any(action == "postcopy" for _, action in record.actions)
            if not (record.stall_detected or switching) and (stall.observe(stats) or timed_out):
                record.stall_detected = True
                why = "timeout" if timed_out and not stall.stalled else "no progress"
                record.actions.append((now, f"stall detected ({why})"))
                if spec.on_stall == "fail":
                    record.outcome = "failed"
                    record.error = (
                        f"stalled: remaining bytes did not shrink for {spec.stall_iterations} "
                        "passes (migration.on_stall = fail)"
                        if why == "no progress"
                        else f"stalled: not finished after {spec.timeout_s:g} s"
                    )
                    await _cancel(source)
                    active = False
                    break
                if spec.on_stall == "auto-converge":
                    assert restart_destination is not None
                    active = False
                    await _cancel(source)
                    if mirroring:
                        await source.finish_disk_mirror(abort=True)
                    record.events += destination.drain_events()
                    await _roll_back(source, destination, record)
                    record.earlier_attempts_bytes += stats.transferred_bytes
                    destination = await restart_destination()
                    plan = with_auto_converge(plan, spec)
                    record.attempts += 1
                    record.actions.append((time.monotonic_ns(), "restart with auto-converge"))
                    await _start(
                        source, destination, plan, uri, disk_copy_to, record, spec.timeout_s
                    )
                    active = True
                    attempt_started_ns = time.monotonic_ns()
                    deadline_s = spec.timeout_s  # the remedy gets its own time
                    continue
                if await _act_on_stall(source, spec, stats, record) and timed_out:
                    deadline_s += spec.timeout_s  # the remedy gets its own time
                    timed_out = False
            if timed_out and not switching:  # post-copy cannot be cancelled: it must finish
                record.outcome = "timeout"
                record.error = f"not finished after {deadline_s:g} s (migration.timeout_s)"
                await _cancel(source)
                active = False
                break
            await asyncio.sleep(poll_interval_s)
        record.final = await source.migration_stats()
        if record.final.transferred_bytes == 0 and record.samples:
            # A cancelled migration reports no counters: keep the last ones it had.
            record.final = dataclasses.replace(
                record.samples[-1].stats, status=record.final.status, error=record.final.error
            )
        if mirroring:
            await source.finish_disk_mirror(abort=record.completed_ns is None)
            await destination.unexport_disk()
            mirroring = False
        if record.completed_ns is not None:
            await _finish_on_destination(source, destination, record)
        else:
            await _roll_back(source, destination, record)
    except BaseException as exc:
        record.outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
        record.error = record.error or str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            if active:
                await _cancel(source)
            if mirroring:
                await source.finish_disk_mirror(abort=True)
            await _roll_back(source, destination, record)
        if not isinstance(exc, Exception):
            raise
    finally:
        record.ended_ns = time.monotonic_ns()
        record.events += source.drain_events() + destination.drain_events()
        record.events.sort(key=lambda e: e.t_ns)
    return record


async def _start(
    source: Domain,
    destination: Domain,
    plan: MigrationPlan,
    uri: str,
    disk_copy_to: tuple[str, int] | None,
    record: MigrationRecord,
    timeout_s: float,
) -> None:
    """Configure both ends, let the destination listen, copy the disk if it is not shared,
    pause the VM for a cold migration, and start sending."""
    await source.set_migration_capabilities(plan.capabilities)
    await destination.set_migration_capabilities(plan.capabilities)
    await source.set_migration_parameters(plan.source_parameters)
    if plan.destination_parameters:
        await destination.set_migration_parameters(plan.destination_parameters)
    await destination.accept_migration(uri)
    if disk_copy_to is not None:
        await _copy_disk(source, destination, disk_copy_to, record, timeout_s)
    if plan.pause_first:
        await source.pause()
        record.paused_ns = time.monotonic_ns()
    await source.start_migration(uri)


async def _copy_disk(
    source: Domain,
    destination: Domain,
    target: tuple[str, int],
    record: MigrationRecord,
    timeout_s: float,
) -> None:
    """Mirror the disk into the destination's NBD export until it is in sync (or time out)."""
    await destination.export_disk(*target)
    await source.start_disk_mirror(*target)
    record.actions.append((time.monotonic_ns(), "disk mirror started"))
    deadline = time.monotonic() + timeout_s
    while True:
        ready, copied, total = await source.disk_mirror_progress()
        record.disk_copy_bytes = copied
        if ready:
            record.actions.append((time.monotonic_ns(), "disk mirror ready"))
            return
        if time.monotonic() > deadline:
            raise MigrationError(
                f"the disk copy did not get in sync within {timeout_s:g} s "
                f"({copied} of {total} bytes copied)"
            )
        await asyncio.sleep(0.1)


async def _act_on_stall(
    source: Domain, spec: MigrationSpec, stats: MigrationStats, record: MigrationRecord
) -> bool:
    """Apply migration.on_stall to a stalled migration; True when a remedy was applied."""
    now = time.monotonic_ns()
    if spec.on_stall == "postcopy" and stats.status == "active":
        await source.start_postcopy()
        record.actions.append((now, "postcopy"))
        return True
    if spec.on_stall == "raise-downtime":
        expected = stats.expected_downtime_ms or 0.0
        limit = max(2 * spec.downtime_limit_ms, int(expected * 1.2))
        await source.set_migration_parameters({"downtime-limit": limit})
        record.actions.append((now, f"raise-downtime {limit} ms"))
        return True
    return False


async def _cancel(source: Domain) -> None:
    """Cancel and wait until the source says the migration is over."""
    await source.cancel_migration()
    deadline = time.monotonic() + CANCEL_WAIT_S
    while time.monotonic() < deadline:
        stats = await source.migration_stats()
        if stats.status in ("cancelled", "failed", "completed"):
            return
        await asyncio.sleep(0.05)
    raise MigrationError(f"migration did not stop within {CANCEL_WAIT_S:g} s of migrate_cancel")


async def _finish_on_destination(
    source: Domain, destination: Domain, record: MigrationRecord
) -> None:
    """Make sure the VM runs on the destination; a cold migration resumes it there."""
    if record.paused_ns is not None:
        state = await _wait_state(destination, {"paused", "running"}, RESUME_WAIT_S)
        if state == "paused":
            await destination.resume()
        record.resumed_ns = time.monotonic_ns()
    state = await _wait_state(destination, {"running"}, RESUME_WAIT_S)
    record.source_state_after = await source.run_state()
    if state != "running":
        record.outcome = "failed"
        record.error = f"destination is {state!r} after the migration completed, not running"
        await _roll_back(source, destination, record)
        return
    if record.source_state_after != "postmigrate":
        record.outcome = "failed"
        record.error = (
            f"source is {record.source_state_after!r} after the migration, not postmigrate: "
            "the VM might run twice"
        )
        return
    record.outcome = "completed"


async def _roll_back(source: Domain, destination: Domain, record: MigrationRecord) -> None:
    """After a migration that did not complete: drop the destination, keep the source running."""
    with contextlib.suppress(HypervisorError):
        await destination.shutdown()
    state = await source.run_state()
    if state in ("paused", "postmigrate", "finish-migrate"):
        await source.resume()
    if record.paused_ns is not None and record.resumed_ns is None:
        record.resumed_ns = time.monotonic_ns()
