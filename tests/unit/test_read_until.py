"""Reading a child's pipe until enough is read, it closes, or time runs out — each end told."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from vmigrate.proc import ReadEnd, read_until


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):  # already closed by the test
            os.close(fd)


def test_reading_stops_once_enough_is_read(pipe: tuple[int, int]) -> None:
    os.write(pipe[1], b"starting\nREADY\nmore")
    seen, end = read_until(pipe[0], lambda seen: b"READY" in seen, 5)
    assert end is ReadEnd.ENOUGH
    assert b"READY" in seen


def test_a_closed_pipe_ends_reading_with_what_was_read(pipe: tuple[int, int]) -> None:
    os.write(pipe[1], b"partial")
    os.close(pipe[1])
    assert read_until(pipe[0], lambda seen: b"\n" in seen, 5) == (b"partial", ReadEnd.CLOSED)


def test_a_silent_pipe_times_out(pipe: tuple[int, int]) -> None:
    assert read_until(pipe[0], lambda seen: bool(seen), 0.05) == (b"", ReadEnd.TIMED_OUT)
