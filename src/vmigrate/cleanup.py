"""Cleanup that cannot be skipped: every step of an undo runs, whatever the step before it did,
and what a step could not do is logged (to the run's vmigrate.log), never silently dropped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Awaitable[object]]]


async def each(steps: list[Step], why: str) -> list[str]:
    """Run every step in order; a step that raises (an Exception) is logged and the next one
    runs all the same. Returns "step: error" for each step that failed."""
    failed = []
    for name, step in steps:
        try:
            await step()
        except Exception as exc:
            log.warning("%s, %s failed: %s", why, name, exc)
            failed.append(f"{name}: {exc}")
    return failed
