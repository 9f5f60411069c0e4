"""The console every bench prints through. On a terminal rich fits its window; written to a
file or a pipe (`make bench > bench.txt`) rich would take the width of whatever terminal
stdin or stderr is on, or $COLUMNS, or 80 columns, and cut the tables' cells to "…". There
it is FILE_COLUMNS wide instead, so every table prints whole."""

from __future__ import annotations

from typing import IO

from rich.console import Console

#: The width off a terminal: more than the widest bench table needs (the planner's, ~140).
FILE_COLUMNS = 200


def bench_console(file: IO[str] | None = None) -> Console:
    """A console on `file` (default stdout): the window's width on a terminal, else
    FILE_COLUMNS (a narrower table is printed at its own width, not padded). Whether the
    stream is a terminal is asked of the stream itself: rich's `is_terminal` is also true of
    a file when FORCE_COLOR or TTY_COMPATIBLE=1 asks for colour there."""
    console = Console(file=file)
    isatty = getattr(console.file, "isatty", None)
    if not (isatty is not None and isatty()):
        console.width = FILE_COLUMNS
    return console
