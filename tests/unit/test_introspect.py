"""Asking a machine-less QEMU, against a fake QEMU that speaks QMP over its stdio: the answers
are read before it is told to quit, a probe that ends without answers is asked once more and
says how it ended when it fails again, and a probe that refuses a command is not left running."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from vmigrate.errors import HypervisorError
from vmigrate.hypervisor import introspect

# Like QEMU: a greeting, then requests read a chunk at a time; the chunk's answers are written
# after the whole chunk is handled, so a `quit` in it ends QEMU before they are written (QEMU
# drops what it has not yet flushed to a slow reader). Standard input's end does not end it.
FAKE_QEMU = """\
import json, os, signal, sys, time
from pathlib import Path

mode = sys.argv[1]
runs = Path(sys.argv[0] + ".runs")
run = int(runs.read_text()) if runs.exists() else 0
runs.write_text(str(run + 1))
if mode == "dies" or (mode == "dies-once" and run == 0):
    os.kill(os.getpid(), signal.SIGKILL)
print(json.dumps({"QMP": {"version": {}}}), flush=True)
pending = b""
while chunk := os.read(0, 65536):
    pending += chunk
    *lines, pending = pending.split(b"\\n")
    answers = []
    for line in lines:
        request = json.loads(line)
        if request["execute"] == "quit":
            sys.exit(0)
        if mode == "refuses" and "id" in request:
            answers.append({"error": {"desc": "no such thing"}, "id": request["id"]})
        else:
            answers.append({"return": {"name": request["execute"]}, "id": request.get("id")})
    sys.stdout.write("".join(json.dumps(a) + "\\n" for a in answers))
    sys.stdout.flush()
time.sleep(600)
"""


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake QEMU binary that behaves as its first argument (the accelerator) says."""
    script = tmp_path / "qemu"
    script.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    script.chmod(0o755)
    monkeypatch.setattr(introspect, "QEMU_BINARY", str(script))
    monkeypatch.setattr(introspect, "in_netns", lambda _netns, argv: [argv[0], argv[4]])
    return script


def runs(script: Path) -> int:
    return int(Path(f"{script}.runs").read_text())


def test_the_answers_are_read_before_qemu_is_told_to_quit(fake_qemu: Path) -> None:
    answers = introspect.ask_qemu("answers", [("query-a", {}), ("query-b", {})])
    assert answers == [{"name": "query-a"}, {"name": "query-b"}]
    assert runs(fake_qemu) == 1


def test_a_probe_that_ended_without_answers_is_asked_once_more(fake_qemu: Path) -> None:
    assert introspect.ask_qemu("dies-once", [("query-name", {})]) == [{"name": "query-name"}]
    assert runs(fake_qemu) == 2


def test_a_probe_that_fails_twice_says_how_it_ended(fake_qemu: Path) -> None:
    with pytest.raises(HypervisorError, match=r"did not answer \(exit status -9\): no output"):
        introspect.ask_qemu("dies", [("query-name", {})])
    assert runs(fake_qemu) == 2


def test_a_refused_command_says_which_and_the_probe_is_not_left_running(
    fake_qemu: Path,
) -> None:
    started = time.monotonic()
    with pytest.raises(HypervisorError, match="QEMU refused query-name: no such thing"):
        introspect.ask_qemu("refuses", [("query-name", {})])
    assert time.monotonic() - started < 30  # the fake would sleep 600 s unless killed
