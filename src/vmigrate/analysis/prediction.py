"""What the model predicted beside what happened: the pre-flight estimate's figures (its
inputs and predictions) against the migration's own, and the error of each — the ground
`vmigrate calibrate` fits the model's constants on."""

from __future__ import annotations

from typing import Any

from vmigrate.analysis.windows import finite_or_none
from vmigrate.result.document import Recorded
from vmigrate.result.prediction import Figures, Prediction, PredictionError, PredictionInputs

#: predicted figure in the estimate check → the migration's own figure, as result.json names them
COMPARED = (
    ("total_time_s", "predicted_total_time_s", "total_time_s"),
    ("iterations", "predicted_iterations", "iterations"),
    ("downtime_ms", "predicted_downtime_ms", "downtime_reported_ms"),
    ("transferred_bytes", "predicted_transferred_bytes", "transferred_bytes"),
)
INPUTS = ("dirty_rate_mib_s", "bandwidth_mib_s", "link_mbit_s", "memory_bytes",
          "touched_memory_bytes", "data_memory_bytes", "guest_ram_bytes",
          "downtime_limit_ms")  # fmt: skip


def estimate_figures(result: Recorded) -> dict[str, Any] | None:
    """The pre-flight estimate's figures (None when it did not run or measured nothing)."""
    return result.preflight.figures_of("estimate") if result.preflight else None


def _error(predicted: Any, actual: Any, relative: bool) -> float | None:
    if not isinstance(predicted, int | float) or not isinstance(actual, int | float):
        return None
    if relative:
        return finite_or_none(100.0 * (predicted - actual) / actual, 2) if actual else None
    return finite_or_none(float(predicted - actual), 3)


def prediction_section(result: Recorded) -> Prediction | None:
    """The `prediction` section: model, inputs, predicted, actual and error (signed: predicted
    minus actual; % for time and bytes, ms for the downtime, count for the iterations). The
    error is only given for a completed migration (a failed one did something else)."""
    figures = estimate_figures(result)
    if figures is None:
        return None
    predicted = {name: figures.get(key) for name, key, _ in COMPARED}
    actual = {name: getattr(result.migration, key) for name, _, key in COMPARED}
    completed = result.outcome == "completed"

    def error(name: str, relative: bool) -> float | None:
        return _error(predicted[name], actual[name], relative) if completed else None

    return Prediction(
        model=figures.get("model", "precopy"),
        calibrated_runs=figures.get("calibrated_runs", 0),
        converges=figures.get("converges"),
        inputs=PredictionInputs.model_validate({name: figures.get(name) for name in INPUTS}),
        predicted=Figures.model_validate(predicted),
        actual=Figures.model_validate(actual),
        error=PredictionError(
            total_time_pct=error("total_time_s", True),
            transferred_pct=error("transferred_bytes", True),
            downtime_ms=error("downtime_ms", False),
            iterations=error("iterations", False),
        ),
    )
