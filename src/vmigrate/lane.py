"""How a drain holds one of its VMs: a lane (`Experiment.run_lane`) runs one VM's whole
experiment beside the other lanes on one shared testbed, and stops twice to hear from the drain.

    lane                                     drain
    boot, meters, warm-up ── booted ──────►  waits for every lane (wait_booted)
                                             a common baseline, then its policy:
    migrate, after window ◄── release ─────  release(baseline_ns), lane by lane

A lane that fails before it booted says so (`failed`) instead of leaving the drain waiting;
one that is never released waits until the drain cancels it (its VM is stopped on the way out,
and it writes no result).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LaneHooks:
    """The two moments a lane and its drain meet (one object per lane, made by the drain)."""

    booted: asyncio.Event = field(default_factory=asyncio.Event)  # set by the lane
    go: asyncio.Event = field(default_factory=asyncio.Event)  # set by the drain
    failed: bool = False  # the lane ended before it booted (its result says why)
    booted_ns: int | None = None  # when the lane was ready (monotonic)
    baseline_ns: tuple[int, int] | None = None  # the drain's common baseline (monotonic)

    # -- the drain's side ------------------------------------------------------------------

    async def wait_booted(self) -> bool:
        """Wait until the lane's guest serves, its meters run and it warmed up (True), or it
        gave up before that (False)."""
        await self.booted.wait()
        return not self.failed

    def release(self, baseline_ns: tuple[int, int] | None = None) -> None:
        """Let the lane migrate now. `baseline_ns` (start, end; monotonic ns): the window its
        extra cost is measured against, the drain's common baseline (None: from when the lane
        was ready until now)."""
        self.baseline_ns = baseline_ns
        self.go.set()

    # -- the lane's side -------------------------------------------------------------------

    def report_booted(self) -> None:
        """The lane is ready to migrate: its guest serves, its meters run, it warmed up."""
        self.booted_ns = time.monotonic_ns()
        self.booted.set()

    async def turn(self) -> tuple[int, int]:
        """Wait for the drain's release; the baseline window to mark (start, end)."""
        await self.go.wait()
        if self.baseline_ns is not None:
            return self.baseline_ns
        return self.booted_ns or time.monotonic_ns(), time.monotonic_ns()

    def give_up(self) -> None:
        """On the lane's way out: a lane that never booted tells the drain so."""
        if not self.booted.is_set():
            self.failed = True
            self.booted.set()
