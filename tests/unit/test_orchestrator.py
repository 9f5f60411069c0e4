"""The migration state machine against a scripted fake backend: every ending leaves the VM
running on exactly one host."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from vmigrate.config import MigrationSpec
from vmigrate.hypervisor.base import (
    Backend,
    Domain,
    Hypervisor,
    HypervisorEvent,
    Migration,
    MigrationStats,
    MigrationStatus,
    RunState,
    VmConfig,
)
from vmigrate.hypervisor.plan import MigrationPlan
from vmigrate.hypervisor.qemu_migration import UNLIMITED_BYTES_S, qmp_settings
from vmigrate.migration.orchestrator import MigrationRecord, Outcome, migrate
from vmigrate.migration.stall import StallDetector
from vmigrate.migration.strategy import plan_for
from vmigrate.report.result import migration_figures

S = MigrationStatus


class FakeDomain(Domain):
    """A VM instance that only has a run state."""

    def __init__(self, role: str, state: RunState) -> None:
        self.host_role = role
        self.console_log = None
        self.state = state
        self.calls: list[str] = []

    async def run_state(self) -> RunState:
        return self.state

    async def pause(self) -> None:
        self.calls.append("pause")
        self.state = RunState.PAUSED

    async def resume(self) -> None:
        self.calls.append("resume")
        self.state = RunState.RUNNING

    async def touched_memory_bytes(self) -> int | None:
        return None

    async def measure_dirty_rate(self, seconds: int) -> float:
        return 0.0

    def exit_reason(self) -> str | None:
        return None

    def drain_events(self) -> list[HypervisorEvent]:
        return []

    async def shutdown(self) -> None:
        self.calls.append("shutdown")
        self.state = RunState.GONE


class FakeMigration(Migration):
    """A migration job that goes through a scripted list of statuses, one per poll."""

    def __init__(self, source: FakeDomain, plan: MigrationPlan, script: list[S]) -> None:
        self.source = source
        self.destination = FakeDomain("destination", RunState.INCOMING)
        self.plan = plan
        self.script = list(script)
        self.status = S.NONE
        self.polls = 0
        self.calls: list[str] = []
        self.actions: list[tuple[int, str]] = []

    @property
    def postcopy_preempt(self) -> bool:
        return self.plan.postcopy_preempt

    async def copy_storage(self, timeout_s: float) -> int:
        if not self.plan.copy_storage:
            return 0
        self.calls.append("copy storage")
        self.actions += [(1, "disk mirror started"), (2, "disk mirror ready")]
        return 300

    async def start(self) -> None:
        self.calls.append("start")
        self.status = S.SETUP

    def advance(self) -> None:
        if not self.status.finished and self.script:
            self.status = self.script.pop(0)
            if self.status == S.COMPLETED:
                self.hand_over()

    def hand_over(self) -> None:
        was_running = self.source.state == RunState.RUNNING
        self.source.state = RunState.MIGRATED
        self.destination.state = RunState.RUNNING if was_running else RunState.PAUSED

    async def stats(self) -> MigrationStats:
        self.polls += 1
        self.advance()
        return MigrationStats(
            status=self.status,
            total_time_ms=1234.0,
            downtime_ms=7.0,
            transferred_bytes=1000,
            iterations=self.polls,
            remaining_bytes=0 if self.status == S.COMPLETED else 500,
        )

    async def switch_to_postcopy(self) -> None:
        self.calls.append("postcopy")

    async def set_downtime_limit(self, limit_ms: int) -> None:
        self.calls.append(f"downtime {limit_ms}")

    async def pause_postcopy(self) -> None:
        self.calls.append("pause postcopy")

    async def recover_postcopy(self) -> None:
        self.calls.append("recover postcopy")

    async def cancel(self) -> None:
        self.calls.append("cancel")
        self.status = S.CANCELLED
        self.script.clear()

    def drain_actions(self) -> list[tuple[int, str]]:
        actions, self.actions = self.actions, []
        return actions

    async def conclude(self, completed: bool) -> None:
        self.calls.append("conclude completed" if completed else "conclude failed")
        if not completed:
            await self.destination.shutdown()


class FakeHypervisor(Hypervisor):
    """Prepares FakeMigration jobs (of `job_type`) with a status script each."""

    backend = Backend.QEMU

    def __init__(self, script: list[S], job_type: type[FakeMigration] = FakeMigration) -> None:
        self.script = script
        self.job_type = job_type
        self.jobs: list[FakeMigration] = []

    async def boot(self, config: VmConfig) -> Domain:
        raise NotImplementedError

    async def prepare_migration(self, source: Domain, plan: MigrationPlan) -> Migration:
        assert isinstance(source, FakeDomain)
        assert all(job.destination.state == RunState.GONE for job in self.jobs), (
            "a spent destination is stopped before a new one is prepared"
        )
        self.jobs.append(self.job_type(source, plan, self.script))
        return self.jobs[-1]

    def listen_ports(self, plan: MigrationPlan) -> dict[str, int]:
        return {}

    async def versions(self) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        pass


def run(
    script: list[S],
    job_type: type[FakeMigration] = FakeMigration,
    copy_storage: bool = False,
    **spec: Any,
) -> tuple[MigrationRecord, FakeDomain, FakeHypervisor]:
    """Migrate a running fake VM with the scenario's migration section `spec`."""
    source = FakeDomain("source", RunState.RUNNING)
    hypervisor = FakeHypervisor(script, job_type)
    migration_spec = MigrationSpec(**spec)
    plan = plan_for(migration_spec, copy_storage=copy_storage)

    async def go() -> MigrationRecord:
        job = await hypervisor.prepare_migration(source, plan)
        return await migrate(hypervisor, source, job, plan, migration_spec, poll_interval_s=0.001)

    return asyncio.run(go()), source, hypervisor


