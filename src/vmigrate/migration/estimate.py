"""The migration model: will a pre-copy converge, and how long will a migration take, how many
bytes will it send, how long will the VM pause?

Memory. M is the memory that holds data: of the pages the guest has touched (the resident
part of QEMU's guest-RAM mapping), those not all zeros, sampled (hypervisor/guest_ram.py).
Untouched pages and pages of zeros go as zero pages, at next to no cost on the wire. Where the
data cannot be sampled M is the touched memory, where nothing is known the whole RAM. Of M, a
share s goes as full pages, F = s·M (fitted: what turns to zeros between the look and the send).

Pre-copy, as QEMU 10's migration_iteration_run stops it. The budget is θ = B·downtime_limit.
Pass 0 sends F at bandwidth B in t_0 = F/B while the guest dirties X_0 = D·t_0; its zero pages
lie at the end of the scan, so QEMU's first look at the pending bytes finds P_1 = X_0. QEMU
looks at them after each burst of sending: as soon as they are below θ it syncs the dirty
bitmap and stops if the total still fits, P ≤ θ. Otherwise it goes on and looks again once the
pending is below θ again — mid-pass: it leaves K = θ - u unsent, u the undershoot (how far
below the budget a look lands: u = min(B·stop_undershoot, θ/2)). So each later burst sends
P_i - K in t_i = (P_i - K)/B and P_{i+1} = K + D·t_i: the bursts shrink by D/B, and the stop
comes once what the guest dirtied in a burst fits in u. With passes larger than the budget the
VM stops with about θ - u in the pause — the downtime is about the limit, not what is left at a
pass's end. With D ≥ B the bursts never shrink: pre-copy does not converge.

Post-copy (switching at once): the VM stops only for the device state, then runs on the
destination while F is pulled across at B.

What the plain physics leaves out is in `ModelConstants`, fitted to measured runs by
`vmigrate calibrate` (migration/calibration.py): the share of the link the stream gets, the
share of the memory holding data sent as full pages, the bias of the dirty-rate measurement, a cost
per pass, the undershoot of the stop, the switch-over's fixed cost and the device state's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

MAX_PASSES = 10_000
#: QEMU counts a dirty-bitmap sync at the start, one after each pass and one in the stop: its
#: iteration count is the model's passes plus these two.
EXTRA_SYNCS = 2
#: QEMU's ram_save_iterate sends for at most this long (its MAX_WAIT) before the migration
#: thread looks at the pending bytes again; the look lands on average half of it below the
#: budget: the plain physics' undershoot.
QEMU_BURST_MS = 50.0


class ModelConstants(BaseModel):
    """The model's constants (defaults: the plain physics); `vmigrate calibrate` fits them."""

    link_efficiency: float = Field(1.0, gt=0, le=2, description="stream rate / measured link")
    full_page_share: float = Field(
        1.0, gt=0, le=1, description="share of the memory holding data sent as full pages",
    )  # fmt: skip
    dirty_rate_factor: float = Field(1.0, ge=0, description="real / measured dirty rate")
    dirty_rate_floor_mib_s: float = Field(0.0, ge=0, description="dirty rate the probe misses")
    pass_overhead_ms: float = Field(0.0, ge=0, description="fixed cost of each pass")
    stop_undershoot_ms: float = Field(
        QEMU_BURST_MS / 2, ge=0, description="how far below the downtime budget QEMU's look at "
        "the pending bytes lands (time at the stream's rate, at most half the budget): a stop "
        "mid-pass holds this much less than the budget",
    )  # fmt: skip
    switchover_ms: float = Field(0.0, ge=0, description="fixed cost of the stop")
    device_state_bytes: float = Field(0.0, ge=0, description="sent in the stop on top of RAM")
    setup_ms: float = Field(
        0.0, ge=0, description="preparing the destination (its QEMU started, listening) before "
        "the stream starts: a drain's migration holds its slot meanwhile",
    )  # fmt: skip
    wrapup_ms: float = Field(
        0.0, ge=0, description="from the hypervisor's end of the migration until it is seen "
        "ended and its slot is free (its start's commands, the last look at it)",
    )  # fmt: skip
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


def memory_to_send(ram_bytes: int, touched_bytes: int | None, data_bytes: int | None) -> int:
    """M: the memory holding data when it was sampled, else the touched memory, else all the
    RAM (never more than the RAM)."""
    for measured in (data_bytes, touched_bytes):
        if measured is not None and measured > 0:
            return min(measured, ram_bytes)
    return ram_bytes


def full_pages(memory_bytes: float, constants: ModelConstants) -> float:
    """The bytes of M that go as full pages: pass 0, or post-copy's pull."""
    return memory_bytes * constants.full_page_share


def stop_volumes(
    bandwidth_bytes_s: float, downtime_limit_ms: float, constants: ModelConstants
) -> tuple[float, float]:
    """(budget θ, kept K): QEMU stops when the pending bytes fit in θ; after pass 0 it leaves
    K = θ - u unsent at each look (u the undershoot, at most half the budget)."""
    budget = bandwidth_bytes_s * downtime_limit_ms / 1000
    undershoot = min(bandwidth_bytes_s * constants.stop_undershoot_ms / 1000, budget / 2)
    return budget, budget - undershoot


def precopy_estimate(
    memory_bytes: float,
    dirty_bytes_s: float,
    bandwidth_bytes_s: float,
    downtime_limit_ms: float,
    constants: ModelConstants = PHYSICS,
) -> Estimate:
    """Pass 0 sends F; then bursts down to K until what the guest dirtied fits in the budget
    (see the module's docstring)."""
    dirty, bandwidth = effective_rates(dirty_bytes_s, bandwidth_bytes_s, constants)
    if bandwidth <= 0 or dirty >= bandwidth:
        return NEVER
    budget, kept = stop_volumes(bandwidth, downtime_limit_ms, constants)
    pending, keep = full_pages(memory_bytes, constants), 0.0  # pass 0 sends it all
    elapsed, sent = 0.0, 0.0
    pass_s = constants.pass_overhead_ms / 1000
    for passes in range(MAX_PASSES):
        if pending <= budget:
            stop_bytes = pending + constants.device_state_bytes
            pause_s = stop_bytes / bandwidth + constants.switchover_ms / 1000
            return Estimate(True, passes, elapsed + pause_s, pause_s * 1000, sent + stop_bytes)
        burst_s = (pending - keep) / bandwidth
        elapsed += burst_s + pass_s
        sent += pending - keep
        pending, keep = keep + dirty * burst_s, kept
    return NEVER


def postcopy_estimate(
    memory_bytes: float, bandwidth_bytes_s: float, constants: ModelConstants = PHYSICS
) -> Estimate:
    """Switch at once: a pause for the device state, then the full pages pulled across at B."""
    _, bandwidth = effective_rates(0.0, bandwidth_bytes_s, constants)
    if bandwidth <= 0:
        return NEVER
    pause_s = constants.device_state_bytes / bandwidth + constants.switchover_ms / 1000
    total = full_pages(memory_bytes, constants) + constants.device_state_bytes
    return Estimate(True, 0, total / bandwidth + pause_s, pause_s * 1000, total)
