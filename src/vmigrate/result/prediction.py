"""The `prediction` section of result.json: what the model predicted before the migration (its
pre-flight estimate, with the constants `vmigrate calibrate` fitted) beside what happened."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vmigrate.result.base import Count, Number, Section


class PredictionInputs(Section):
    """What the estimate measured before the migration."""

    dirty_rate_mib_s: Number | None = Field(description="how fast the guest dirtied memory")
    bandwidth_mib_s: Number | None = Field(description="what the migration gets of the link")
    link_mbit_s: Number | None = Field(description="the link's measured rate")
    memory_bytes: Number | None = Field(
        description="memory the model sends (M: the memory holding data, else the touched)"
    )
    touched_memory_bytes: Number | None = Field(
        None, description="memory the guest had touched (resident)"
    )
    data_memory_bytes: Number | None = Field(
        None, description="of it, the memory holding data (not all zeros; sampled)"
    )
    guest_ram_bytes: Number | None = Field(description="the guest's RAM")
    downtime_limit_ms: Number | None = Field(description="migration.downtime_limit_ms")


class Figures(Section):
    """The four figures the prediction is judged on (predicted, or what happened)."""

    total_time_s: Number | None = Field(description="the migration's total time")
    iterations: Number | None = Field(description="passes, as QEMU counts them")
    downtime_ms: Number | None = Field(description="the hypervisor's downtime")
    transferred_bytes: Number | None = Field(description="bytes sent")


class PredictionError(Section):
    """Predicted minus actual, for a completed migration (each null otherwise)."""

    total_time_pct: float | None = Field(description="% of the actual total time")
    transferred_pct: float | None = Field(description="% of the actual bytes")
    downtime_ms: float | None = Field(description="ms, against the hypervisor's downtime")
    iterations: float | None = Field(description="passes as QEMU counts them")


class Prediction(Section):
    """The model's prediction beside what happened, and its error."""

    model: Literal["precopy", "postcopy"] = Field(description="which model predicted")
    calibrated_runs: Count = Field(
        description="runs the model's constants were fitted to (0: the plain physics)"
    )
    converges: bool | None = Field(description="whether pre-copy was predicted to converge")
    inputs: PredictionInputs = Field(description="what the estimate measured")
    predicted: Figures = Field(description="what the model predicted")
    actual: Figures = Field(description="what the migration did (migration section)")
    error: PredictionError = Field(
        description="predicted minus actual, for a completed migration (null otherwise)"
    )
