"""Fault injection: when it fires, what it does, and that what it did is undone."""

from __future__ import annotations

import time

import pytest

from vmigrate.config import FaultSpec
from vmigrate.errors import ScenarioError
from vmigrate.hypervisor.base import MigrationStats, MigrationStatus
from vmigrate.migration import faults
from vmigrate.migration.faults import Fault, FaultInjector, FaultTargets


def test_at_is_a_share_of_the_bytes_or_seconds() -> None:
    by_share = FaultSpec(kind="kill-destination", at="40%")
    assert not by_share.due(100.0, 39.9) and by_share.due(0.0, 40.0)
    by_time = FaultSpec(kind="kill-destination", at="2.5s")
    assert not by_time.due(2.4, 99.0) and by_time.due(2.5, 0.0)


def test_bad_fault_input_is_refused() -> None:
    from vmigrate.config import validate_scenario

    for fault, says in [
        ({"at": "soon"}, "neither a share"),
        ({"at": "101%"}, "at most 100%"),
        ({"kind": "freeze-source"}, "freeze-source needs a duration"),
        ({"kind": "nfs-stall"}, "nfs-stall needs a duration"),
        ({"kind": "unplug"}, "choose one of"),
    ]:
        with pytest.raises(ScenarioError, match=says):
            validate_scenario({"fault": fault})


def stats(sent: int, remaining: int) -> MigrationStats:
    return MigrationStats(MigrationStatus.ACTIVE, transferred_bytes=sent, remaining_bytes=remaining)


def test_the_injector_fires_once_when_due_and_undoes_after_the_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done: list[str] = []
    fake = Fault(lambda t: done.append("cut") or "cut", lambda t: done.append("mend") or "mend")
    monkeypatch.setitem(faults.FAULTS, "link-down", fake)
    targets = FaultTargets(lambda: 1, lambda: 2, "ns", "up")
    seen: list[float] = []

    class Next:
        def migration_progress(self, elapsed_s: float, s: MigrationStats) -> None:
            seen.append(elapsed_s)

    injector = FaultInjector(FaultSpec(kind="link-down", at="50%", duration_ms=50), targets, Next())
    injector.migration_progress(0.1, stats(10, 90))
    assert done == []
    injector.migration_progress(0.2, stats(60, 40))
    injector.migration_progress(0.3, stats(80, 20))
    assert done == ["cut"]
    time.sleep(0.2)
    assert done == ["cut", "mend"]
    injector.close()  # already undone: not twice
    assert done == ["cut", "mend"]
    assert seen == [0.1, 0.2, 0.3]  # every poll passed on
    record = injector.section(0, 0)
    assert record.injected and record.actions == ["fault: cut", "fault undone: mend"]


def test_close_undoes_a_fault_still_in_effect_and_a_failed_injection_is_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done: list[str] = []
    monkeypatch.setitem(
        faults.FAULTS, "link-down", Fault(lambda t: "cut", lambda t: done.append("mend") or "mend")
    )
    targets = FaultTargets(lambda: None, lambda: None, "ns", "up")
    for_good = FaultInjector(FaultSpec(kind="link-down", at="0s"), targets, None)
    for_good.migration_progress(0.0, stats(0, 1))
    for_good.close()
    assert done == ["mend"]
    missing = FaultInjector(FaultSpec(kind="kill-destination", at="0s"), targets, None)
    missing.migration_progress(0.0, stats(0, 1))
    assert missing.section(0, 0).injected is False
    assert "no destination process to send SIGKILL to" in (missing.error or "")
