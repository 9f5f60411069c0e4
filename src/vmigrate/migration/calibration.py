"""Fitting the model's constants to measured runs (`vmigrate calibrate SWEEP_DIR`).

Each completed run whose pre-flight estimate ran is one observation: what the estimate measured
(touched memory, dirty rate, link rate, downtime limit) and what the migration did (total time,
bytes, downtime, iterations). The link efficiency comes straight from the runs (bytes / time
against the measured link); the switch-over's fixed cost from the downtime the final data does
not explain; the rest — the dirty-rate factor and floor and the per-pass cost — by a grid search
that minimises the median relative error on total time and bytes. Small, explainable, and
measured against held-out runs (`--check`), not against the runs it was fitted on.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmigrate.analysis.prediction import estimate_figures
from vmigrate.errors import UsageError
from vmigrate.migration.estimate import (
    Estimate,
    ModelConstants,
    postcopy_estimate,
    precopy_estimate,
)
from vmigrate.migration.orchestrator import Outcome
from vmigrate.result import Result, load_result

log = logging.getLogger(__name__)
MIB = 1024 * 1024
DIRTY_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
DIRTY_FLOORS_MIB_S = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
PASS_OVERHEADS_MS = (0.0, 5.0, 10.0, 20.0, 50.0)


@dataclass(frozen=True)
class Observation:
    """One measured migration: the estimate's inputs and what happened."""

    run: str
    model: str  # precopy | postcopy
    memory_bytes: float
    dirty_bytes_s: float
    bandwidth_bytes_s: float
    downtime_limit_ms: float
    total_time_s: float
    transferred_bytes: float
    downtime_ms: float
    iterations: int
    downtime_bytes: float | None  # what QEMU sent in the stop (None: the backend does not say)

    def predict(self, constants: ModelConstants) -> Estimate:
        if self.model == "postcopy":
            return postcopy_estimate(self.memory_bytes, self.bandwidth_bytes_s, constants)
        return precopy_estimate(
            self.memory_bytes, self.dirty_bytes_s, self.bandwidth_bytes_s,
            self.downtime_limit_ms, constants,
        )  # fmt: skip


def observation(run: str, result: Result) -> Observation | None:
    """The observation a result.json makes (None: not completed, or no estimate ran)."""
    figures = estimate_figures(result)
    migration = result.migration
    if result.outcome != Outcome.COMPLETED or figures is None:
        return None
    try:
        return Observation(
            run=run,
            model=str(figures.get("model", "precopy")),
            memory_bytes=float(figures["memory_bytes"]),
            dirty_bytes_s=float(figures["dirty_rate_mib_s"]) * MIB,
            bandwidth_bytes_s=float(figures["bandwidth_mib_s"]) * MIB,
            downtime_limit_ms=float(figures["downtime_limit_ms"]),
            total_time_s=float(_known(migration.total_time_s)),
            transferred_bytes=float(migration.transferred_bytes),
            downtime_ms=float(_known(migration.downtime_reported_ms)),
            iterations=migration.iterations,
            downtime_bytes=float(result.data.downtime_bytes)
            if result.data.downtime_bytes
            else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: not an observation: %s", run, exc)
        return None


def _known(value: float | None) -> float:
    """A figure the observation needs. :raise ValueError: the run did not measure it."""
    if value is None:
        raise ValueError("a figure the model is judged on is missing")
    return value


def load_observations(sweep_dir: Path) -> list[Observation]:
    """Every observation of SWEEP_DIR/runs/*/result.json.

    :raise UsageError: no such directory, or not one usable run in it."""
    runs = sorted((sweep_dir / "runs").glob("*/result.json"))
    if not runs:
        raise UsageError(
            f"{sweep_dir} holds no runs (runs/*/result.json): give a sweep's directory, "
            "e.g. `vmigrate sweep examples/calibration.toml` → sweeps/calibration"
        )
    found = []
    for path in runs:
        try:
            result = load_result(path)
        except UsageError as exc:
            log.warning("%s", exc)
            continue
        if (obs := observation(path.parent.name, result)) is not None:
            found.append(obs)
    if not found:
        raise UsageError(
            f"{sweep_dir}: none of its {len(runs)} runs completed with a pre-flight estimate "
            "(runs with --skip-preflight have none)"
        )
    return found


def relative_errors(obs: Observation, constants: ModelConstants) -> tuple[float, float] | None:
    """(total time, bytes) relative errors of the model on one run (None: no prediction)."""
    est = obs.predict(constants)
    if est.total_time_s is None or est.transferred_bytes is None:
        return None
    return (
        (est.total_time_s - obs.total_time_s) / obs.total_time_s,
        (est.transferred_bytes - obs.transferred_bytes) / obs.transferred_bytes,
    )


def score(observations: Iterable[Observation], constants: ModelConstants) -> float:
    """Median over runs of |time error| + |bytes error| (a run the model says never ends
    counts as 100 % off on both)."""
    errors = []
    for obs in observations:
        found = relative_errors(obs, constants)
        errors.append(2.0 if found is None else abs(found[0]) + abs(found[1]))
    return statistics.median(errors) if errors else float("inf")


def fit(observations: Sequence[Observation]) -> ModelConstants:
    """The constants that fit `observations` best (see the module's docstring)."""
    if not observations:
        raise UsageError("no runs to fit the model to")
    efficiency = statistics.median(
        o.transferred_bytes / o.total_time_s / o.bandwidth_bytes_s for o in observations
    )
    efficiency = min(max(efficiency, 0.05), 2.0)
    stream = {o.run: o.bandwidth_bytes_s * efficiency for o in observations}
    leftover = [o.downtime_ms - 1000 * (o.downtime_bytes or 0.0) / stream[o.run]
                for o in observations]  # fmt: skip
    switchover = max(0.0, statistics.median(leftover))
    best: tuple[float, ModelConstants] | None = None
    for factor, floor, per_pass in itertools.product(
        DIRTY_FACTORS, DIRTY_FLOORS_MIB_S, PASS_OVERHEADS_MS
    ):
        candidate = ModelConstants(
            link_efficiency=efficiency, dirty_rate_factor=factor, dirty_rate_floor_mib_s=floor,
            pass_overhead_ms=per_pass, switchover_ms=switchover,
            fitted_runs=len(observations),
        )  # fmt: skip
        value = score(observations, candidate)
        if best is None or value < best[0] - 1e-12:
            best = (value, candidate)
    assert best is not None
    return best[1]
