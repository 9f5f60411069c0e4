"""Cleanup steps: every one runs, whatever the one before did; failures are logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vmigrate.cleanup import Step, each


def test_a_failing_step_does_not_skip_the_next_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def step(name: str, fails: bool) -> Step:
        async def body() -> None:
            ran.append(name)
            if fails:
                raise RuntimeError(f"{name} broke")

        return name, body

    steps = [step("cancel", True), step("conclude", True), step("resume", False)]
    with caplog.at_level(logging.WARNING, logger="vmigrate"):
        failed = asyncio.run(each(steps, "after a failed migration"))
    assert ran == ["cancel", "conclude", "resume"]
    assert failed == ["cancel: cancel broke", "conclude: conclude broke"]
    assert "after a failed migration, cancel failed: cancel broke" in caplog.text
    assert "conclude failed" in caplog.text
