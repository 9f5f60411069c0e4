"""Fitting the model's constants: runs made by a known model are fitted back, the error falls,
bad input says what is wrong (and `vmigrate calibrate` stores what it fitted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_result import completed_document, preflight_with
from typer.testing import CliRunner

from vmigrate.cli import app
from vmigrate.errors import UsageError
from vmigrate.migration.calibration import Observation, fit, load_observations, score
from vmigrate.migration.estimate import PHYSICS, ModelConstants

MIB = 1024 * 1024
TRUTH = ModelConstants(link_efficiency=0.8, dirty_rate_factor=2.0, switchover_ms=30)


def made_by(constants: ModelConstants) -> list[Observation]:
    """Runs over memory sizes, dirty rates and links, as `constants` says they go."""
    runs = []
    for memory in (128, 256, 512):
        for dirty in (0, 5, 15):
            for link in (50, 110):
                obs = Observation(
                    run=f"m{memory}-d{dirty}-l{link}",
                    model="precopy",
                    memory_bytes=memory * MIB,
                    dirty_bytes_s=dirty * MIB,
                    bandwidth_bytes_s=link * MIB,
                    downtime_limit_ms=300,
                    total_time_s=1.0,
                    transferred_bytes=1.0,
                    downtime_ms=0.0,
                    iterations=0,
                    downtime_bytes=None,
                )
                est = obs.predict(constants)
                assert est.total_time_s and est.transferred_bytes and est.downtime_ms is not None
                runs.append(
                    Observation(
                        **{
                            **obs.__dict__,
                            "total_time_s": est.total_time_s,
                            "transferred_bytes": est.transferred_bytes,
                            "downtime_ms": est.downtime_ms,
                        }
                    )
                )
    return runs


def test_the_fit_finds_the_constants_that_made_the_runs() -> None:
    runs = made_by(TRUTH)
    assert score(runs, PHYSICS) > 0.2  # the plain physics is far off these runs
    fitted = fit(runs)
    assert fitted.link_efficiency == pytest.approx(0.8, rel=0.1)
    assert fitted.dirty_rate_factor == 2.0 and fitted.fitted_runs == len(runs)
    assert score(runs, fitted) < 0.05


def result_json(outcome: str, total_s: float) -> dict[str, Any]:
    document = completed_document()
    document["outcome"] = outcome
    document["preflight"] = preflight_with(
        estimate={
            "model": "precopy",
            "memory_bytes": 256 * MIB,
            "dirty_rate_mib_s": 0.0,
            "bandwidth_mib_s": 100.0,
            "downtime_limit_ms": 300,
        }
    )
    document["migration"].update(
        total_time_s=total_s,
        transferred_bytes=256 * MIB,
        downtime_reported_ms=20.0,
        iterations=3,
    )
    document["data"]["downtime_bytes"] = 1 * MIB
    return document


def sweep_dir(path: Path, results: dict[str, dict[str, Any]]) -> Path:
    for name, result in results.items():
        (path / "runs" / name).mkdir(parents=True)
        (path / "runs" / name / "result.json").write_text(json.dumps(result))
    return path


def test_only_completed_runs_with_an_estimate_are_observations(tmp_path: Path) -> None:
    found = load_observations(
        sweep_dir(
            tmp_path,
            {
                "a": result_json("completed", 3.2),
                "b": result_json("failed", 9.0),
                "c": {"outcome": "completed", "migration": {}},  # not a result: left out
            },
        )
    )
    assert [o.run for o in found] == ["a"]
    assert found[0].downtime_bytes == 1 * MIB and found[0].bandwidth_bytes_s == 100 * MIB


def test_a_directory_without_runs_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="holds no runs"):
        load_observations(tmp_path)
    with pytest.raises(UsageError, match="none of its 1 runs"):
        load_observations(sweep_dir(tmp_path / "s", {"b": result_json("failed", 1.0)}))


def test_calibrate_stores_the_constants_run_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.json"
    monkeypatch.setenv("VMIGRATE_MODEL", str(model))
    runs = sweep_dir(
        tmp_path / "s", {f"r{i}": result_json("completed", 3.2 + i / 10) for i in range(4)}
    )
    done = CliRunner().invoke(app, ["calibrate", str(runs), "--check", str(runs)])
    assert done.exit_code == 0, done.output
    assert "held out" in done.output and "calibrated" in done.output
    stored = ModelConstants.model_validate_json(model.read_text())
    # bytes / time / link, the median over runs of 3.2 to 3.5 s: 256 MiB over a 100 MiB/s link
    assert stored.fitted_runs == 4 and stored.link_efficiency == pytest.approx(0.7643, abs=1e-3)
    from vmigrate.migration.estimate_check import load_constants

    assert load_constants() == stored
    missing = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "holds no runs" in missing.output
