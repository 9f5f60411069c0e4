"""The migration's own sections of result.json: the hypervisor's figures (`migration`), its
moments (`phases`) and the data it moved (`data`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from vmigrate.result.base import Count, NonNegFloat, Section


class Action(Section):
    """Something the orchestrator (or the backend) did on its own during the migration."""

    t_s: float = Field(description="seconds since the run started")
    action: str = Field(description="what was done (e.g. switch to post-copy)")


class PostcopyPause(Section):
    """One interval a post-copy migration spent paused after its stream broke or stalled."""

    paused_at_s: float = Field(description="seconds since the run started")
    recovered_at_s: float | None = Field(
        description="when post-copy ran again; null: it never recovered"
    )
    paused_ms: NonNegFloat | None = Field(description="how long it stayed paused")
    cause: str = Field(description="why it paused (the stream broke, or stalled)")
    reconnections: Count = Field(description="reconnection attempts it took")


class MigrationFigures(Section):
    """How the migration was done and what the hypervisor says it took (`migration`)."""

    strategy: str | None = Field(description="migration.strategy (null: no migration started)")
    tls: bool = Field(
        False, description="the migration stream (and a disk copy) went over TLS (migration.tls)"
    )
    postcopy_preempt: bool = Field(
        False,
        description="post-copy's faulted pages travelled on a connection of their own (QEMU's "
        "postcopy-preempt): as migration.postcopy_preempt asks on the QEMU driver; with every "
        "post-copy through libvirt 11.3, which turns it on itself",
    )
    total_time_s: NonNegFloat | None = Field(
        description="hypervisor-reported total time; cold: from pause to resume; restarted: "
        "from the first attempt's start to completion"
    )
    setup_time_s: NonNegFloat | None = Field(description="the hypervisor's setup phase")
    downtime_reported_ms: NonNegFloat | None = Field(
        description="the hypervisor's pause; cold: the whole pause"
    )
    transferred_bytes: Count = Field(
        description="every byte the migration sent, over all its attempts"
    )
    remaining_bytes: Count | None = Field(description="bytes left to send at the end")
    iterations: Count = Field(description="dirty-bitmap syncs (pre-copy passes)")
    throughput_mbit_s: NonNegFloat | None = Field(
        description="transferred bytes over the hypervisor's total time"
    )
    guest_ram_bytes: Count = Field(description="the guest's RAM (vm.memory_mib)")
    progress_samples: Count = Field(description="polls of the migration's counters")
    stall_detected: bool = Field(
        description="remaining bytes stopped shrinking for migration.stall_iterations passes, "
        "or the timeout came first"
    )
    disk_copy_bytes: Count = Field(
        description="bytes of disk the mirror copied to the destination (storage.mode = local; "
        "0 for shared storage)"
    )
    attempts: Count = Field(
        description="how many times the migration was started: 2 after on_stall = "
        "auto-converge restarted it, 0 when it never started"
    )
    postcopy_pauses: list[PostcopyPause] = Field(
        [],
        description="each interval a post-copy migration spent paused after its stream broke "
        "or stalled (a cut link), until it reconnected; empty without post-copy or without a "
        "break",
    )
    hypervisor_report: dict[str, Any] = Field(
        {},
        description="the backend's own final figures beyond the normalised ones (libvirt's "
        "job statistics), each named with its unit; empty for QEMU",
    )
    actions: list[Action] = Field(
        description="what the orchestrator did on its own (e.g. switch to post-copy), seconds "
        "since the run started"
    )


class Pass(Section):
    """A pre-copy pass, as the source's events announced it."""

    pass_: Count = Field(alias="pass", description="its number, as the hypervisor counts")
    t_s: float = Field(description="seconds since the migration started")


class Phases(Section):
    """Moments of the migration, seconds since the migration started (`phases`)."""

    windows_s: dict[str, tuple[float, float]] = Field(
        description="baseline, during, after: [start, end] in seconds since the run started"
    )
    iterations: list[Pass] = Field(description="the pre-copy passes the source announced")
    stop_and_copy_s: NonNegFloat | None = Field(description="the source's vCPUs stopped")
    resume_on_destination_s: NonNegFloat | None = Field(description="the destination's vCPUs ran")
    completion_s: NonNegFloat | None = Field(description="the source said it completed")


class DirtyRate(Section):
    """The guest's dirty rate over the migration's polls, MiB/s."""

    mean: float | None = Field(description="MiB/s, over the polls that measured it")
    peak: float | None = Field(description="MiB/s, the highest poll")


class Data(Section):
    """Bytes and pages moved, from the progress polls, over every attempt (`data`)."""

    transferred_bytes: Count = Field(description="bytes on the wire")
    zero_pages: Count = Field(description="pages sent as zero pages (no content)")
    normal_pages: Count = Field(description="pages sent with their content")
    normal_bytes: Count = Field(description="bytes of those pages")
    precopy_bytes: Count = Field(description="bytes sent while the vCPUs ran on the source")
    downtime_bytes: Count = Field(description="bytes sent while the VM was stopped")
    postcopy_bytes: Count = Field(description="bytes sent after the switch to post-copy")
    dirty_rate_mib_s: DirtyRate = Field(description="how fast the guest dirtied its memory")
    iterations: Count = Field(description="passes, as the last poll counted them")
    amplification_ratio: NonNegFloat | None = Field(
        description="transferred bytes / guest RAM bytes"
    )
