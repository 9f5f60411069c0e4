"""The guest agent compiled for the host and run on loopback, for tests that need a real peer
without booting a VM (shared by the guest-image and client-tool tests)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.guest import image

AGENT_SOURCE = Path(image.__file__).with_name("agent.c")


def free_port(kind: int) -> int:
    """A port nothing listens on right now (TCP or UDP) on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_agent(workdir: Path, *options: str) -> Iterator[dict[str, int]]:
    """agent.c built with -Werror and started on free ports; yields {http, control, echo}."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    binary = workdir / "agent"
    subprocess.run(
        ["gcc", *image.AGENT_CFLAGS, "-Werror", "-o", str(binary), str(AGENT_SOURCE)],
        check=True,
        capture_output=True,
    )
    ports = {
        "http": free_port(socket.SOCK_STREAM),
        "control": free_port(socket.SOCK_STREAM),
        "echo": free_port(socket.SOCK_DGRAM),
    }
    proc = subprocess.Popen(
        [
            str(binary),
            f"--http-port={ports['http']}",
            f"--control-port={ports['control']}",
            f"--echo-port={ports['echo']}",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("VMIGRATE-AGENT-READY boot_id="), line + proc.stderr.read()
        yield ports
    finally:
        proc.kill()
        proc.wait(timeout=10)
