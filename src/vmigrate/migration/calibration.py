"""Fitting the model's constants to measured runs (`vmigrate calibrate SWEEP_DIR`).

Each completed run whose pre-flight estimate ran is one observation: what the estimate measured
(memory holding data, dirty rate, link rate, downtime limit) and what the migration did (total time,
bytes, downtime, iterations). Each constant is fitted on what it explains:
- the link efficiency straight from the runs (bytes / time against the measured link);
- the switch-over's fixed cost from the downtime the RAM sent in the stop does not explain;
- the share of the memory holding data sent as full pages, the dirty-rate factor and floor and the
  per-pass cost together, by a grid search (the share in steps of 0.02, then refined to 0.01
  alone) that minimises the median relative error on total time and bytes of each strategy's
  runs, summed — so post-copy runs, which send each page once, pin the share, and pre-copy
  runs alone find it too;
- last the stop's undershoot, by a line search on the median downtime error of the pre-copy
  runs the model stops mid-pass (the only ones it moves);
- what a migration costs around its stream, as medians of the runs' moments: the destination's
  preparation before it, and the time from the hypervisor's end to the run's (a drain's slot).
Every grid starts at the plain physics and a tie goes to it. Small, explainable,
deterministic, and measured against held-out runs (`--check`), not against the runs it was
fitted on.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmigrate.analysis.prediction import estimate_figures
from vmigrate.errors import UsageError
from vmigrate.migration.estimate import (
    PHYSICS,
    Estimate,
    ModelConstants,
    postcopy_estimate,
    precopy_estimate,
)
from vmigrate.migration.orchestrator import Outcome
from vmigrate.result import Result, load_result

log = logging.getLogger(__name__)
MIB = 1024 * 1024
# The grids, each from the plain physics outwards (a tie goes to the first).
DIRTY_FACTORS = (1.0, 0.75, 1.25, 0.5, 1.5, 2.0, 3.0, 4.0)
DIRTY_FLOORS_MIB_S = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
PASS_OVERHEADS_MS = (0.0, 5.0, 10.0, 20.0, 50.0)
FULL_PAGE_SHARES = tuple(round(1.0 - step / 100, 2) for step in range(51))  # 1.00 … 0.50
COARSE_SHARES = FULL_PAGE_SHARES[::2]  # in the joint grid; refined alone after
UNDERSHOOTS_MS = tuple(5.0 * step for step in range(21))  # 0 … 100 ms


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
    setup_ms: float | None = None  # destination_prepare → migration_start (None: not marked)
    wrapup_ms: float | None = None  # migration_start → migration_end beyond the total time

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
            **_around_the_stream(result),
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: not an observation: %s", run, exc)
        return None


def _around_the_stream(result: Result) -> dict[str, float | None]:
    """setup_ms and wrapup_ms from the run's moments (None where one is not marked)."""
    at = result.timeline_s
    start, end = at.get("migration_start"), at.get("migration_end")
    prepare, total_s = at.get("destination_prepare"), result.migration.total_time_s
    setup = None if start is None or prepare is None else 1000 * (start - prepare)
    wrapup = None
    if start is not None and end is not None and total_s is not None:
        wrapup = 1000 * (end - start - total_s)
    return {
        "setup_ms": None if setup is None else max(setup, 0.0),
        "wrapup_ms": None if wrapup is None else max(wrapup, 0.0),
    }


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


def downtime_score(observations: Iterable[Observation], constants: ModelConstants) -> float:
    """Median over runs of |downtime error| in ms (runs the model says never end: left out)."""
    errors = []
    for obs in observations:
        est = obs.predict(constants)
        if est.downtime_ms is not None:
            errors.append(abs(est.downtime_ms - obs.downtime_ms))
    return statistics.median(errors) if errors else float("inf")


