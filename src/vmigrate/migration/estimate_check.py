"""The pre-flight estimate: the guest's dirty rate and the link's rate measured, the model
(migration/estimate.py, with the constants `vmigrate calibrate` fitted) asked what the
scenario's migration will take. Its figures are the prediction result.json sets beside what
happened (analysis/prediction.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from vmigrate.config import Scenario
from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import Domain
from vmigrate.measure.link import measure_link_bytes_s
from vmigrate.migration.estimate import (
    PHYSICS,
    Estimate,
    ModelConstants,
    full_pages,
    memory_to_send,
    postcopy_estimate,
    precopy_estimate,
)
from vmigrate.migration.preflight import Check
from vmigrate.paths import model_path
from vmigrate.testbed.network import Host
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)
DIRTY_RATE_SECONDS = 1
MIB = 1024 * 1024


def load_constants() -> ModelConstants:
    """The calibrated constants, or the plain physics when none were fitted (or unreadable)."""
    path = model_path()
    if not path.exists():
        return PHYSICS
    try:
        return ModelConstants.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        log.warning("ignoring the model constants in %s: %s", path, exc)
        return PHYSICS


def predict(
    scenario: Scenario,
    memory_bytes: float,
    dirty_bytes_s: float,
    bandwidth_bytes_s: float,
    constants: ModelConstants,
) -> Estimate:
    """The model for the scenario's strategy (post-copy switches at once)."""
    if scenario.migration.strategy == "postcopy":
        return postcopy_estimate(memory_bytes, bandwidth_bytes_s, constants)
    return precopy_estimate(
        memory_bytes, dirty_bytes_s, bandwidth_bytes_s, scenario.migration.downtime_limit_ms,
        constants,
    )  # fmt: skip


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def estimate_check(
    scenario: Scenario, source: Domain, testbed: Testbed, hosts: Mapping[str, Host] | None = None
) -> Check:
    """Predict the migration from the guest's measured dirty rate and the link's measured rate.
    `hosts`: the testbed hosts that play the VM's source and destination (None: those two)."""
    hosts = hosts or testbed.hosts
    try:
        dirty_mib_s = await source.measure_dirty_rate(DIRTY_RATE_SECONDS)
    except HypervisorError as exc:
        return Check("estimate", "warn", f"could not measure the dirty rate: {exc}", "")
    link = await asyncio.to_thread(
        measure_link_bytes_s,
        hosts["source"].netns,
        hosts["destination"].netns,
        hosts["destination"].ip,
    )
    cap = scenario.migration.max_bandwidth_mib_s * MIB
    bandwidth = min(link, cap) if cap else link
    ram = scenario.vm.memory_mib * MIB
    touched = await source.touched_memory_bytes()
    data = await source.data_memory_bytes()
    memory = memory_to_send(ram, touched, data)
    constants = load_constants()
    model = predict(scenario, memory, dirty_mib_s * MIB, bandwidth, constants)
    figures: dict[str, Any] = {
        "model": "postcopy" if scenario.migration.strategy == "postcopy" else "precopy",
        "calibrated_runs": constants.fitted_runs,
        "dirty_rate_mib_s": round(dirty_mib_s, 3),
        "link_mbit_s": round(link * 8 / 1e6, 3),
        "bandwidth_mib_s": round(bandwidth / MIB, 3),
        "guest_ram_bytes": ram,
        "touched_memory_bytes": touched,
        "data_memory_bytes": data,
        "memory_bytes": memory,
        "downtime_limit_ms": scenario.migration.downtime_limit_ms,
        "converges": model.converges,
        "predicted_passes": model.passes,
        "predicted_iterations": model.iterations,
        "predicted_total_time_s": _round(model.total_time_s, 3),
        "predicted_downtime_ms": _round(model.downtime_ms, 1),
        "predicted_transferred_bytes": _round(model.transferred_bytes, 0),
    }
    sent = full_pages(memory, constants)
    return _verdict(scenario, model, figures, dirty_mib_s, bandwidth, (sent, memory, ram))


def _verdict(
    scenario: Scenario,
    model: Estimate,
    figures: dict[str, Any],
    dirty_mib_s: float,
    bandwidth: float,
    memory: tuple[float, float, float],
) -> Check:
    """The check's status and words: a pre-copy that will not converge or overruns the
    timeout warns, when the strategy relies on pre-copy. `memory`: (full pages sent, the memory
    holding data (M), guest RAM) in bytes."""
    sent, held, ram = memory
    rates = (
        f"the guest dirties {dirty_mib_s:.1f} MiB/s, the migration gets {bandwidth / MIB:.1f} MiB/s"
    )
    strategy = scenario.migration.strategy
    relies_on_precopy = strategy in (
        "precopy",
        "xbzrle",
        "multifd",
    ) and scenario.migration.on_stall in ("none", "fail", "raise-downtime")
    if not model.converges:
        return Check(
            "estimate",
            "warn" if relies_on_precopy else "pass",
            f"pre-copy will not converge: {rates} (D ≥ B)"
            + (
                ""
                if relies_on_precopy
                else f"; {strategy} (on_stall {scenario.migration.on_stall}) does not need it"
            ),
            'use migration.strategy = "postcopy" or "auto-converge", or migration.on_stall = '
            '"postcopy" / "auto-converge", or give the migration more bandwidth'
            if relies_on_precopy
            else "",
            figures,
        )
    assert model.total_time_s is not None and model.downtime_ms is not None
    late = model.total_time_s > scenario.migration.timeout_s
    passes = f"in {model.passes} pass{'es' if model.passes != 1 else ''} " if model.passes else ""
    return Check(
        "estimate",
        "warn" if late and relies_on_precopy else "pass",
        f"{figures['model']} predicted to take {model.total_time_s:.1f} s {passes}with "
        f"{model.downtime_ms:.0f} ms downtime ({rates}; the first pass sends {sent / MIB:.0f} "
        f"MiB, the full pages of the {held / MIB:.0f} MiB of its {ram / MIB:.0f} MiB that hold "
        "data)",
        f"raise migration.timeout_s above {model.total_time_s:.0f} s" if late else "",
        figures,
    )
