"""The pre-copy model: will a migration converge, and how long will it take and pause?

Pass 0 sends all of memory, M bytes, at bandwidth B; meanwhile the guest dirties D bytes/s, so
pass i has V_i = M·(D/B)^i to send. Once V_i ≤ B·downtime_limit the VM stops and V_i goes in
the pause. With D ≥ B the passes never shrink: pre-copy does not converge. M is the memory
the guest has touched: untouched pages go as zero pages, at next to no cost on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PASSES = 10_000


@dataclass(frozen=True)
class PrecopyEstimate:
    """What the model predicts (times are None when pre-copy does not converge)."""

    converges: bool
    passes: int | None
    total_time_s: float | None
    downtime_ms: float | None


def precopy_estimate(
    memory_bytes: float, dirty_bytes_s: float, bandwidth_bytes_s: float, downtime_limit_ms: float
) -> PrecopyEstimate:
    """Iterate V_i = M·(D/B)^i until a pass fits in the allowed downtime."""
    if bandwidth_bytes_s <= 0 or dirty_bytes_s >= bandwidth_bytes_s:
        return PrecopyEstimate(False, None, None, None)
    budget = bandwidth_bytes_s * downtime_limit_ms / 1000
    ratio = dirty_bytes_s / bandwidth_bytes_s
    volume, elapsed = float(memory_bytes), 0.0
    for passes in range(MAX_PASSES):
        if volume <= budget:
            pause = volume / bandwidth_bytes_s
            return PrecopyEstimate(True, passes, elapsed + pause, pause * 1000)
        elapsed += volume / bandwidth_bytes_s
        volume *= ratio
    return PrecopyEstimate(False, None, None, None)
