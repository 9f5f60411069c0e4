"""Asking QEMU what it knows, without a VM: a QEMU with `-machine none`, QMP over stdio, a
batch of commands in, their answers out, gone in a fraction of a second."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
from typing import Any

from vmigrate.errors import HypervisorError
from vmigrate.proc import in_netns

QEMU_BINARY = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 60.0
log = logging.getLogger(__name__)


def ask_qemu(
    accel: str, commands: list[tuple[str, dict[str, Any]]], netns: str | None = None
) -> list[Any]:
    """Run QMP commands in a machine-less QEMU under `accel` (on host `netns`, when given);
    their answers, in order. A QEMU that ends without answering them all (seen once in 700
    CI tests, three guests booting at once: no output at all) is asked once more."""
    try:
        return _ask_once(accel, commands, netns)
    except Unanswered as exc:
        log.warning("asking QEMU again: %s", exc)
        return _ask_once(accel, commands, netns)


class Unanswered(HypervisorError):
    """The probe QEMU ended without answering every command."""


def _ask_once(
    accel: str, commands: list[tuple[str, dict[str, Any]]], netns: str | None
) -> list[Any]:
    lines: list[dict[str, Any]] = [{"execute": "qmp_capabilities"}]
    lines += [
        {"execute": name, "arguments": args, "id": i} for i, (name, args) in enumerate(commands)
    ]
    lines.append({"execute": "quit"})
    argv = [QEMU_BINARY, "-machine", "none", "-accel", accel, "-nodefaults", "-no-user-config",
            "-display", "none", "-S", "-qmp", "stdio"]  # fmt: skip
    try:
        proc = subprocess.run(
            in_netns(netns, argv),
            input="".join(json.dumps(line) + "\n" for line in lines),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HypervisorError(f"cannot ask QEMU: {exc}") from exc
    answers: dict[int, Any] = {}
    for line in proc.stdout.splitlines():
        message = json.loads(line) if line.startswith("{") else {}
        if isinstance(message.get("id"), int):
            if "error" in message:
                raise HypervisorError(
                    f"QEMU refused {commands[message['id']][0]}: {message['error'].get('desc')}"
                )
            answers[message["id"]] = message["return"]
    if len(answers) != len(commands):
        said = proc.stderr.strip().splitlines()
        raise Unanswered(
            f"QEMU ({accel}) did not answer (exit status {proc.returncode}): "
            f"{said[-1] if said else 'no output'}"
        )
    return [answers[i] for i in range(len(commands))]


@functools.cache
def machine_types(accel: str, netns: str | None = None) -> dict[str, str]:
    """Every machine type QEMU offers (on host `netns`), each name and alias mapped to the
    versioned type it is (q35 → pc-q35-10.0; a versioned name maps to itself)."""
    listing = ask_qemu(accel, [("query-machines", {})], netns)[0]
    types = {str(m["name"]): str(m["name"]) for m in listing}
    types |= {str(m["alias"]): str(m["name"]) for m in listing if m.get("alias")}
    return types
