"""Where every guest of a running drain is, for a front end to show all at once: a board of one
status per guest (its phase, its destination, its migration's progress), kept up to date by
the drain (phases) and by each lane's observer (stages, progress). The board is data only; the
terminal draws it (report/drain_terminal.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from vmigrate.hypervisor.base import MigrationStats, MigrationStatus
from vmigrate.migration.preflight import Check

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class LanePhase(StrEnum):
    """Where a guest of the drain is."""

    BOOTING = "booting"  # its lane boots it, starts its meters, warms up
    READY = "ready"  # it serves: measured, then waiting for the common baseline
    QUEUED = "queued"  # waiting for its turn under the policy
    MIGRATING = "migrating"  # released: its destination prepared, its migration running
    AFTER = "after"  # its migration ended: its after window, its verification
    DONE = "done"  # its result is written
    FAILED = "failed"  # its lane ended without a migration (it did not boot, or broke)


@dataclass
class LaneStatus:
    """One guest as the board shows it."""

    name: str
    group: str
    source: str
    destination: str | None = None
    phase: LanePhase = LanePhase.BOOTING
    stage: str = ""
    percent: float = 0.0
    throughput_mbit_s: float | None = None
    remaining_mib: float | None = None
    status: str = ""
    passes: int = 0
    released_at: float | None = None  # monotonic seconds
    ended_at: float | None = None
    outcome: str | None = None

    def elapsed_s(self, now: float | None = None) -> float | None:
        """Seconds since its release (until its migration ended)."""
        if self.released_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else now or time.monotonic()
        return max(end - self.released_at, 0.0)

    def release(self, destination: str) -> None:
        self.destination, self.phase = destination, LanePhase.MIGRATING
        self.released_at = time.monotonic()
        self.stage = f"released to {destination}"

    def migrated(self) -> None:
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        if self.phase == LanePhase.MIGRATING:
            self.phase = LanePhase.AFTER


@dataclass
class DrainBoard:
    """Every guest of the drain, and what the drain itself does now."""

    name: str
    lanes: dict[str, LaneStatus] = field(default_factory=dict)
    stage: str = ""
    started_at: float = field(default_factory=time.monotonic)

    def add(self, name: str, group: str, source: str) -> LaneStatus:
        self.lanes[name] = LaneStatus(name, group, source)
        return self.lanes[name]

    def counts(self) -> dict[LanePhase, int]:
        """How many guests are in each phase."""
        out = dict.fromkeys(LanePhase, 0)
        for lane in self.lanes.values():
            out[lane.phase] += 1
        return out


class LaneObserver:
    """A lane's ExperimentObserver: its stages and its migration's progress on its status (and
    in the drain's log), never on the terminal directly (the board is drawn all at once)."""

    def __init__(self, status: LaneStatus) -> None:
        self.status = status

    def stage(self, text: str) -> None:
        self.status.stage = text
        log.info("%s: %s", self.status.name, text)

    def check(self, check: Check) -> None:
        log.info("%s: check %s %s: %s", self.status.name, check.name, check.status, check.message)

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None:
        status = self.status
        done = stats.status == MigrationStatus.COMPLETED
        status.percent = 100.0 if done else stats.percent_sent
        status.throughput_mbit_s = stats.throughput_mbit_s
        status.remaining_mib = stats.remaining_bytes / MIB
        status.status = stats.status.value
        status.passes = stats.iterations


class DrainFront(Protocol):
    """What a front end is told while a drain runs."""

    def stage(self, text: str) -> None:
        """The drain itself moved on (image, testbed, measuring, planning, ...)."""

    def start(self, board: DrainBoard) -> None:
        """The guests are under way: show the board until `stop`."""

    def stop(self) -> None:
        """The guests are done (or the drain is left): stop showing the board."""


class SilentFront:
    """A front end that shows nothing (tests, scripts, the bench)."""

    def stage(self, text: str) -> None:
        pass

    def start(self, board: DrainBoard) -> None:
        pass

    def stop(self) -> None:
        pass