def test_precopy_completes_on_the_destination() -> None:
    record, source, hv = run([S.SETUP, S.ACTIVE, S.ACTIVE, S.COMPLETED])
    assert record.outcome == Outcome.COMPLETED
    assert hv.jobs[0].destination.state == RunState.RUNNING
    assert source.state == RunState.MIGRATED
    assert record.source_state_after == RunState.MIGRATED
    assert record.downtime_reported_ms == 7.0
    assert record.total_time_s == pytest.approx(1.234)
    assert len(record.samples) == 4
    assert hv.jobs[0].calls == ["start", "conclude completed"]


def test_a_source_that_is_gone_after_the_migration_has_handed_over() -> None:
    class Vanishing(FakeMigration):
        def hand_over(self) -> None:
            super().hand_over()
            self.source.state = RunState.GONE  # libvirt: a transient source domain is gone

    record, _, _ = run([S.ACTIVE, S.COMPLETED], Vanishing)
    assert record.outcome == Outcome.COMPLETED


def test_a_source_still_running_after_completion_is_a_failure() -> None:
    class Twice(FakeMigration):
        def hand_over(self) -> None:
            super().hand_over()
            self.source.state = RunState.RUNNING

    record, _, _ = run([S.ACTIVE, S.COMPLETED], Twice)
    assert record.outcome == Outcome.FAILED
    assert "might run twice" in (record.error or "")


def test_timeout_cancels_and_keeps_the_vm_on_the_source() -> None:
    record, source, hv = run([S.ACTIVE] * 100000, timeout_s=0.05)
    assert record.outcome == Outcome.TIMEOUT
    assert "cancel" in hv.jobs[0].calls
    assert source.state == RunState.RUNNING
    assert hv.jobs[0].destination.state == RunState.GONE
    assert record.downtime_reported_ms is None


def test_failure_keeps_the_vm_on_the_source() -> None:
    record, source, hv = run([S.ACTIVE, S.FAILED])
    assert record.outcome == Outcome.FAILED
    assert source.state == RunState.RUNNING
    assert hv.jobs[0].destination.state == RunState.GONE


def test_an_error_while_migrating_cancels_and_keeps_the_vm_on_the_source() -> None:
    class Broken(FakeMigration):
        async def stats(self) -> MigrationStats:
            if self.polls >= 2:
                raise RuntimeError("the backend went away")
            return await super().stats()

    record, source, hv = run([S.ACTIVE] * 10, Broken)
    assert record.outcome == Outcome.FAILED
    assert record.error == "the backend went away"
    assert hv.jobs[0].calls == ["start", "cancel", "conclude failed"]
    assert source.state == RunState.RUNNING


