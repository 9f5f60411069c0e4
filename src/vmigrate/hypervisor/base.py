"""The hypervisor interface: one running VM instance on one host, and its migration controls.

Everything above this layer (orchestrator, experiment) talks to a `Domain` only, so QEMU over
QMP (qemu.py) and, later, libvirt can stand behind it without anyone else knowing which.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VmConfig:
    """What both hosts need to run the same VM (a destination must match the source exactly)."""

    name: str
    memory_mib: int
    vcpus: int
    cpu_model: str
    accel: str  # "kvm" | "tcg" (already resolved from "auto")
    kernel: Path
    initrd: Path
    kernel_cmdline: str
    disk_url: str
    mac: str
    machine: str = "q35"
    disk_cache: str = "none"


@dataclass(frozen=True)
class MigrationStats:
    """One reading of the hypervisor's migration counters (QEMU's query-migrate, normalised)."""

    status: str
    total_time_ms: float | None = None
    setup_time_ms: float | None = None
    downtime_ms: float | None = None
    expected_downtime_ms: float | None = None
    transferred_bytes: int = 0
    remaining_bytes: int = 0
    total_bytes: int = 0
    zero_pages: int = 0
    normal_pages: int = 0
    normal_bytes: int = 0
    dirty_pages_rate: int = 0
    page_size_bytes: int = 4096
    throughput_mbit_s: float = 0.0
    iterations: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    postcopy_bytes: int = 0
    cpu_throttle_pct: int = 0
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def percent_sent(self) -> float:
        """Share of the work done so far: sent / (sent + still to send)."""
        todo = self.transferred_bytes + self.remaining_bytes
        return 100.0 * self.transferred_bytes / todo if todo else 0.0


@dataclass(frozen=True)
class HypervisorEvent:
    """An asynchronous event from a VM instance, stamped on the monotonic clock."""

    t_ns: int
    host: str
    name: str
    data: dict[str, Any]
    emitted_s: float | None = None  # the hypervisor's own wall-clock stamp (precise intervals)


class Domain(abc.ABC):
    """One VM instance (a process) on one host."""

    host_role: str

    @abc.abstractmethod
    async def run_state(self) -> str:
        """'running', 'paused', 'inmigrate', 'postmigrate', ... ('gone' once it has exited)."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop the vCPUs."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Start the vCPUs."""

    @abc.abstractmethod
    async def set_migration_capabilities(self, capabilities: dict[str, bool]) -> None:
        """Turn migration features on or off (both ends must agree on some)."""

    @abc.abstractmethod
    async def set_migration_parameters(self, parameters: dict[str, Any]) -> None:
        """Tune the migration (bandwidth, downtime limit, ...)."""

    @abc.abstractmethod
    async def accept_migration(self, uri: str) -> None:
        """Destination: start listening on `uri` (after capabilities and parameters are set)."""

    @abc.abstractmethod
    async def start_postcopy(self) -> None:
        """Source: switch a running pre-copy migration to post-copy (the VM moves now)."""

    @abc.abstractmethod
    async def start_migration(self, uri: str) -> None:
        """Begin sending this VM to `uri`; returns once the hypervisor accepted the request."""

    @abc.abstractmethod
    async def migration_stats(self) -> MigrationStats:
        """The current migration counters."""

    @abc.abstractmethod
    async def touched_memory_bytes(self) -> int | None:
        """How much of its RAM the guest has touched (None when unknown): what pre-copy's
        first pass really has to send."""

    @abc.abstractmethod
    async def measure_dirty_rate(self, seconds: int) -> float:
        """How fast the guest dirties its memory, in MiB/s, measured over `seconds`."""

    @abc.abstractmethod
    async def cancel_migration(self) -> None:
        """Abort an ongoing migration; the VM keeps running here."""

    @abc.abstractmethod
    async def export_disk(self, address: str, port: int) -> None:
        """Destination (non-shared storage): serve the VM's (empty) disk, writable, over NBD."""

    @abc.abstractmethod
    async def unexport_disk(self) -> None:
        """Destination: stop serving the disk once the migration is over; idempotent."""

    @abc.abstractmethod
    async def start_disk_mirror(self, address: str, port: int) -> None:
        """Source: copy the VM's disk into the destination's export, then keep it in sync."""

    @abc.abstractmethod
    async def disk_mirror_progress(self) -> tuple[bool, int, int]:
        """Source: (ready = copied and now in sync, bytes copied, bytes to copy)."""

    @abc.abstractmethod
    async def finish_disk_mirror(self, abort: bool = False) -> None:
        """Source: end the mirror (after the switch-over, or abort it); idempotent."""

    @abc.abstractmethod
    def drain_events(self) -> list[HypervisorEvent]:
        """Events received since the last call."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop the instance (quit the process) and release it; idempotent."""
