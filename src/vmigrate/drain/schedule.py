"""The drain's policy, carried out: guests are released to migrate in the plan's order, each to
the host the plan placed it on, while at most `parallel_per_host` migrations leave one host and
at most `parallel_total` run in the whole testbed.

A guest counts from its release until its migration ended (however it ended: completed,
failed, or its lane gave up), as the planner's simulation counts it from its start to its end;
the preparation of its destination is part of that. A guest the drain has no lane for (it did
not boot) is skipped, and nothing waits for it. Ties keep the plan's order: within one source
host the guests leave strictly in order, so a later one never overtakes an earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vmigrate.drain.cluster import Choice
from vmigrate.drain.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    """One guest's migration as the plan orders it."""

    name: str
    source: str
    destination: str


@dataclass(frozen=True)
class Limits:
    """How many migrations may run at once: from one host, and in all (None: no cap)."""

    per_host: int
    total: int | None = None

    @classmethod
    def of(cls, choice: Choice) -> Limits:
        return cls(choice.parallel_per_host, choice.parallel_total)


class Releasable(Protocol):
    """A guest waiting for the drain's word (a lane)."""

    def release(self, destination: str) -> None:
        """Migrate now, to testbed host `destination`."""

    async def wait_ended(self) -> None:
        """Return once the migration ended, or the lane did."""


def turns_of(plan: Plan) -> list[Turn]:
    """The plan's guests in the order they start; those it does not start (they would never
    converge) last, in the plan's order: the drain tries them once the others are away."""
    ordered = sorted(
        enumerate(plan.vms), key=lambda item: (item[1].start_s is None, item[1].start_s or 0.0)
    )
    return [Turn(vm.name, vm.source, vm.destination) for _, vm in ordered]


def startable(pending: Sequence[Turn], running: Sequence[Turn], limits: Limits) -> list[Turn]:
    """Of the `pending` turns (in order), those that may start now beside the `running` ones."""
    per_host = Counter(turn.source for turn in running)
    total = len(running)
    chosen: list[Turn] = []
    for turn in pending:
        if limits.total is not None and total >= limits.total:
            break
        if per_host[turn.source] < limits.per_host:
            chosen.append(turn)
            per_host[turn.source] += 1
            total += 1
    return chosen


async def carry_out(
    turns: Sequence[Turn], lanes: Mapping[str, Releasable], limits: Limits
) -> list[Turn]:
    """Release the lanes as `turns` orders them within `limits`; return once every released
    migration ended. The turns released, in the order they were (a turn without a lane is
    skipped)."""
    pending = [turn for turn in turns if turn.name in lanes]
    running: dict[asyncio.Task[None], Turn] = {}
    released: list[Turn] = []
    try:
        while pending or running:
            for turn in startable(pending, list(running.values()), limits):
                pending.remove(turn)
                lane = lanes[turn.name]
                lane.release(turn.destination)
                released.append(turn)
                running[asyncio.create_task(lane.wait_ended(), name=turn.name)] = turn
            if not running:  # nothing may start and nothing runs: limits that allow nothing
                raise ValueError(f"limits {limits} let none of {len(pending)} migrations start")
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                turn = running.pop(task)
                if not task.cancelled() and task.exception() is not None:
                    log.warning("waiting for %s's migration: %s", turn.name, task.exception())
    finally:
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return released
