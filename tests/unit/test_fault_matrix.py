"""The fault sweep's table: every run counts (a fault's point is the runs that fail)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_result import completed_document

from vmigrate.report.fault_matrix import fault_cells, is_fault_sweep, write_fault_matrix


def result(outcome: str, on: str, intact: bool, outage: float, recovery: float) -> dict[str, Any]:
    document = completed_document()
    document["outcome"] = outcome
    document["verification"]["running_on"] = on
    document["fault"] = {
        "kind": "kill-source", "at": "40%", "duration_ms": 0, "injected": True,
        "injected_at_s": 12.0, "injected_after_migration_start_s": 1.0, "undone_at_s": None,
        "actions": ["fault: SIGKILL"], "error": None, "vm_ends_on": on, "intact": intact,
        "service_outage_ms": outage, "recovery_ms": recovery,
    }  # fmt: skip
    return document


def baseline() -> dict[str, Any]:
    """A run of the no-fault cell: intact, its outage the migration's own."""
    document = completed_document()
    document["verification"].update(
        running_on="destination",
        memory_checksum_ok=True,
        memory_writes_intact=True,
        disk_checksum_ok=True,
    )
    document["service"]["observed_downtime_ms"] = 120.0
    return document


def sweep_dir(tmp_path: Path) -> Path:
    runs = {
        "kill": [result("failed", "source", True, 10, 100),
                 result("failed", "source", True, 30, 300),
                 result("vm_lost", "none", False, 5000, 50)],
        "none": [baseline()],
    }  # fmt: skip
    cells = []
    for label, results in runs.items():
        run_list = []
        for i, res in enumerate(results):
            run_dir = tmp_path / "runs" / f"{label}-{i}"
            run_dir.mkdir(parents=True)
            (run_dir / "result.json").write_text(json.dumps(res))
            run_list.append({"run_dir": f"runs/{label}-{i}"})
        run_list.append({"run_dir": "runs/crashed"})  # no result.json: not counted
        cells.append({"label": label, "run_list": run_list})
    summary = {"axes": ["fault", "migration.strategy"], "cells": cells}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_every_run_counts_and_the_baseline_uses_its_own_checks(tmp_path: Path) -> None:
    path = sweep_dir(tmp_path)
    assert is_fault_sweep(path)
    kill, none = fault_cells(path)
    assert kill.row() == ["kill", "2 failed, 1 vm_lost", "2 source, 1 none", "2/3", "30", "100"]
    assert none.row() == ["none", "1 completed", "1 destination", "1/1", "120", "—"]
    _, markdown = write_fault_matrix(path)
    assert "| kill | 2 failed, 1 vm_lost |" in markdown.read_text()


def test_a_sweep_refuses_to_kill_itself(tmp_path: Path) -> None:
    import pytest

    from vmigrate.errors import ScenarioError
    from vmigrate.sweep.plan import load_sweep

    path = tmp_path / "s.toml"
    path.write_text("[matrix]\nfault = [{ kind = 'none' }, { kind = 'kill-vmigrate' }]\n")
    with pytest.raises(ScenarioError, match="would kill the sweep itself"):
        load_sweep(path)