def test_cold_pauses_first_and_resumes_on_the_destination() -> None:
    record, source, hv = run([S.ACTIVE, S.COMPLETED], strategy="cold")
    destination = hv.jobs[0].destination
    assert source.calls[0] == "pause"
    assert "resume" in destination.calls
    assert record.outcome == Outcome.COMPLETED
    assert destination.state == RunState.RUNNING
    assert record.downtime_reported_ms is not None and record.downtime_reported_ms >= 0
    assert record.downtime_reported_ms == pytest.approx(record.total_time_s * 1000)


def test_failed_cold_migration_resumes_the_source() -> None:
    record, source, _ = run([S.ACTIVE, S.FAILED], strategy="cold")
    assert record.outcome == Outcome.FAILED
    assert source.state == RunState.RUNNING


def test_the_plan_in_qmp_terms_passes_the_bandwidth_cap_in_bytes() -> None:
    caps, source, destination = qmp_settings(
        plan_for(MigrationSpec(max_bandwidth_mib_s=10, downtime_limit_ms=50))
    )
    # Every capability a plan may set is named (a QEMU that took the VM in an earlier hop
    # keeps what that hop set): here all off but events.
    assert caps == {
        "events": True,
        "postcopy-ram": False,
        "postcopy-preempt": False,
        "auto-converge": False,
        "xbzrle": False,
        "multifd": False,
    }
    # A plain migration turns off the TLS an earlier hop may have left named.
    assert source == {"downtime-limit": 50, "max-bandwidth": 10 * 1024 * 1024, "tls-creds": ""}
    assert destination == {"tls-creds": ""}
    assert qmp_settings(plan_for(MigrationSpec()))[1]["max-bandwidth"] == UNLIMITED_BYTES_S


@pytest.mark.parametrize(("strategy", "after"), [("postcopy", 0), ("hybrid", 3)])
def test_postcopy_switches_after_the_configured_passes(strategy: str, after: int) -> None:
    record, _, hv = run([S.ACTIVE] * 6 + [S.POSTCOPY, S.COMPLETED], strategy=strategy)
    assert record.outcome == Outcome.COMPLETED
    assert hv.jobs[0].calls == ["start", "postcopy", "conclude completed"]
    assert [a for _, a in record.actions] == ["postcopy"]
    assert record.switched_to_postcopy
    assert hv.jobs[0].plan.postcopy
    # The switch came on the first poll that saw more than `after` passes.
    assert record.samples[after].stats.iterations == after + 1


@pytest.mark.parametrize(
    ("strategy", "caps", "source_params", "both_params"),
    [
        ("auto-converge", {"auto-converge"}, {"cpu-throttle-initial": 20}, {}),
        ("xbzrle", {"xbzrle"}, {"xbzrle-cache-size": 64 * 1024 * 1024}, {}),
        ("multifd", {"multifd"}, {}, {"multifd-channels": 2, "multifd-compression": "none"}),
        ("postcopy", {"postcopy-ram"}, {}, {}),
        ("precopy", set(), {}, {}),
    ],
)
def test_each_strategy_sets_its_capabilities_and_parameters(
    strategy: str, caps: set[str], source_params: dict[str, Any], both_params: dict[str, Any]
) -> None:
    capabilities, source, destination = qmp_settings(
        plan_for(MigrationSpec(strategy=strategy))  # type: ignore[arg-type]
    )
    assert {c for c, on in capabilities.items() if on} == {"events", *caps}
    assert source_params.items() <= source.items()
    assert both_params.items() <= source.items()
    assert destination == {**both_params, "tls-creds": ""}


@pytest.mark.parametrize(
    "spec",
    [
        MigrationSpec(strategy="postcopy", postcopy_preempt=True),
        MigrationSpec(strategy="hybrid", postcopy_preempt=True),
        MigrationSpec(on_stall="postcopy", postcopy_preempt=True),
    ],
)
def test_postcopy_preempt_is_set_on_both_ends_when_asked(spec: MigrationSpec) -> None:
    capabilities, _, _ = qmp_settings(plan_for(spec))
    assert capabilities["postcopy-ram"] and capabilities["postcopy-preempt"]
    plain = qmp_settings(plan_for(spec.model_copy(update={"postcopy_preempt": False})))[0]
    assert plain["postcopy-ram"] and not plain["postcopy-preempt"]


