"""Strategies: which hypervisor capabilities and parameters a scenario's migration section means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmigrate.config import MigrationSpec

MIB = 1024 * 1024
# QEMU's default max-bandwidth is 128 MiB/s; "0 = only the link limits" lifts it to this.
UNLIMITED_BYTES_S = 100 * 1024 * MIB


@dataclass(frozen=True)
class MigrationPlan:
    """What to set on each end before migrating, and whether the VM is paused first (cold)."""

    strategy: str
    source_capabilities: dict[str, bool]
    destination_capabilities: dict[str, bool]
    parameters: dict[str, Any]
    pause_first: bool


def plan_for(spec: MigrationSpec) -> MigrationPlan:
    """Translate a migration section into hypervisor settings."""
    caps = {"events": True}
    bandwidth = (
        int(spec.max_bandwidth_mib_s * MIB) if spec.max_bandwidth_mib_s else UNLIMITED_BYTES_S
    )
    params: dict[str, Any] = {
        "downtime-limit": spec.downtime_limit_ms,
        "max-bandwidth": bandwidth,
    }
    return MigrationPlan(
        strategy=spec.strategy,
        source_capabilities=caps,
        destination_capabilities=caps,
        parameters=params,
        pause_first=spec.strategy == "cold",
    )