def strategy_score(observations: Iterable[Observation], constants: ModelConstants) -> float:
    """`score` of each strategy's runs, summed: every strategy counts alike, whatever the
    sweep's mix."""
    groups: dict[str, list[Observation]] = {}
    for obs in observations:
        groups.setdefault(obs.model, []).append(obs)
    return sum(score(group, constants) for group in groups.values())


def fit(observations: Sequence[Observation]) -> ModelConstants:
    """The constants that fit `observations` best (see the module's docstring)."""
    if not observations:
        raise UsageError("no runs to fit the model to")
    efficiency = statistics.median(
        o.transferred_bytes / o.total_time_s / o.bandwidth_bytes_s for o in observations
    )
    efficiency = min(max(efficiency, 0.05), 2.0)
    start = ModelConstants(
        link_efficiency=efficiency, switchover_ms=_switchover_ms(observations, efficiency),
        setup_ms=_median_of(o.setup_ms for o in observations) or PHYSICS.setup_ms,
        wrapup_ms=_median_of(o.wrapup_ms for o in observations) or PHYSICS.wrapup_ms,
        fitted_runs=len(observations),
    )  # fmt: skip
    grid = (
        start.model_copy(
            update={
                "full_page_share": share,
                "dirty_rate_factor": factor,
                "dirty_rate_floor_mib_s": floor,
                "pass_overhead_ms": per_pass,
            }
        )
        for share, factor, floor, per_pass in itertools.product(
            COARSE_SHARES, DIRTY_FACTORS, DIRTY_FLOORS_MIB_S, PASS_OVERHEADS_MS
        )
    )
    coarse = _first_best(observations, grid, strategy_score)
    constants = _first_best(
        observations,
        (coarse.model_copy(update={"full_page_share": s}) for s in _near(coarse.full_page_share)),
        strategy_score,
    )
    midpass = [
        o for o in observations if o.model != "postcopy" and (o.predict(constants).passes or 0) > 1
    ]
    if midpass:  # the runs the model stops mid-pass: the only downtimes the undershoot moves
        physics = PHYSICS.stop_undershoot_ms
        constants = _first_best(
            midpass,
            (
                constants.model_copy(update={"stop_undershoot_ms": u})
                for u in sorted(UNDERSHOOTS_MS, key=lambda u: abs(u - physics))
            ),
            downtime_score,
        )
    return constants


def _near(share: float) -> list[float]:
    """A coarse share and its fine neighbours (the one nearer the physics first)."""
    i = FULL_PAGE_SHARES.index(share)
    return [share, *FULL_PAGE_SHARES[max(i - 1, 0) : i], *FULL_PAGE_SHARES[i + 1 : i + 2]]


def _median_of(values: Iterable[float | None]) -> float | None:
    """The median of the values measured (None: none was)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _switchover_ms(observations: Sequence[Observation], efficiency: float) -> float:
    """The median downtime the RAM sent in the stop does not explain. Post-copy stops with no
    RAM; a pre-copy run whose backend does not say what went in its stop is left out (it would
    count the whole pause as fixed cost); none left: the physics' 0."""
    leftover = [
        o.downtime_ms - 1000 * (o.downtime_bytes or 0.0) / (o.bandwidth_bytes_s * efficiency)
        for o in observations
        if o.downtime_bytes is not None or o.model == "postcopy"
    ]
    return max(0.0, statistics.median(leftover)) if leftover else PHYSICS.switchover_ms


def _first_best(
    observations: Sequence[Observation],
    candidates: Iterable[ModelConstants],
    judge: Callable[[Iterable[Observation], ModelConstants], float],
) -> ModelConstants:
    """The candidate `judge` scores lowest; of equals, the first (the candidates come from the
    physics outwards)."""
    best: tuple[float, ModelConstants] | None = None
    for candidate in candidates:
        value = judge(observations, candidate)
        if best is None or value < best[0] - 1e-12:
            best = (value, candidate)
    assert best is not None
    return best[1]
