"""The hypervisor boundary: one interface for every backend (QEMU over QMP, libvirt).

Above this layer (orchestrator, experiment, preflight) code asks for "a VM on the source",
"a migration of it with this plan" and reads typed states, counters and events; command
names, flags, status strings and process handles stay inside the backend modules.

    Hypervisor   a backend on a pair of hosts: boots the VM, prepares migrations
    Domain       one VM instance on one host: run state, pause/resume, events
    Migration    one attempt at moving a Domain: start, counters, post-copy, cancel, conclude
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmigrate.hypervisor.plan import MigrationPlan
from vmigrate.testbed.network import PAIR


class Backend(StrEnum):
    """Which engine runs the VMs."""

    QEMU = "qemu"
    LIBVIRT = "libvirt"


class RunState(StrEnum):
    """Where a VM instance is in its life (the values are what result.json shows)."""

    RUNNING = "running"
    PAUSED = "paused"
    INCOMING = "inmigrate"  # a destination waiting for the migration stream
    FINISHING = "finish-migrate"  # the source in its stop-and-copy
    MIGRATED = "postmigrate"  # the source after it handed the VM over
    GONE = "gone"  # no such instance (any more) on that host
    OTHER = "other"

    @property
    def handed_over(self) -> bool:
        """True when this (source) instance no longer runs the VM after a migration."""
        return self in (RunState.MIGRATED, RunState.GONE)


class MigrationStatus(StrEnum):
    """The state of a migration job (the values are what the progress series shows)."""

    NONE = "none"
    SETUP = "setup"
    ACTIVE = "active"
    POSTCOPY = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"  # the stream broke after the switch: resumable
    POSTCOPY_RECOVER = "postcopy-recover"  # reconnecting a paused post-copy
    DEVICE = "device"  # stop-and-copy of the device state
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (
            MigrationStatus.COMPLETED,
            MigrationStatus.FAILED,
            MigrationStatus.CANCELLED,
        )


class EventKind(StrEnum):
    """What a hypervisor event means, whichever backend sent it."""

    STOPPED = "stopped"  # the vCPUs stopped (stop-and-copy, or a pause)
    RESUMED = "resumed"  # the vCPUs run again
    MIGRATION_STATUS = "migration"  # the migration job changed status (data: status)
    MIGRATION_PASS = "migration_pass"  # a pre-copy pass began (data: pass)
    CHECKPOINT = "checkpoint"  # a step of the switch-over, QEMU's own (data: checkpoint)
    OTHER = "other"


@dataclass(frozen=True)
class MigrationStats:
    """One reading of a migration's counters, normalised across backends. A counter the
    backend does not report is None (never a guessed zero)."""

    status: MigrationStatus
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
    precopy_bytes: int | None = None
    downtime_bytes: int | None = None
    postcopy_bytes: int | None = None
    cpu_throttle_pct: int = 0
    disk_transferred_bytes: int = 0
    disk_total_bytes: int = 0
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The backend's own figures beyond the normalised ones (libvirt's job statistics), each
    # named with its unit; empty where the normalised counters say it all (QEMU).
    report: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def percent_sent(self) -> float:
        """Share of the work done so far: sent / (sent + still to send)."""
        todo = self.transferred_bytes + self.remaining_bytes
        return 100.0 * self.transferred_bytes / todo if todo else 0.0


@dataclass(frozen=True)
class HypervisorEvent:
    """An asynchronous event from a VM instance, stamped on the monotonic clock; `name` is the
    backend's own word for it (kept for the record), `kind` what it means."""

    t_ns: int
    host: str
    kind: EventKind
    name: str
    data: dict[str, Any]
    emitted_s: float | None = None  # the hypervisor's own wall-clock stamp (precise intervals)


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


def other_host(role: str) -> str:
    """The hypervisor host a VM on host `role` migrates to: the destination from the source,
    and back to the source from the destination (a VM may hop back and forth)."""
    if role not in PAIR:
        raise ValueError(f"{role!r} is neither of a single VM's hosts ({', '.join(PAIR)})")
    return PAIR[1 - PAIR.index(role)]


@dataclass(frozen=True)
class HostPlace:
    """Where a hypervisor host of the testbed is: its namespace, tap, address, CPU ceiling."""

    role: str
    netns: str
    tap: str
    ip: str
    cpu_ceiling: str = ""


