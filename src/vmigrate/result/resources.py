"""The `resources` section of result.json: what the migration cost each host."""

from __future__ import annotations

from pydantic import Field

from vmigrate.result.base import NonNegFloat, NonNegNumber, Section, WindowFigures


class CpuSeconds(WindowFigures):
    """CPU-seconds of every process of the host, and the baseline's rate."""

    baseline_rate: float | None = Field(description="CPU-s per s over the baseline window")


class RssBytes(Section):
    """The host's resident memory, summed over its processes."""

    before: float | None = Field(description="just before the migration")
    peak: float | None = Field(description="the highest sample of the migration window")
    after: float | None = Field(description="at the end of the run")


def _unmeasured() -> WindowFigures:
    return WindowFigures(during=None, extra=None)


class HostResources(Section):
    """One host's bill: CPU (and QEMU's CPU by thread class), network, disk IO and memory."""

    cpu_seconds: CpuSeconds = Field(
        description="CPU seconds of every process of the host; baseline_rate in CPU-s per s"
    )
    migration_cpu_seconds: WindowFigures = Field(
        default_factory=_unmeasured,
        description="CPU-seconds of the migration's own work: every process and QEMU thread "
        "but the guest's vCPUs (migration and multifd threads, QEMU's main loop, NBD, the NFS "
        "server)",
    )
    vcpu_cpu_seconds: WindowFigures = Field(
        default_factory=_unmeasured,
        description="CPU-seconds the guest's vCPU threads ran (drops while the VM is paused or "
        "gone)",
    )
    cpu_pct_peak: NonNegFloat | None = Field(
        description="highest CPU use between two samples, % of one core"
    )
    qemu_cpu_seconds: dict[str, WindowFigures] = Field(
        description="QEMU's CPU by thread class (vcpu, migration, main, other)"
    )
    net_tx_bytes: WindowFigures = Field(description="bytes the host's uplink sent")
    net_rx_bytes: WindowFigures = Field(description="bytes the host's uplink received")
    disk_read_bytes: WindowFigures = Field(description="bytes the host's processes read")
    disk_write_bytes: WindowFigures = Field(description="bytes the host's processes wrote")
    rss_bytes: RssBytes = Field(description="resident memory of the host's processes")
    processes: list[str] = Field(description="names of the processes seen on the host")


class Resources(Section):
    """Every hypervisor and storage host's bill (`resources`)."""

    sample_interval_ms: NonNegNumber = Field(description="measure.resource_interval_ms")
    hosts: dict[str, HostResources] = Field(description="source, destination, storage")
