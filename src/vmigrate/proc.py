"""Running external commands, optionally inside a network namespace, with errors that say why."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from vmigrate.errors import CommandFailed


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside network namespace `netns` (unchanged when None)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout_s: float = 120.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing text output; raise CommandFailed on non-zero exit."""
    full = in_netns(netns, argv)
    done = subprocess.run(
        full,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        input=input_text,
        check=False,
    )
    if check and done.returncode != 0:
        raise CommandFailed(full, done.returncode, done.stderr or done.stdout)
    return done
