"""The migration model with its constants, the post-copy model, and the prediction result.json
sets beside what happened."""

from __future__ import annotations

from typing import Any

import pytest
from test_result import completed_document, preflight_with

from vmigrate.analysis.prediction import prediction_section
from vmigrate.migration.estimate import (
    PHYSICS,
    QEMU_BURST_MS,
    ModelConstants,
    postcopy_estimate,
    precopy_estimate,
)
from vmigrate.result import Result

MIB = 1024 * 1024


def test_a_guest_that_dirties_little_stops_at_the_end_of_pass_0() -> None:
    # 512 MiB at 100 MiB/s: 5.12 s, while the guest dirties 2 MiB/s → 10.24 MiB pending, which
    # fits in the 30 MiB budget: that is the pause. QEMU syncs at the start, after pass 0 and
    # in the stop: 3 iterations.
    est = precopy_estimate(512 * MIB, 2 * MIB, 100 * MIB, 300)
    assert est.passes == 1 and est.iterations == 3
    assert est.downtime_ms == pytest.approx(102.4)
    assert est.transferred_bytes == pytest.approx((512 + 10.24) * MIB)
    assert est.total_time_s == pytest.approx(5.2224)


@pytest.mark.parametrize("dirty_mib_s", [10, 30, 60, 90])
@pytest.mark.parametrize("limit_ms", [100, 300, 1000])
def test_with_passes_larger_than_the_budget_the_downtime_is_about_the_limit(
    dirty_mib_s: float, limit_ms: float
) -> None:
    # QEMU stops as soon as the pending bytes fit in B·limit, mid-pass: the pause holds the
    # budget less the undershoot (25 ms at B), plus what the guest dirtied in the last burst.
    est = precopy_estimate(2048 * MIB, dirty_mib_s * MIB, 100 * MIB, limit_ms)
    assert est.converges and est.passes and est.passes > 1 and est.downtime_ms is not None
    assert limit_ms - 25 < est.downtime_ms <= limit_ms


def test_the_bursts_shrink_by_the_dirty_rate_over_the_link() -> None:
    # D/B = 9/10: more bursts, each sending what the guest dirtied in the one before.
    slow = precopy_estimate(512 * MIB, 90 * MIB, 100 * MIB, 300)
    fast = precopy_estimate(512 * MIB, 50 * MIB, 100 * MIB, 300)
    assert slow.passes and fast.passes and slow.passes > fast.passes > 1
    assert slow.total_time_s and fast.total_time_s and slow.total_time_s > fast.total_time_s


def test_constants_shift_the_model_the_way_they_say() -> None:
    constants = ModelConstants(
        link_efficiency=0.5, full_page_share=0.5, dirty_rate_factor=2.0, pass_overhead_ms=10,
        stop_undershoot_ms=40, switchover_ms=20, device_state_bytes=1 * MIB,
    )  # fmt: skip
    # F = 512 of 1024 MiB; B = 50 MiB/s, D = 2 x 6.25 = 12.5: ratio 1/4; budget 15 MiB, the
    # undershoot 2 MiB: K = 13. Pass 0 sends 512 (128 dirtied), then bursts 128 - 13 = 115,
    # 28.75 and 7.1875; the last dirties 1.796875 ≤ 2: the pause holds 14.796875 MiB.
    est = precopy_estimate(1024 * MIB, 6.25 * MIB, 100 * MIB, 300, constants)
    assert est.passes == 4
    pause_s = (14.796875 + 1) / 50 + 0.020
    assert est.downtime_ms == pytest.approx(pause_s * 1000)
    bursts = 512 + 115 + 28.75 + 7.1875
    assert est.total_time_s == pytest.approx(bursts / 50 + 4 * 0.010 + pause_s)
    assert est.transferred_bytes == pytest.approx((bursts + 14.796875 + 1) * MIB)


def test_a_dirty_rate_floor_covers_what_the_measurement_misses() -> None:
    # Measured 0 (page sampling misses a sparse writer): one pass and no pause for the physics;
    # the floor of 10 MiB/s makes bursts: 500 MiB (50 dirtied), then down to K = 5 - 2.5:
    # 47.5, 4.75 MiB; the last dirties 0.475 MiB, which fits.
    assert precopy_estimate(500 * MIB, 0, 100 * MIB, 50).passes == 1
    est = precopy_estimate(500 * MIB, 0, 100 * MIB, 50, ModelConstants(dirty_rate_floor_mib_s=10))
    assert est.passes == 3
    assert est.downtime_ms == pytest.approx((2.5 + 0.475) / 100 * 1000)


def test_the_undershoot_is_at_most_half_the_budget() -> None:
    # A 20 ms limit at 100 MiB/s: a budget of 2 MiB, smaller than a 25 ms burst: QEMU's look
    # lands anywhere in it, K = 1 MiB on average. Pass 0 sends 100 MiB (20 dirtied), bursts 19
    # and 3.8 MiB; the last dirties 0.76 ≤ 1 MiB: the pause holds 1.76 MiB.
    est = precopy_estimate(100 * MIB, 20 * MIB, 100 * MIB, 20)
    assert est.passes == 3
    assert est.downtime_ms == pytest.approx(17.6)


def test_postcopy_pauses_only_for_the_device_state() -> None:
    constants = ModelConstants(switchover_ms=30, device_state_bytes=2 * MIB)
    est = postcopy_estimate(200 * MIB, 100 * MIB, constants)
    assert est.converges and est.passes == 0 and est.iterations == 2
    assert est.downtime_ms == pytest.approx(20 + 30)
    assert est.total_time_s == pytest.approx(2.02 + 0.05)
    assert est.transferred_bytes == pytest.approx(202 * MIB)


def test_only_the_full_pages_of_the_touched_memory_travel() -> None:
    # 10 % of the touched memory holds zeros: post-copy pulls 180 of 200 MiB, pre-copy's pass 0
    # sends 180 too.
    share = ModelConstants(full_page_share=0.9)
    post = postcopy_estimate(200 * MIB, 100 * MIB, share)
    assert post.transferred_bytes == pytest.approx(180 * MIB)
    assert post.total_time_s == pytest.approx(1.8)
    idle = precopy_estimate(200 * MIB, 0, 100 * MIB, 300, share)
    assert idle.passes == 1 and idle.transferred_bytes == pytest.approx(180 * MIB)


def test_constants_stored_before_the_new_fields_still_read_as_physics_there() -> None:
    old = (
        '{"link_efficiency": 0.9, "dirty_rate_factor": 0.5, "dirty_rate_floor_mib_s": 0.0, '
        '"pass_overhead_ms": 0.0, "switchover_ms": 3.0, "device_state_bytes": 0.0, '
        '"fitted_runs": 44}'
    )
    read = ModelConstants.model_validate_json(old)
    assert read.link_efficiency == 0.9 and read.fitted_runs == 44
    assert read.full_page_share == PHYSICS.full_page_share == 1.0
    assert read.stop_undershoot_ms == PHYSICS.stop_undershoot_ms == QEMU_BURST_MS / 2
    assert read.setup_ms == read.wrapup_ms == 0.0


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
