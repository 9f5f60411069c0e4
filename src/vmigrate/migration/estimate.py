"""The migration model: will a pre-copy converge, and how long will a migration take, how many
bytes will it send, how long will the VM pause?

Pre-copy. Pass 0 sends all of memory, M bytes, at bandwidth B; meanwhile the guest dirties D
bytes/s, so pass i has V_i = M·(D/B)^i to send. Once V_i ≤ B·downtime_limit the VM stops and
V_i goes in the pause. With D ≥ B the passes never shrink: pre-copy does not converge. M is the
memory the guest has touched: untouched pages go as zero pages, at next to no cost on the wire.

Post-copy (switching at once): the VM stops only for the device state, then runs on the
destination while M is pulled across at B.

What the plain physics leaves out is in `ModelConstants`, fitted to measured runs by
`vmigrate calibrate` (migration/calibration.py): the share of the link the stream gets, the bias
of the dirty-rate measurement, a cost per pass, the switch-over's fixed cost and the device
state's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

MAX_PASSES = 10_000
#: QEMU counts a dirty-bitmap sync at the start, one after each pass and one in the stop: its
#: iteration count is the model's passes plus these two.
EXTRA_SYNCS = 2


class ModelConstants(BaseModel):
    """The model's constants (defaults: the plain physics); `vmigrate calibrate` fits them."""

    link_efficiency: float = Field(1.0, gt=0, le=2, description="stream rate / measured link")
    dirty_rate_factor: float = Field(1.0, ge=0, description="real / measured dirty rate")
    dirty_rate_floor_mib_s: float = Field(0.0, ge=0, description="dirty rate the probe misses")
    pass_overhead_ms: float = Field(0.0, ge=0, description="fixed cost of each pass")
    switchover_ms: float = Field(0.0, ge=0, description="fixed cost of the stop")
    device_state_bytes: float = Field(0.0, ge=0, description="sent in the stop on top of RAM")
    fitted_runs: int = Field(0, ge=0, description="how many runs the constants were fitted to")


PHYSICS = ModelConstants()


@dataclass(frozen=True)
class Estimate:
    """What the model predicts (None where pre-copy does not converge)."""

    converges: bool
    passes: int | None
    total_time_s: float | None
    downtime_ms: float | None
    transferred_bytes: float | None

    @property
    def iterations(self) -> int | None:
        """The passes as QEMU counts them (its dirty-bitmap syncs)."""
        return None if self.passes is None else self.passes + EXTRA_SYNCS


NEVER = Estimate(False, None, None, None, None)


def effective_rates(
    dirty_bytes_s: float, bandwidth_bytes_s: float, constants: ModelConstants
) -> tuple[float, float]:
    """(dirty rate, stream rate) as the migration sees them."""
    floor = constants.dirty_rate_floor_mib_s * 1024 * 1024
    dirty = max(dirty_bytes_s * constants.dirty_rate_factor, floor)
    return dirty, bandwidth_bytes_s * constants.link_efficiency


def precopy_estimate(
    memory_bytes: float,
    dirty_bytes_s: float,
    bandwidth_bytes_s: float,
    downtime_limit_ms: float,
    constants: ModelConstants = PHYSICS,
) -> Estimate:
    """Iterate V_i = M·(D/B)^i until a pass fits in the allowed downtime."""
    dirty, bandwidth = effective_rates(dirty_bytes_s, bandwidth_bytes_s, constants)
    if bandwidth <= 0 or dirty >= bandwidth:
        return NEVER
    budget = bandwidth * downtime_limit_ms / 1000
    ratio = dirty / bandwidth
    volume, elapsed, sent = float(memory_bytes), 0.0, 0.0
    pass_s = constants.pass_overhead_ms / 1000
    for passes in range(MAX_PASSES):
        if volume <= budget:
            stop_bytes = volume + constants.device_state_bytes
            pause_s = stop_bytes / bandwidth + constants.switchover_ms / 1000
            return Estimate(True, passes, elapsed + pause_s, pause_s * 1000, sent + stop_bytes)
        elapsed += volume / bandwidth + pass_s
        sent += volume
        volume *= ratio
    return NEVER


def postcopy_estimate(
    memory_bytes: float, bandwidth_bytes_s: float, constants: ModelConstants = PHYSICS
) -> Estimate:
    """Switch at once: a pause for the device state, then memory pulled across at B."""
    _, bandwidth = effective_rates(0.0, bandwidth_bytes_s, constants)
    if bandwidth <= 0:
        return NEVER
    pause_s = constants.device_state_bytes / bandwidth + constants.switchover_ms / 1000
    total = memory_bytes + constants.device_state_bytes
    return Estimate(True, 0, total / bandwidth + pause_s, pause_s * 1000, total)
