"""Fitting the model's constants: runs made by a known model are fitted back, the error falls,
bad input says what is wrong (and `vmigrate calibrate` stores what it fitted)."""

from __future__ import annotations

import dataclasses
import itertools
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
from vmigrate.report.calibration import by_strategy, median_errors

MIB = 1024 * 1024
TRUTH = ModelConstants(
    link_efficiency=0.8, full_page_share=0.85, dirty_rate_factor=2.0, stop_undershoot_ms=40,
    switchover_ms=30,
)  # fmt: skip


def made_by(
    constants: ModelConstants, models: tuple[str, ...] = ("precopy", "postcopy")
) -> list[Observation]:
    """Runs over memory sizes, dirty rates and links, as `constants` says they go (with what
    went in the stop when the model says so: its pause less the fixed cost, at the stream)."""
    runs = []
    for model, memory, dirty, link in itertools.product(
        models, (128, 256, 512), (0, 5, 15), (50, 110)
    ):
        obs = Observation(
            run=f"{model}-m{memory}-d{dirty}-l{link}",
            model=model,
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
        stream = link * MIB * constants.link_efficiency
        stop = (est.downtime_ms - constants.switchover_ms) / 1000 * stream
        runs.append(
            dataclasses.replace(
                obs,
                total_time_s=est.total_time_s,
                transferred_bytes=est.transferred_bytes,
                downtime_ms=est.downtime_ms,
                downtime_bytes=stop if model == "precopy" else None,
            )
        )
    return runs


def test_the_fit_finds_the_constants_that_made_the_runs() -> None:
    runs = made_by(TRUTH)
    assert score(runs, PHYSICS) > 0.2  # the plain physics is far off these runs
    fitted = fit(runs)
    assert fitted.link_efficiency == pytest.approx(0.8, rel=0.1)
    assert fitted.dirty_rate_factor == 2.0 and fitted.fitted_runs == len(runs)
    assert fitted.full_page_share == pytest.approx(0.85, abs=0.011)
    assert fitted.switchover_ms == pytest.approx(30, abs=1)
    assert fitted.stop_undershoot_ms == pytest.approx(40, abs=5)
    assert score(runs, fitted) < 0.05
    assert median_errors(runs, fitted)[2] == pytest.approx(0, abs=5)  # downtime, ms


def test_post_copy_runs_alone_pin_the_full_page_share_and_leave_the_rest_physics() -> None:
    runs = made_by(ModelConstants(full_page_share=0.9), models=("postcopy",))
    fitted = fit(runs)
    assert fitted.full_page_share == 0.9 and fitted.link_efficiency == pytest.approx(1.0)
    assert score(runs, fitted) == pytest.approx(0, abs=1e-9)
    for name in ("dirty_rate_factor", "dirty_rate_floor_mib_s", "pass_overhead_ms",
                 "stop_undershoot_ms"):  # fmt: skip
        assert getattr(fitted, name) == getattr(PHYSICS, name), name


def test_pre_copy_runs_alone_find_the_share_too() -> None:
    truth = ModelConstants(full_page_share=0.8, dirty_rate_factor=1.5)
    fitted = fit(made_by(truth, models=("precopy",)))
    assert fitted.full_page_share == pytest.approx(0.8, abs=0.011)
    assert fitted.dirty_rate_factor == 1.5


def test_runs_that_do_not_say_what_went_in_the_stop_do_not_count_as_switch_over() -> None:
    # Without the stop's bytes the whole pause would count as fixed cost.
    runs = [dataclasses.replace(o, downtime_bytes=None) for o in made_by(TRUTH, ("precopy",))]
    assert fit(runs).switchover_ms == PHYSICS.switchover_ms


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


def test_the_cost_around_the_stream_is_the_median_of_the_runs_moments(tmp_path: Path) -> None:
    results = {}
    for name, (prepare_s, end_s) in {"a": (0.3, 3.4), "b": (0.1, 3.3), "c": (0.2, 3.5)}.items():
        results[name] = result_json("completed", 3.2)  # QEMU's 3.2 s of the run's 3.3 … 3.5
        results[name]["timeline_s"] = {
            "destination_prepare": 1.0 - prepare_s, "migration_start": 1.0,
            "migration_end": 1.0 + end_s,
        }  # fmt: skip
    results["d"] = result_json("completed", 3.2)  # an older run: no moments around it
    found = load_observations(sweep_dir(tmp_path, results))
    assert [(o.setup_ms, o.wrapup_ms) for o in found] == [
        (pytest.approx(300), pytest.approx(200)),
        (pytest.approx(100), pytest.approx(100)),
        (pytest.approx(200), pytest.approx(300)),
        (None, None),
    ]
    fitted = fit(found)
    assert fitted.setup_ms == pytest.approx(200) and fitted.wrapup_ms == pytest.approx(200)
    # Runs that marked neither leave the physics' none.
    assert fit(found[3:]).setup_ms == fit(found[3:]).wrapup_ms == 0.0


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


def test_the_error_table_splits_a_mixed_run_set_by_strategy() -> None:
    runs = made_by(TRUTH)
    split = by_strategy([("fitted on", runs), ("held out", runs[:3])])
    assert [(name, len(obs)) for name, obs in split] == [
        ("fitted on", 36),
        ("fitted on, post-copy", 18),
        ("fitted on, pre-copy", 18),
        ("held out", 3),  # one strategy only: no split
    ]
