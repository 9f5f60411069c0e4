"""Post-copy through a broken link, against the scripted fake backend: a stalled stream is
paused and reconnected, a dead end means the VM is lost, and a stale source is never resumed."""

from __future__ import annotations

from test_orchestrator import FakeMigration, run

from vmigrate.hypervisor.base import MigrationStats, MigrationStatus, RunState
from vmigrate.migration.orchestrator import Outcome

S = MigrationStatus
PAUSED, RECOVER = S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER


def test_a_stream_that_broke_is_reconnected_and_completes() -> None:
    record, source, hv = run(
        [S.ACTIVE, S.POSTCOPY, PAUSED, PAUSED, RECOVER, S.POSTCOPY, S.COMPLETED],
        strategy="postcopy",
    )
    assert record.outcome == Outcome.COMPLETED, record.error
    assert hv.jobs[0].calls.count("recover postcopy") >= 1
    (pause,) = record.postcopy_pauses
    assert pause.cause == "the stream broke"
    assert pause.recovered_ns is not None and pause.recovered_ns > pause.paused_ns
    assert pause.attempts >= 1
    actions = [a for _, a in record.actions]
    assert actions[1] == "post-copy paused: the stream broke"
    assert actions[2].startswith("post-copy recovered after")
    assert source.state == RunState.MIGRATED


def test_a_stream_that_stops_moving_is_paused() -> None:
    class Frozen(FakeMigration):
        async def stats(self) -> MigrationStats:
            await super().stats()
            if "pause postcopy" in self.calls and self.script:
                self.status = PAUSED  # what the hypervisor does on migrate-pause
            return MigrationStats(status=self.status, transferred_bytes=1000, iterations=1)

    record, _, hv = run([S.ACTIVE] + [S.POSTCOPY] * 100000, Frozen, strategy="postcopy",
                        timeout_s=0.3)  # fmt: skip
    assert "pause postcopy" in hv.jobs[0].calls
    assert record.postcopy_pauses[0].cause == "no byte moved for 1 s"
    # It never reconnected: after timeout_s paused the migration gives up, and the VM,
    # split between the hosts, is lost; the stale source is not resumed.
    assert record.outcome == Outcome.VM_LOST
    assert "did not reconnect" in (record.error or "")
    assert "resume" not in hv.jobs[0].source.calls


def test_a_destination_that_dies_during_postcopy_loses_the_vm() -> None:
    class Dying(FakeMigration):
        def advance(self) -> None:
            super().advance()
            if self.status == PAUSED:
                self.destination.state = RunState.GONE

    record, source, _ = run([S.ACTIVE, S.POSTCOPY, PAUSED, PAUSED], Dying, strategy="postcopy")
    assert record.outcome == Outcome.VM_LOST
    assert "the destination died during post-copy" in (record.error or "")
    assert "resume" not in source.calls


def test_a_source_that_dies_before_the_hand_over_loses_the_vm() -> None:
    class SourceDies(FakeMigration):
        async def stats(self) -> MigrationStats:
            if self.polls >= 2:
                self.source.state = RunState.GONE
                raise RuntimeError("QMP connection lost")
            return await super().stats()

    record, _, hv = run([S.ACTIVE] * 10, SourceDies)
    assert record.outcome == Outcome.VM_LOST
    assert "runs on neither host" in (record.error or "")
    assert hv.jobs[0].destination.state == RunState.GONE


def test_a_precopy_failure_is_not_a_loss() -> None:
    record, source, _ = run([S.ACTIVE, S.FAILED])
    assert record.outcome == Outcome.FAILED
    assert source.state == RunState.RUNNING
    assert record.postcopy_pauses == []


def test_an_end_that_dies_during_postcopy_is_named_when_the_backend_breaks_too() -> None:
    class SourceDiesInPostcopy(FakeMigration):
        async def stats(self) -> MigrationStats:
            if self.polls >= 3:
                self.source.state = RunState.GONE
                self.source.exit_reason = lambda: "QEMU on source exited with -9"  # type: ignore[method-assign]
                raise RuntimeError("QMP connection lost")
            return await super().stats()

    record, source, _ = run([S.ACTIVE, S.POSTCOPY, S.POSTCOPY] * 3, SourceDiesInPostcopy,
                            strategy="postcopy")  # fmt: skip
    assert record.outcome == Outcome.VM_LOST
    assert (record.error or "").startswith(
        "post-copy had moved the VM when an end died: QEMU on source exited with -9"
    )
    assert "resume" not in source.calls