class Domain(abc.ABC):
    """One VM instance on one host."""

    host_role: str
    console_log: Path | None  # the guest's serial console, where the backend keeps one

    @abc.abstractmethod
    async def run_state(self) -> RunState:
        """Where the instance is now (GONE once it no longer exists on its host).

        :raise HypervisorError: the backend could not be asked."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop the vCPUs. :raise HypervisorError: refused."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Start the vCPUs. :raise HypervisorError: refused."""

    @abc.abstractmethod
    async def touched_memory_bytes(self) -> int | None:
        """How much of its RAM the guest has touched (None when unknown): the pages it never
        touched go as zero pages, next to free."""

    async def data_memory_bytes(self) -> int | None:
        """How much of the touched memory holds data (None where the backend cannot tell):
        pages of zeros go as zero pages, so this is what the first pass sends as full pages."""
        return None

    @abc.abstractmethod
    async def measure_dirty_rate(self, seconds: int) -> float:
        """How fast the guest dirties its memory, in MiB/s, measured over `seconds`.

        :raise HypervisorError: the backend cannot measure it."""

    def process_id(self) -> int | None:
        """The PID of the process that runs this VM on this host, where the backend can tell
        (the testbed injects faults into it); None elsewhere."""
        return None

    @abc.abstractmethod
    def exit_reason(self) -> str | None:
        """Why the instance is gone, when it died on its own (None while it lives)."""

    @abc.abstractmethod
    def drain_events(self) -> list[HypervisorEvent]:
        """Events received since the last call."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop the instance and release it; idempotent, never raises for an instance that
        is already gone."""


class Migration(abc.ABC):
    """One attempt at moving a VM from a source Domain to the other hypervisor host (its
    `destination` Domain: on the destination host, or on the source host for a hop back)."""

    destination: Domain
    #: Whether a broken post-copy stream can be paused and resumed over a new connection
    #: (else a stalled post-copy can only wait for TCP to carry the old one on).
    recovers_postcopy: bool = True

    @property
    def postcopy_preempt(self) -> bool:
        """Whether the pages the destination faults on travel on a connection of their own,
        ahead of the background copy (QEMU's postcopy-preempt), in this attempt."""
        return False

    @abc.abstractmethod
    async def copy_storage(self, timeout_s: float) -> int:
        """Copy a non-shared disk to the destination and keep it in sync, before the RAM
        moves, where the backend does that apart (else nothing); the bytes copied.

        :raise MigrationError: not in sync within `timeout_s`."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin moving the VM; returns once the hypervisor accepted the request.

        :raise HypervisorError: refused."""

    @abc.abstractmethod
    async def stats(self) -> MigrationStats:
        """The current counters. :raise HypervisorError: the backend could not be asked."""

    @abc.abstractmethod
    async def switch_to_postcopy(self) -> None:
        """Move the VM now and pull the remaining pages on demand (the plan armed post-copy)."""

    @abc.abstractmethod
    async def pause_postcopy(self) -> None:
        """Break off a post-copy stream that stopped moving (a dead link TCP has not noticed
        yet), so that both ends are paused and it can be resumed over a new connection.

        :raise HypervisorError: refused."""

    @abc.abstractmethod
    async def recover_postcopy(self) -> None:
        """Resume a paused post-copy migration over a new connection; returns once the
        reconnection is under way (its status then says whether it took).

        :raise HypervisorError: refused or not possible now (the link is still down): try
            again later."""

    @abc.abstractmethod
    async def set_downtime_limit(self, limit_ms: int) -> None:
        """Allow a longer stop-and-copy while the migration runs."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Abort; the VM keeps running on the source. Returns once the job is over.

        :raise HypervisorError: the job did not stop."""

    @abc.abstractmethod
    def drain_actions(self) -> list[tuple[int, str]]:
        """What the backend did on its own since the last call ((t_ns, text): disk copy
        started, in sync, ...), for the record."""

    @abc.abstractmethod
    async def conclude(self, completed: bool) -> None:
        """Tidy up after the job ended: a completed one leaves the VM on the destination, any
        other leaves nothing on the destination. Idempotent."""


class Hypervisor(abc.ABC):
    """A backend on the source and destination hosts."""

    backend: Backend

    @abc.abstractmethod
    async def boot(self, config: VmConfig) -> Domain:
        """Start the VM on the source host.

        :raise HypervisorError: the host refused or the VM did not start."""

    @abc.abstractmethod
    async def prepare_migration(self, source: Domain, plan: MigrationPlan) -> Migration:
        """Make the other host than `source.host_role` (`other_host`) ready to take `source`'s
        VM with `plan` (not started yet): the destination host for a VM booted on the source,
        the source host again for one that migrated there before.

        :raise HypervisorError: the destination refuses the VM (CPU, ...) or the plan."""

    @abc.abstractmethod
    def listen_ports(self, plan: MigrationPlan) -> dict[str, int]:
        """The ports the destination listens on during a migration (for pre-flight)."""

    @abc.abstractmethod
    async def versions(self) -> dict[str, str]:
        """Versions of the engine's parts (qemu_version, libvirt_version, ...)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every VM this backend started and release its connections; idempotent."""
