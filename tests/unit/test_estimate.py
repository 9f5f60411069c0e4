"""The migration model with its constants, the post-copy model, and the prediction result.json
sets beside what happened."""

from __future__ import annotations

from typing import Any

import pytest
from test_result import completed_document, preflight_with

from vmigrate.analysis.prediction import prediction_section
from vmigrate.migration.estimate import ModelConstants, postcopy_estimate, precopy_estimate
from vmigrate.result import Result

MIB = 1024 * 1024


def test_the_precopy_model_counts_bytes_and_qemus_iterations() -> None:
    # 512, 128, 32 MiB passes, then 8 MiB in the pause: 680 MiB; QEMU syncs 3 + 2 times.
    est = precopy_estimate(512 * MIB, 25 * MIB, 100 * MIB, 300)
    assert est.transferred_bytes == pytest.approx(680 * MIB)
    assert est.passes == 3 and est.iterations == 5


def test_constants_shift_the_model_the_way_they_say() -> None:
    constants = ModelConstants(
        link_efficiency=0.5, dirty_rate_factor=2.0, pass_overhead_ms=10, switchover_ms=20,
        device_state_bytes=1 * MIB,
    )  # fmt: skip
    # B = 50 MiB/s, D = 2 x 6.25 = 12.5 → ratio 1/4, budget 15 MiB: 512, 128, 32 then 8 fits.
    est = precopy_estimate(512 * MIB, 6.25 * MIB, 100 * MIB, 300, constants)
    assert est.passes == 3
    pause_s = (8 + 1) / 50 + 0.020
    assert est.downtime_ms == pytest.approx(pause_s * 1000)
    assert est.total_time_s == pytest.approx((512 + 128 + 32) / 50 + 3 * 0.010 + pause_s)
    assert est.transferred_bytes == pytest.approx((512 + 128 + 32 + 8 + 1) * MIB)


def test_a_dirty_rate_floor_covers_what_the_measurement_misses() -> None:
    # Measured 0 (page sampling misses a sparse writer); the floor of 10 MiB/s makes passes.
    est = precopy_estimate(500 * MIB, 0, 100 * MIB, 50, ModelConstants(dirty_rate_floor_mib_s=10))
    assert est.passes == 2  # 500 → 50 → 5 MiB fits in 5 MiB of budget


def test_postcopy_pauses_only_for_the_device_state() -> None:
    constants = ModelConstants(switchover_ms=30, device_state_bytes=2 * MIB)
    est = postcopy_estimate(200 * MIB, 100 * MIB, constants)
    assert est.converges and est.passes == 0 and est.iterations == 2
    assert est.downtime_ms == pytest.approx(20 + 30)
    assert est.total_time_s == pytest.approx(2.02 + 0.05)
    assert est.transferred_bytes == pytest.approx(202 * MIB)


def result_with(outcome: str, figures: dict[str, Any] | None) -> Result:
    document = completed_document()
    document["outcome"] = outcome
    document["preflight"] = preflight_with(cpu={}, **({"estimate": figures} if figures else {}))
    document["migration"].update(
        total_time_s=2.0, iterations=4, downtime_reported_ms=80.0, transferred_bytes=400 * MIB
    )
    return Result.model_validate(document)


FIGURES = {
    "model": "precopy", "calibrated_runs": 12, "converges": True, "dirty_rate_mib_s": 5.0,
    "bandwidth_mib_s": 110.0, "link_mbit_s": 950.0, "memory_bytes": 300 * MIB,
    "guest_ram_bytes": 512 * MIB, "downtime_limit_ms": 300, "predicted_total_time_s": 2.2,
    "predicted_iterations": 3, "predicted_downtime_ms": 95.0,
    "predicted_transferred_bytes": 380 * MIB,
}  # fmt: skip


def test_the_prediction_beside_what_happened() -> None:
    section = prediction_section(result_with("completed", FIGURES))
    assert section is not None
    assert section.calibrated_runs == 12 and section.inputs.dirty_rate_mib_s == 5.0
    assert section.predicted.total_time_s == 2.2 and section.actual.iterations == 4
    assert section.error.model_dump() == {
        "total_time_pct": pytest.approx(10.0),
        "transferred_pct": pytest.approx(-5.0),
        "downtime_ms": pytest.approx(15.0),
        "iterations": -1.0,
    }


def test_no_error_for_a_failed_migration_and_no_section_without_an_estimate() -> None:
    failed = prediction_section(result_with("failed", FIGURES))
    assert failed is not None and set(failed.error.model_dump().values()) == {None}
    assert prediction_section(result_with("completed", None)) is None
