"""A migration plan: what a migration does, in words every backend understands.

The migration layer turns a scenario's strategy into a plan; each backend translates the plan
into its own terms (QMP capabilities and parameters; libvirt flags and typed parameters).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Throttle(_Frozen):
    """Auto-converge: slow the vCPUs down until the copy catches up."""

    initial_pct: int
    increment_pct: int


class Multifd(_Frozen):
    """Parallel channels, optionally compressing the pages."""

    channels: int
    compression: Literal["none", "zlib", "zstd"] = "none"


class MigrationPlan(_Frozen):
    """Everything a backend needs to know to run one migration attempt."""

    strategy: str  # the scenario's name for it, for the record
    live: bool = True  # False: pause the VM first, move it, resume it (cold)
    postcopy: bool = False  # post-copy armed (a switch may follow)
    postcopy_after_passes: int | None = None  # switch once this many passes ended (0: at once)
    postcopy_preempt: bool = False  # faulted pages on a connection of their own
    throttle: Throttle | None = None
    xbzrle_cache_bytes: int | None = None
    multifd: Multifd | None = None
    max_bandwidth_bytes_s: int | None = None  # None: only the link limits
    downtime_limit_ms: int = 300
    copy_storage: bool = False  # the disk is not shared: copy it along
    tls: bool = False  # encrypt the migration stream and the disk copy
    allow_unsafe: bool = False  # the user accepted a migration the hypervisor calls unsafe
    undefine_source: bool = False  # a completed migration removes the source's definition

    def with_throttle(self, throttle: Throttle) -> MigrationPlan:
        """The same plan with auto-converge on (a stalled migration starts again with it)."""
        return self.model_copy(update={"throttle": throttle})
