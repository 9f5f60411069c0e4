"""The testbed state file: records survive a reader in another process, teardown removes all."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vmigrate.pids import is_same_process, process_start_ticks
from vmigrate.testbed.state import Resource, StateFile, tear_down


def test_resources_round_trip_and_forget(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    state.add_path(tmp_path / "a")
    state.add_process(1, "init")
    state.set_facts(bandwidth_mbit=100.0)
    again = StateFile(tmp_path / "state.json")
    kinds = [(r.kind, r.name) for r in again.resources()]
    assert kinds == [("path", str(tmp_path / "a")), ("process", "init")]
    assert again.facts() == {"bandwidth_mbit": 100.0}
    again.forget_process(1)
    assert [r.kind for r in state.resources()] == ["path"]


def test_teardown_kills_recorded_processes_and_removes_paths(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    victim = subprocess.Popen(["sleep", "60"])
    state.add_process(victim.pid, "sleeper")
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "f").write_text("x")
    state.add_path(directory)
    assert tear_down(state) == []
    assert victim.poll() is not None
    assert not directory.exists()


def test_a_reused_pid_is_not_killed(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        ticks = process_start_ticks(bystander.pid)
        assert ticks is not None
        state = StateFile(tmp_path / "state.json")
        # Recorded with another start time: it is not the process we started.
        state.add(Resource("process", "old", pid=bystander.pid, start_ticks=ticks - 1))
        assert not is_same_process(bystander.pid, ticks - 1)
        assert tear_down(state) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
