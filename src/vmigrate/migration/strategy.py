"""Strategies: what a scenario's migration section means as a backend-neutral plan, and
whether (and when) the orchestrator pauses the VM or switches to post-copy."""

from __future__ import annotations

from vmigrate.config import MigrationSpec
from vmigrate.hypervisor.plan import MigrationPlan, Multifd, Throttle

MIB = 1024 * 1024


def plan_for(
    spec: MigrationSpec, copy_storage: bool = False, allow_unsafe: bool = False
) -> MigrationPlan:
    """Translate a migration section into a plan (`copy_storage`: the disk is not shared;
    `allow_unsafe`: the user said --unsafe)."""
    postcopy_after: int | None = None
    if spec.strategy == "postcopy":
        postcopy_after = 0  # switch at once: the VM runs on the destination from the start
    elif spec.strategy == "hybrid":
        postcopy_after = spec.postcopy_after_iterations
    # on_stall = postcopy: post-copy must be armed before the migration starts.
    postcopy = postcopy_after is not None or spec.on_stall == "postcopy"
    return MigrationPlan(
        strategy=spec.strategy,
        live=spec.strategy != "cold",
        postcopy=postcopy,
        postcopy_after_passes=postcopy_after,
        postcopy_preempt=postcopy and spec.postcopy_preempt,
        throttle=throttle_of(spec) if spec.strategy == "auto-converge" else None,
        xbzrle_cache_bytes=spec.xbzrle_cache_mib * MIB if spec.strategy == "xbzrle" else None,
        multifd=Multifd(channels=spec.multifd_channels, compression=spec.multifd_compression)
        if spec.strategy == "multifd"
        else None,
        max_bandwidth_bytes_s=int(spec.max_bandwidth_mib_s * MIB)
        if spec.max_bandwidth_mib_s
        else None,
        downtime_limit_ms=spec.downtime_limit_ms,
        copy_storage=copy_storage,
        tls=spec.tls,
        allow_unsafe=allow_unsafe,
    )


def throttle_of(spec: MigrationSpec) -> Throttle:
    """The vCPU throttle a scenario asks for (strategy or on_stall auto-converge)."""
    return Throttle(
        initial_pct=spec.cpu_throttle_initial_pct, increment_pct=spec.cpu_throttle_increment_pct
    )
