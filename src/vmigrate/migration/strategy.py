"""Strategies: which hypervisor capabilities and parameters a scenario's migration section means,
on each end, and whether (and when) the orchestrator pauses the VM or switches to post-copy."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vmigrate.config import MigrationSpec

MIB = 1024 * 1024
# QEMU's default max-bandwidth is 128 MiB/s; "0 = only the link limits" lifts it to this.
UNLIMITED_BYTES_S = 100 * 1024 * MIB


@dataclass(frozen=True)
class MigrationPlan:
    """What to set on each end before migrating, and what the orchestrator does on its own."""

    strategy: str
    capabilities: dict[str, bool]  # set on both ends (QEMU wants them to agree)
    source_parameters: dict[str, Any]
    destination_parameters: dict[str, Any]
    pause_first: bool = False  # cold: stop the VM, then move it
    postcopy_after_passes: int | None = None  # switch to post-copy once this many passes ended


def plan_for(spec: MigrationSpec) -> MigrationPlan:
    """Translate a migration section into hypervisor settings."""
    caps: dict[str, bool] = {"events": True}
    bandwidth = (
        int(spec.max_bandwidth_mib_s * MIB) if spec.max_bandwidth_mib_s else UNLIMITED_BYTES_S
    )
    source: dict[str, Any] = {"downtime-limit": spec.downtime_limit_ms, "max-bandwidth": bandwidth}
    both: dict[str, Any] = {}
    postcopy_after: int | None = None
    match spec.strategy:
        case "postcopy" | "hybrid":
            caps["postcopy-ram"] = True
            postcopy_after = 1 if spec.strategy == "postcopy" else spec.postcopy_after_iterations
        case "auto-converge":
            caps["auto-converge"] = True
            source.update(_throttle(spec))
        case "xbzrle":
            caps["xbzrle"] = True
            source["xbzrle-cache-size"] = spec.xbzrle_cache_mib * MIB
        case "multifd":
            caps["multifd"] = True
            both["multifd-channels"] = spec.multifd_channels
            both["multifd-compression"] = spec.multifd_compression
    if spec.on_stall == "postcopy":
        caps["postcopy-ram"] = True  # must be on before the migration starts
    return MigrationPlan(
        strategy=spec.strategy,
        capabilities=caps,
        source_parameters={**source, **both},
        destination_parameters=both,
        pause_first=spec.strategy == "cold",
        postcopy_after_passes=postcopy_after,
    )


def with_auto_converge(plan: MigrationPlan, spec: MigrationSpec) -> MigrationPlan:
    """The same plan with the vCPU throttle armed (on_stall = auto-converge restarts with it)."""
    return replace(
        plan,
        capabilities={**plan.capabilities, "auto-converge": True},
        source_parameters={**plan.source_parameters, **_throttle(spec)},
    )


def _throttle(spec: MigrationSpec) -> dict[str, Any]:
    return {
        "cpu-throttle-initial": spec.cpu_throttle_initial_pct,
        "cpu-throttle-increment": spec.cpu_throttle_increment_pct,
    }
