"""The migration state machine: start, follow progress, act on stalls, finish or roll back.

It drives any backend through the `Hypervisor`/`Migration`/`Domain` interface. Whatever
happens (failure, timeout, Ctrl-C), the VM ends up running on exactly one host: on the
destination after a completed migration, else back on the source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from vmigrate.cleanup import Step, each
from vmigrate.config import MigrationSpec
from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import (
    Domain,
    Hypervisor,
    HypervisorEvent,
    Migration,
    MigrationStats,
    MigrationStatus,
    RunState,
)
from vmigrate.hypervisor.plan import MigrationPlan
from vmigrate.migration.postcopy_recovery import PostcopyPause, PostcopyWatch, VmLost
from vmigrate.migration.stall import StallDetector
from vmigrate.migration.strategy import throttle_of

log = logging.getLogger(__name__)

RESUME_WAIT_S = 15.0


class Outcome(StrEnum):
    """How a migration ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    VM_LOST = "vm_lost"  # neither host runs the VM, nor can any more


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
    outcome: Outcome = Outcome.FAILED
    error: str | None = None
    started_ns: int = 0
    completed_ns: int | None = None
    ended_ns: int = 0
    paused_ns: int | None = None
    resumed_ns: int | None = None
    final: MigrationStats | None = None
    source_state_after: RunState | None = None
    stall_detected: bool = False
    switched_to_postcopy: bool = False
    postcopy_preempt: bool = False  # the last attempt's faulted pages had their own connection
    postcopy_pauses: list[PostcopyPause] = field(default_factory=list)
    disk_copy_bytes: int = 0
    attempts: int = 1
    earlier_attempts_bytes: int = 0  # what cancelled attempts sent before the last one began
    actions: list[tuple[int, str]] = field(
        default_factory=list
    )  # (t_ns, what the orchestrator or the backend did)
    samples: list[ProgressSample] = field(default_factory=list)
    events: list[HypervisorEvent] = field(default_factory=list)
    destination: Domain | None = field(default=None, repr=False)  # the last attempt's

    @property
    def total_time_s(self) -> float | None:
        """Hypervisor-reported total time; for cold, from the pause to the resume; for a
        restarted migration, from the first attempt's start to the completion."""
        if self.outcome != Outcome.COMPLETED:
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
        if self.outcome != Outcome.COMPLETED:
            return None
        if self.paused_ns is not None and self.resumed_ns is not None:
            return (self.resumed_ns - self.paused_ns) / 1e6
        return self.final.downtime_ms if self.final is not None else None

    @property
    def transferred_bytes(self) -> int:
        """Every byte the migration sent, over all its attempts."""
        last = self.final.transferred_bytes if self.final is not None else 0
        return self.earlier_attempts_bytes + last

    def act(self, what: str) -> None:
        self.actions.append((time.monotonic_ns(), what))


async def where_it_runs(source: Domain, destination: Domain | None) -> str:
    """Which host runs the VM now, by the hypervisors' own word: "destination", "source" or
    "none" (a host whose hypervisor does not answer any more does not run it, as far as anyone
    can tell)."""
    for role, domain in (("destination", destination), ("source", source)):
        if domain is None:
            continue
        try:
            if await domain.run_state() == RunState.RUNNING:
                return role
        except HypervisorError as exc:
            log.warning("asking the %s where the VM runs: %s", role, exc)
    return "none"


async def _wait_state(domain: Domain, wanted: set[RunState], timeout_s: float) -> RunState:
    """Poll until the domain is in one of `wanted` states (or gone); return the last state."""
    deadline = time.monotonic() + timeout_s
    state = await domain.run_state()
    while state not in wanted and state != RunState.GONE and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        state = await domain.run_state()
    return state


