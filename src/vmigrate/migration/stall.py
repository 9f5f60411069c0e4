"""Stall detection: a pre-copy migration that stops making progress.

A pass (dirty-bitmap sync) that leaves about as much to send as the best pass so far is a pass
without progress; `patience` of them in a row is a stall. The first pass is not judged: it
sends all of memory, so what remains after it says nothing about convergence yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.hypervisor.base import MigrationStats, MigrationStatus

MIN_IMPROVEMENT = 0.05  # a pass must leave 5% less than the best one to count as progress


@dataclass
class StallDetector:
    """Feed it every progress poll; `observe` turns True once the migration stalled."""

    patience: int
    best_remaining: int | None = None
    passes_without_progress: int = 0
    last_pass: int = 0
    stalled: bool = False

    def observe(self, stats: MigrationStats) -> bool:
        if stats.status != MigrationStatus.ACTIVE or stats.iterations <= self.last_pass:
            return self.stalled
        self.last_pass = stats.iterations
        if stats.iterations < 2:
            return self.stalled
        remaining = stats.remaining_bytes
        if self.best_remaining is None or remaining < self.best_remaining * (1 - MIN_IMPROVEMENT):
            self.best_remaining = remaining
            self.passes_without_progress = 0
        else:
            self.passes_without_progress += 1
        self.stalled = self.stalled or self.passes_without_progress >= self.patience
        return self.stalled
