"""How a drain holds one of its VMs: a lane (`Experiment.run_lane`) runs one VM's whole
experiment beside the other lanes on one shared testbed, and stops twice to hear from the drain.

    lane                                     drain
    boot, meters, warm-up ── booted ──────►  waits for every lane (wait_booted), measures
                                             its guest (`source`), a common baseline, then
                                             its policy:
    migrate ◄──────────────── release ─────  release(baseline_ns, destination_host), lane by lane
            ──────────────── migrated ────►  the lane's slot in the policy is free again
    after window, result

A lane that fails before it booted says so (`failed`) instead of leaving the drain waiting;
one that ends in any way sets `migrated` too, so the drain never waits on it; one that is never
released waits until the drain cancels it (its VM is stopped on the way out, and it writes no
result). The destination may be left open until the release (`destination_host`): a drain
places its VMs once it has measured them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmigrate.hypervisor.base import Domain
    from vmigrate.migration.preflight import Check


@dataclass
class LaneHooks:
    """The two moments a lane and its drain meet (one object per lane, made by the drain)."""

    booted: asyncio.Event = field(default_factory=asyncio.Event)  # set by the lane
    go: asyncio.Event = field(default_factory=asyncio.Event)  # set by the drain
    migrated: asyncio.Event = field(default_factory=asyncio.Event)  # set by the lane
    failed: bool = False  # the lane ended before it booted (its result says why)
    booted_ns: int | None = None  # when the lane was ready (monotonic)
    source: Domain | None = None  # the booted guest on its source, for the drain to measure
    baseline_ns: tuple[int, int] | None = None  # the drain's common baseline (monotonic)
    destination_host: str | None = None  # where the drain sends it (None: the slot's)
    estimate: Check | None = None  # the drain's plan for it, as a pre-flight estimate
    released_ns: int | None = None  # when the drain released it (monotonic)
    migrated_ns: int | None = None  # when its migration ended, or the lane did (monotonic)

    # -- the drain's side ------------------------------------------------------------------

    async def wait_booted(self) -> bool:
        """Wait until the lane's guest serves, its meters run and it warmed up (True), or it
        gave up before that (False)."""
        await self.booted.wait()
        return not self.failed

    def release(
        self,
        baseline_ns: tuple[int, int] | None = None,
        destination_host: str | None = None,
        estimate: Check | None = None,
    ) -> None:
        """Let the lane migrate now. `baseline_ns` (start, end; monotonic ns): the window its
        extra cost is measured against, the drain's common baseline (None: from when the lane
        was ready until now); `destination_host`: the testbed host it moves to (None: its
        slot's); `estimate`: what the drain's plan predicts for it (its result sets it beside
        what happened)."""
        self.baseline_ns = baseline_ns
        self.destination_host = destination_host
        self.estimate = estimate
        self.released_ns = time.monotonic_ns()
        self.go.set()

    async def wait_migrated(self) -> None:
        """Wait until the lane's migration ended (however it ended), or the lane did."""
        await self.migrated.wait()

    # -- the lane's side -------------------------------------------------------------------

    def report_booted(self, source: Domain | None = None) -> None:
        """The lane is ready to migrate: its guest (`source`) serves, its meters run, it
        warmed up."""
        self.booted_ns = time.monotonic_ns()
        self.source = source
        self.booted.set()

    def report_migrated(self) -> None:
        """The lane's migration ended (completed or not): it no longer loads the links."""
        if not self.migrated.is_set():
            self.migrated_ns = time.monotonic_ns()
            self.migrated.set()

    async def turn(self) -> tuple[int, int]:
        """Wait for the drain's release; the baseline window to mark (start, end)."""
        await self.go.wait()
        if self.baseline_ns is not None:
            return self.baseline_ns
        return self.booted_ns or time.monotonic_ns(), time.monotonic_ns()

    def give_up(self) -> None:
        """On the lane's way out: a lane that never booted tells the drain so; one that never
        said its migration ended says so now."""
        self.source = None  # stopped on the way out
        if not self.booted.is_set():
            self.failed = True
            self.booted.set()
        self.report_migrated()