@pytest.mark.parametrize("preempt", [True, False])
def test_a_run_records_whether_postcopy_preempt_ran(preempt: bool) -> None:
    """As the backend's job says (the fake's follows its plan; libvirt's is on regardless)."""
    record, _, _ = run([S.POSTCOPY, S.COMPLETED], strategy="postcopy", postcopy_preempt=preempt)
    assert record.postcopy_preempt is preempt
    figures = migration_figures(record, 512 * 1024 * 1024)
    assert figures.postcopy_preempt is preempt


def test_the_plan_says_what_each_strategy_means() -> None:
    assert not plan_for(MigrationSpec(strategy="cold")).live
    hybrid = plan_for(MigrationSpec(strategy="hybrid", postcopy_after_iterations=4))
    assert hybrid.postcopy and hybrid.postcopy_after_passes == 4
    armed = plan_for(MigrationSpec(on_stall="postcopy"))
    assert armed.postcopy and armed.postcopy_after_passes is None
    multifd = plan_for(MigrationSpec(strategy="multifd", multifd_compression="zstd"))
    assert multifd.multifd is not None and multifd.multifd.compression == "zstd"
    assert plan_for(MigrationSpec(), copy_storage=True).copy_storage


def stats_at(iteration: int, remaining: int) -> MigrationStats:
    return MigrationStats(status=S.ACTIVE, iterations=iteration, remaining_bytes=remaining)


def test_a_migration_that_stops_shrinking_is_a_stall() -> None:
    detector = StallDetector(patience=3)
    flat = [(1, 500), (2, 100), (2, 90), (3, 100), (4, 99), (5, 101)]
    assert [detector.observe(stats_at(i, r)) for i, r in flat] == [False] * 5 + [True]