class _Run:
    """One migration being driven: the current attempt, its deadline and the record."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        source: Domain,
        job: Migration,
        plan: MigrationPlan,
        spec: MigrationSpec,
        observer: MigrationObserver | None,
        poll_interval_s: float,
        cancel: asyncio.Event | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.cancel_requested = cancel
        self.source = source
        self.job = job
        self.plan = plan
        self.spec = spec
        self.observer = observer
        self.poll_interval_s = poll_interval_s
        self.record = MigrationRecord(strategy=plan.strategy)
        self.stall = StallDetector(spec.stall_iterations)
        self.deadline_s = spec.timeout_s
        self.attempt_started_ns = 0
        self.active = False  # a job runs on the hypervisor and must be cancelled on the way out
        self.postcopy = PostcopyWatch(job, source, spec.timeout_s) if plan.postcopy else None
        if self.postcopy is not None:
            self.record.postcopy_pauses = self.postcopy.pauses

    @property
    def past_the_switch(self) -> bool:
        """The VM has run on the destination: the source's copy is stale and must never be
        resumed (post-copy, even a paused one)."""
        return self.postcopy is not None and self.postcopy.entered

    async def start(self) -> None:
        """Copy a non-shared disk, pause the VM for a cold migration, and start sending."""
        self.record.disk_copy_bytes = await self.job.copy_storage(self.spec.timeout_s)
        self.record.actions += self.job.drain_actions()
        if not self.plan.live:
            await self.source.pause()
            self.record.paused_ns = time.monotonic_ns()
        self.active = True
        await self.job.start()
        self.attempt_started_ns = time.monotonic_ns()
        self.record.postcopy_preempt = self.job.postcopy_preempt

    async def follow(self) -> None:
        """Poll until the job ends, switching to post-copy and acting on stalls on the way."""
        record, spec = self.record, self.spec
        while True:
            stats = await self.job.stats()
            now = time.monotonic_ns()
            record.samples.append(ProgressSample(now, stats, record.attempts))
            record.actions += self.job.drain_actions()
            if self.observer is not None:
                self.observer.migration_progress((now - record.started_ns) / 1e9, stats)
            if self.postcopy is not None:
                try:
                    await self.postcopy.observe(stats, now)
                except VmLost as exc:
                    self.active = False
                    record.outcome, record.error = Outcome.VM_LOST, str(exc)
                    return
                finally:
                    record.actions += self.postcopy.drain_actions()
            if stats.status == MigrationStatus.COMPLETED:
                record.completed_ns = now
                self.active = False
                return
            if await self._cancelled_by_the_user():
                return
            if stats.status in (MigrationStatus.FAILED, MigrationStatus.CANCELLED):
                self.active = False
                record.outcome = Outcome(stats.status.value)
                record.error = stats.error or f"migration {stats.status.value}"
                return
            await self._maybe_switch_to_postcopy(stats)
            timed_out = (now - self.attempt_started_ns) / 1e9 > self.deadline_s
            in_postcopy = record.switched_to_postcopy or self.past_the_switch
            if not (record.stall_detected or in_postcopy) and (
                self.stall.observe(stats) or timed_out
            ):
                record.stall_detected = True
                why = "timeout" if timed_out and not self.stall.stalled else "no progress"
                record.actions.append((now, f"stall detected ({why})"))
                if spec.on_stall == "fail":
                    record.error = (
                        f"stalled: remaining bytes did not shrink for {spec.stall_iterations} "
                        "passes (migration.on_stall = fail)"
                        if why == "no progress"
                        else f"stalled: not finished after {spec.timeout_s:g} s"
                    )
                    await self.cancel()
                    return
                if spec.on_stall == "auto-converge":
                    await self._restart_with_throttle(stats)
                    continue
                if await self._act_on_stall(stats) and timed_out:
                    self.deadline_s += spec.timeout_s  # the remedy gets its own time
                    timed_out = False
            if timed_out and not in_postcopy:  # post-copy must finish (or recover)
                record.outcome = Outcome.TIMEOUT
                record.error = f"not finished after {self.deadline_s:g} s (migration.timeout_s)"
                await self.cancel()
                return
            await asyncio.sleep(self.poll_interval_s)

    async def _cancelled_by_the_user(self) -> bool:
        """Cancel when the user asked to; post-copy can only finish (the VM already runs on the
        destination), so there the request is recorded and refused."""
        if self.cancel_requested is None or not self.cancel_requested.is_set():
            return False
        self.cancel_requested.clear()
        if self.record.switched_to_postcopy or self.past_the_switch:
            self.record.act("cancel refused: post-copy moved the VM already; it can only finish")
            return False
        self.record.act("cancelled by the user")
        self.record.outcome, self.record.error = Outcome.CANCELLED, "cancelled by the user"
        await self.cancel()
        return True

    async def _maybe_switch_to_postcopy(self, stats: MigrationStats) -> None:
        after = self.plan.postcopy_after_passes
        if (
            after is not None
            and stats.status == MigrationStatus.ACTIVE
            and stats.iterations > after
            and not self.record.switched_to_postcopy
        ):
            await self._switch_to_postcopy()

    async def _switch_to_postcopy(self) -> None:
        await self.job.switch_to_postcopy()
        self.record.switched_to_postcopy = True
        self.record.act("postcopy")

    async def _act_on_stall(self, stats: MigrationStats) -> bool:
        """Apply migration.on_stall = postcopy | raise-downtime; True when a remedy was applied."""
        if self.spec.on_stall == "postcopy" and stats.status == MigrationStatus.ACTIVE:
            await self._switch_to_postcopy()
            return True
        if self.spec.on_stall == "raise-downtime":
            expected = stats.expected_downtime_ms or 0.0
            limit = max(2 * self.spec.downtime_limit_ms, int(expected * 1.2))
            await self.job.set_downtime_limit(limit)
            self.record.act(f"raise-downtime {limit} ms")
            return True
        return False

    async def _restart_with_throttle(self, stats: MigrationStats) -> None:
        """on_stall = auto-converge: capabilities change only between migrations, so cancel
        (the VM stays on the source), then start a fresh attempt with the throttle on."""
        record = self.record
        await self.cancel()
        await self.job.conclude(completed=False)
        record.events += self.job.destination.drain_events()
        await self.roll_back()
        record.earlier_attempts_bytes += stats.transferred_bytes
        self.plan = self.plan.with_throttle(throttle_of(self.spec))
        self.job = await self.hypervisor.prepare_migration(self.source, self.plan)
        if self.postcopy is not None:
            self.postcopy.job = self.job
        record.attempts += 1
        record.act("restart with auto-converge")
        await self.start()
        self.deadline_s = self.spec.timeout_s  # the remedy gets its own time

    async def cancel(self) -> None:
        """Cancel the running job (the VM stays on the source)."""
        self.active = False
        await self.job.cancel()

    async def finish(self) -> None:
        """Keep the final counters, tidy the job, and check where the VM runs."""
        record = self.record
        record.final = await self.job.stats()
        if record.final.transferred_bytes == 0 and record.samples:
            # A cancelled migration reports no counters: keep the last ones it had.
            record.final = dataclasses.replace(
                record.samples[-1].stats, status=record.final.status, error=record.final.error
            )
        # A backend that copies the disk inside the migration (libvirt) counts it there.
        record.disk_copy_bytes = max(record.disk_copy_bytes, record.final.disk_transferred_bytes)
        completed = record.completed_ns is not None
        await self.job.conclude(completed)
        record.actions += self.job.drain_actions()
        if completed:
            await self._check_destination()
        else:
            if self.past_the_switch:
                record.outcome = Outcome.VM_LOST
            await self.roll_back()

    async def settle(self) -> None:
        """After a migration that did not complete: a VM that runs on neither host is lost
        (its source died before the hand-over), and the record says so."""
        record = self.record
        if record.outcome in (Outcome.COMPLETED, Outcome.VM_LOST):
            return
        if await where_it_runs(self.source, self.job.destination) == "none":
            why = self.source.exit_reason() or "the source does not run it"
            record.outcome = Outcome.VM_LOST
            record.error = f"the VM runs on neither host: {why} (the migration: {record.error})"

    async def _check_destination(self) -> None:
        """Make sure the VM runs on the destination (a cold migration resumes it there), and
        no longer on the source."""
        record, destination = self.record, self.job.destination
        if record.paused_ns is not None:
            wanted = {RunState.PAUSED, RunState.RUNNING}
            if await _wait_state(destination, wanted, RESUME_WAIT_S) == RunState.PAUSED:
                await destination.resume()
            record.resumed_ns = time.monotonic_ns()
        state = await _wait_state(destination, {RunState.RUNNING}, RESUME_WAIT_S)
        record.source_state_after = await self.source.run_state()
        if state != RunState.RUNNING:
            record.outcome = Outcome.FAILED
            record.error = f"destination is {state.value!r} after the migration completed"
            await self.job.conclude(completed=False)
            await self.roll_back()
            return
        if not record.source_state_after.handed_over:
            record.outcome = Outcome.FAILED
            record.error = (
                f"source is {record.source_state_after.value!r} after the migration, not "
                "handed over: the VM might run twice"
            )
            return
        record.outcome = Outcome.COMPLETED

    async def roll_back(self) -> None:
        """After a migration that did not complete: keep (or get) the source running —
        unless the VM already ran on the destination (its source copy is stale)."""
        if self.past_the_switch:
            log.warning("post-copy had moved the VM: its stale source copy is not resumed")
            return
        state = await self.source.run_state()
        if state in (RunState.PAUSED, RunState.MIGRATED, RunState.FINISHING):
            await self.source.resume()
        if self.record.paused_ns is not None and self.record.resumed_ns is None:
            self.record.resumed_ns = time.monotonic_ns()

    async def abandon(self, exc: BaseException) -> None:
        """On an error or Ctrl-C: stop the job, drop the destination, resume the source; each
        step is tried whatever the one before did, and what fails is logged."""
        record = self.record
        record.outcome = (
            Outcome.CANCELLED if isinstance(exc, asyncio.CancelledError) else Outcome.FAILED
        )
        record.error = record.error or str(exc) or type(exc).__name__
        if self.past_the_switch:
            record.outcome = Outcome.VM_LOST
            dead = self.source.exit_reason() or self.job.destination.exit_reason()
            if dead:
                record.error = (
                    f"post-copy had moved the VM when an end died: {dead}; neither host can "
                    f"run it (the migration: {record.error})"
                )
        steps: list[Step] = [("cancelling", self.cancel)] if self.active else []
        steps += [
            ("dropping the destination", lambda: self.job.conclude(completed=False)),
            ("resuming the source", self.roll_back),
        ]
        await each(steps, "after a failed migration")


async def migrate(
    hypervisor: Hypervisor,
    source: Domain,
    job: Migration,
    plan: MigrationPlan,
    spec: MigrationSpec,
    observer: MigrationObserver | None = None,
    poll_interval_s: float = 0.1,
    cancel: asyncio.Event | None = None,
) -> MigrationRecord:
    """Move the VM from `source` with the prepared `job` (from `hypervisor.prepare_migration`
    with `plan`); `spec` says how long to wait and what to do on a stall. The hypervisor
    prepares a fresh attempt when on_stall = auto-converge restarts the migration; setting
    `cancel` cancels it (the user's request; refused once post-copy moved the VM)."""
    run = _Run(hypervisor, source, job, plan, spec, observer, poll_interval_s, cancel)
    record = run.record
    try:
        await run.start()
        record.started_ns = time.monotonic_ns()
        await run.follow()
        await run.finish()
    except BaseException as exc:
        await run.abandon(exc)
        if not isinstance(exc, Exception):
            raise
    finally:
        await each([("checking where the VM runs", run.settle)], "after the migration")
        record.ended_ns = time.monotonic_ns()
        record.destination = run.job.destination
        record.events += source.drain_events() + run.job.destination.drain_events()
        record.events.sort(key=lambda e: e.t_ns)
    return record