def test_a_shrinking_migration_never_stalls() -> None:
    detector = StallDetector(patience=2)
    assert not any(detector.observe(stats_at(i, 1000 // i)) for i in range(1, 20))


class Stalling(FakeMigration):
    """Active forever: every poll is a new pass that leaves as much to send as before (until
    post-copy, which always finishes)."""

    async def stats(self) -> MigrationStats:
        self.polls += 1
        status = self.status if self.status == S.CANCELLED else S.ACTIVE
        if "postcopy" in self.calls:
            if self.status != S.COMPLETED:
                self.hand_over()
            status = self.status = S.COMPLETED
        return MigrationStats(
            status=status, iterations=self.polls, remaining_bytes=1000, expected_downtime_ms=900
        )


def test_on_stall_fail_cancels_and_keeps_the_vm_on_the_source() -> None:
    record, source, hv = run([], Stalling, on_stall="fail", stall_iterations=2)
    assert record.stall_detected is True
    assert record.outcome == Outcome.FAILED
    assert "stalled" in (record.error or "")
    assert "cancel" in hv.jobs[0].calls
    assert source.state == RunState.RUNNING


def test_on_stall_postcopy_switches() -> None:
    record, _, hv = run([], Stalling, on_stall="postcopy", stall_iterations=2, timeout_s=0.05)
    assert hv.jobs[0].plan.postcopy
    assert [a for _, a in record.actions] == ["stall detected (no progress)", "postcopy"]
    assert record.outcome == Outcome.COMPLETED
    assert hv.jobs[0].destination.state == RunState.RUNNING


def test_on_stall_raise_downtime_allows_the_expected_stop_and_copy() -> None:
    record, _, hv = run([], Stalling, on_stall="raise-downtime", timeout_s=0.2)
    assert "downtime 1080" in hv.jobs[0].calls  # 1.2 x the 900 ms the hypervisor expects
    assert record.actions[1][1] == "raise-downtime 1080 ms"
    assert record.outcome == Outcome.TIMEOUT  # the fake never converges: a second timeout


class Throttled(Stalling):
    """Stalls until it migrates with auto-converge on; then the throttle lets it finish. Every
    attempt's counters start over, as QEMU's do."""

    async def stats(self) -> MigrationStats:
        if self.plan.throttle is None:
            stats = await super().stats()
            return dataclasses.replace(stats, transferred_bytes=5000 * self.polls)
        self.polls += 1
        status = S.ACTIVE
        if self.polls >= 3:
            status = S.COMPLETED
            if self.source.state == RunState.RUNNING:
                self.hand_over()
        return MigrationStats(
            status=status, iterations=self.polls, transferred_bytes=700,
            remaining_bytes=0, cpu_throttle_pct=30,
        )  # fmt: skip


def test_on_stall_auto_converge_restarts_with_the_throttle_on_a_fresh_destination() -> None:
    record, _, hv = run(
        [], Throttled, on_stall="auto-converge", stall_iterations=2, cpu_throttle_initial_pct=40
    )
    assert record.outcome == Outcome.COMPLETED
    assert [a for _, a in record.actions] == [
        "stall detected (no progress)",
        "restart with auto-converge",
    ]
    first, second = hv.jobs
    assert first.calls == ["start", "cancel", "conclude failed"]
    assert first.destination.state == RunState.GONE
    assert second.destination.state == RunState.RUNNING
    assert first.plan.throttle is None
    assert second.plan.throttle is not None and second.plan.throttle.initial_pct == 40
    assert record.attempts == 2
    assert {s.attempt for s in record.samples} == {1, 2}
    # The first attempt's bytes count: it sent 5000 per poll until the stall (poll 4).
    assert record.earlier_attempts_bytes == 5000 * 4
    assert record.transferred_bytes == 5000 * 4 + 700
    assert record.total_time_s is not None and record.completed_ns is not None
    assert record.total_time_s == (record.completed_ns - record.started_ns) / 1e9


def test_without_a_stall_policy_a_stall_is_only_recorded() -> None:
    record, _, _ = run([], Stalling, timeout_s=0.05, stall_iterations=2)
    assert record.stall_detected is True
    assert record.outcome == Outcome.TIMEOUT


def test_local_storage_is_copied_in_sync_before_the_ram_moves() -> None:
    record, _, hv = run([S.ACTIVE, S.COMPLETED], copy_storage=True)
    assert record.outcome == Outcome.COMPLETED
    assert hv.jobs[0].calls == ["copy storage", "start", "conclude completed"]
    assert [a for _, a in record.actions] == ["disk mirror started", "disk mirror ready"]
    assert record.disk_copy_bytes == 300


def test_a_failed_migration_concludes_as_failed() -> None:
    record, source, hv = run([S.ACTIVE, S.FAILED], copy_storage=True)
    assert record.outcome == Outcome.FAILED
    assert hv.jobs[0].calls[-1] == "conclude failed"
    assert source.state == RunState.RUNNING


class CancelTimesOut(FakeMigration):
    """A job whose statistics break mid-way and whose cancel then fails too."""

    async def stats(self) -> MigrationStats:
        if self.polls >= 2:
            raise RuntimeError("the backend went away")
        return await super().stats()

    async def cancel(self) -> None:
        self.calls.append("cancel")
        raise RuntimeError("migration did not stop within 15 s")


class ConcludeFails(CancelTimesOut):
    async def conclude(self, completed: bool) -> None:
        self.calls.append("conclude failed")
        raise RuntimeError("the destination does not answer")


@pytest.mark.parametrize("job_type", [CancelTimesOut, ConcludeFails])
def test_a_failing_cleanup_step_does_not_skip_the_rollback(
    job_type: type[FakeMigration], caplog: pytest.LogCaptureFixture
) -> None:
    class Paused(job_type):  # type: ignore[valid-type, misc]
        async def start(self) -> None:
            await super().start()
            self.source.state = RunState.MIGRATED  # as if in its stop-and-copy

    with caplog.at_level("WARNING", logger="vmigrate"):
        record, source, hv = run([S.ACTIVE] * 10, Paused)
    assert record.outcome == Outcome.FAILED
    assert hv.jobs[0].calls[:2] == ["start", "cancel"]
    assert "conclude failed" in hv.jobs[0].calls  # tried although the cancel failed
    assert source.state == RunState.RUNNING  # and the source resumed all the same
    assert "resume" in source.calls
    assert "cancelling failed: migration did not stop" in caplog.text
