"""The libvirt backend's translations: the plan as migration flags and parameters, job
statistics as MigrationStats, domain states as RunState, the testbed's domain XML; and how it
removes its domains."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmigrate import libvirt_client
from vmigrate.config import MigrationSpec
from vmigrate.hypervisor.base import MigrationStatus, RunState, VmConfig
from vmigrate.hypervisor.libvirt_backend import LibvirtHost, LibvirtHypervisor
from vmigrate.hypervisor.libvirt_domain import run_state
from vmigrate.hypervisor.libvirt_migration import (
    LibvirtMigration,
    libvirt_settings,
    stats_from_job,
)
from vmigrate.hypervisor.libvirt_xml import domain_xml, with_console
from vmigrate.migration.strategy import plan_for

libvirt = libvirt_client.load()
MIB = 1024 * 1024


def settings(**spec: object) -> tuple[int, dict[str, object]]:
    return libvirt_settings(plan_for(MigrationSpec(**spec)), "tcp://10.0.0.2")  # type: ignore[arg-type]


def test_precopy_is_live_peer_to_peer_and_persistent_on_the_destination() -> None:
    flags, params = settings(max_bandwidth_mib_s=12.5)
    for flag in ("LIVE", "PEER2PEER", "PERSIST_DEST"):
        assert flags & getattr(libvirt, f"VIR_MIGRATE_{flag}")
    for flag in ("POSTCOPY", "AUTO_CONVERGE", "COMPRESSED", "PARALLEL", "NON_SHARED_DISK", "TLS"):
        assert not flags & getattr(libvirt, f"VIR_MIGRATE_{flag}")
    assert params == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.2",
                      libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 12}  # fmt: skip


def test_cold_is_not_live() -> None:
    flags, _ = settings(strategy="cold")
    assert not flags & libvirt.VIR_MIGRATE_LIVE


@pytest.mark.parametrize(
    ("spec", "flag", "params"),
    [
        ({"strategy": "postcopy"}, "POSTCOPY", {}),
        ({"strategy": "hybrid"}, "POSTCOPY", {}),
        ({"on_stall": "postcopy"}, "POSTCOPY", {}),
        (
            {"strategy": "auto-converge", "cpu_throttle_initial_pct": 40},
            "AUTO_CONVERGE",
            {"auto_converge.initial": 40, "auto_converge.increment": 10},
        ),
        (
            {"strategy": "xbzrle", "xbzrle_cache_mib": 32},
            "COMPRESSED",
            {"compression": "xbzrle", "compression.xbzrle.cache": 32 * MIB},
        ),
        (
            {"strategy": "multifd", "multifd_channels": 4, "multifd_compression": "zstd"},
            "PARALLEL",
            {"parallel.connections": 4, "compression": "zstd"},
        ),
    ],
)
def test_each_strategy_becomes_its_flag_and_parameters(
    spec: dict[str, object], flag: str, params: dict[str, object]
) -> None:
    flags, got = settings(**spec)
    assert flags & getattr(libvirt, f"VIR_MIGRATE_{flag}")
    assert params.items() <= got.items()


def test_storage_that_is_not_shared_is_copied_by_libvirt() -> None:
    flags, _ = libvirt_settings(plan_for(MigrationSpec(), copy_storage=True), None)
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK


def test_tls_is_libvirts_tls_flag_with_every_strategy() -> None:
    for strategy in ("precopy", "postcopy", "multifd", "cold"):
        flags, _ = settings(strategy=strategy, tls=True)
        assert flags & libvirt.VIR_MIGRATE_TLS, strategy


@pytest.mark.parametrize("preempt", [True, False])
def test_postcopy_through_libvirt_runs_preempted_whatever_the_plan_says(preempt: bool) -> None:
    """libvirt 11.3 sets postcopy-preempt with VIR_MIGRATE_POSTCOPY whenever both QEMUs have it
    (and has no flag for it): the job says it ran so; pre-copy has none."""
    spec = MigrationSpec(strategy="postcopy", postcopy_preempt=preempt)
    postcopy = LibvirtMigration(None, None, plan_for(spec), "qemu+tcp://d/system", None)  # type: ignore[arg-type]
    assert postcopy.postcopy_preempt
    precopy = LibvirtMigration(None, None, plan_for(MigrationSpec()), "qemu+tcp://d/system", None)  # type: ignore[arg-type]
    assert not precopy.postcopy_preempt


def test_a_running_job_reports_no_downtime_and_a_completed_one_does() -> None:
    job = {
        "type": 2, "time_elapsed": 1500, "downtime": 300, "memory_processed": 100 * MIB,
        "memory_remaining": 20 * MIB, "memory_total": 512 * MIB, "memory_iteration": 3,
        "memory_bps": 12_500_000, "memory_constant": 1000, "memory_normal": 25600,
        "memory_normal_bytes": 100 * MIB, "memory_dirty_rate": 256, "memory_page_size": 4096,
        "disk_processed": 5 * MIB, "disk_total": 256 * MIB, "auto_converge_throttle": 30,
    }  # fmt: skip
    running = stats_from_job(job, MigrationStatus.ACTIVE)
    assert running.downtime_ms is None  # while running, libvirt's "downtime" is the limit
    assert running.transferred_bytes == 100 * MIB
    assert running.remaining_bytes == 20 * MIB
    assert running.iterations == 3
    assert running.throughput_mbit_s == pytest.approx(100.0)
    assert running.disk_transferred_bytes == 5 * MIB
    assert running.cpu_throttle_pct == 30
    assert running.precopy_bytes is None and running.postcopy_bytes is None
    done = stats_from_job({**job, "downtime": 42}, MigrationStatus.COMPLETED)
    assert done.downtime_ms == 42.0
    assert done.total_time_ms == 1500.0


@pytest.mark.parametrize(
    ("state", "reason", "incoming", "expected"),
    [
        ("RUNNING", "RUNNING_MIGRATED", True, RunState.RUNNING),
        ("RUNNING", "RUNNING_POSTCOPY_FAILED", True, RunState.PAUSED),
        ("PAUSED", "PAUSED_MIGRATION", True, RunState.INCOMING),
        ("PAUSED", "PAUSED_MIGRATION", False, RunState.FINISHING),
        ("PAUSED", "PAUSED_USER", False, RunState.PAUSED),
        ("PAUSED", "PAUSED_POSTCOPY", False, RunState.MIGRATED),
        ("SHUTOFF", "SHUTOFF_MIGRATED", False, RunState.MIGRATED),
        ("SHUTOFF", "SHUTOFF_DESTROYED", False, RunState.GONE),
    ],
)
def test_domain_states(state: str, reason: str, incoming: bool, expected: RunState) -> None:
    got = run_state(
        getattr(libvirt, f"VIR_DOMAIN_{state}"), getattr(libvirt, f"VIR_DOMAIN_{reason}"), incoming
    )
    assert got == expected


def config(disk_url: str, cpu_model: str = "qemu64") -> VmConfig:
    return VmConfig(
        name="web", memory_mib=512, vcpus=1, cpu_model=cpu_model, accel="tcg",
        kernel=Path("/k"), initrd=Path("/i"), kernel_cmdline="console=ttyS0 ip=x",
        disk_url=disk_url, mac="52:54:00:12:34:56", machine="pc-q35-10.0",
    )  # fmt: skip


def test_the_testbed_guest_as_domain_xml() -> None:
    xml = domain_xml(
        config("nfs://10.241.0.3/srv/export/d.qcow2", "Westmere,aes=on,-x2apic"),
        "vmigs-tap",
        Path("/run/serial-source.log"),
    )
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("memory") == "512" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.find("os/type").get("machine") == "pc-q35-10.0"  # type: ignore[union-attr]
    assert root.findtext("os/cmdline") == "console=ttyS0 ip=x"
    assert root.findtext("cpu/model") == "Westmere"
    features = {f.get("name"): f.get("policy") for f in root.iterfind("cpu/feature")}
    assert features == {"aes": "require", "x2apic": "disable"}
    disk = root.find("devices/disk")
    assert disk is not None and disk.get("type") == "network"
    assert disk.find("source").get("protocol") == "nfs"  # type: ignore[union-attr]
    assert disk.find("source").get("name") == "/srv/export/d.qcow2"  # type: ignore[union-attr]
    assert disk.find("source/host").get("name") == "10.241.0.3"  # type: ignore[union-attr]
    assert disk.find("driver").get("cache") == "none"  # type: ignore[union-attr]
    nic = root.find("devices/interface")
    assert nic is not None and nic.get("type") == "ethernet"
    assert nic.find("target").get("dev") == "vmigs-tap"  # type: ignore[union-attr]
    assert nic.find("target").get("managed") == "no"  # type: ignore[union-attr]
    moved = ET.fromstring(with_console(xml, Path("/run/serial-destination.log")))
    assert moved.find("devices/serial/source").get("path") == "/run/serial-destination.log"  # type: ignore[union-attr]


def test_a_local_disk_is_a_file() -> None:
    root = ET.fromstring(domain_xml(config("/var/lib/libvirt/images/d.qcow2"), "t", Path("/s")))
    disk = root.find("devices/disk")
    assert disk is not None and disk.get("type") == "file"
    assert disk.find("source").get("file") == "/var/lib/libvirt/images/d.qcow2"  # type: ignore[union-attr]


class SlowDomain:
    """A domain handle whose removal takes a while (a daemon that holds it) or fails; it notes
    when it began and ended."""

    def __init__(self, host_role: str, fails: bool = False) -> None:
        self.host_role, self.fails = host_role, fails
        self.removed = False
        self.span: tuple[float, float] = (0.0, 0.0)

    async def shutdown(self) -> None:
        began = time.monotonic()
        await asyncio.sleep(0.2)
        self.span = (began, time.monotonic())
        if self.fails:
            raise RuntimeError("cannot acquire state change lock")
        self.removed = True


def test_close_removes_the_domains_at_once_and_a_failure_stops_no_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hypervisor = LibvirtHypervisor(
        LibvirtHost("source", "qemu:///a"), LibvirtHost("destination", "qemu:///b"), tmp_path
    )
    source = SlowDomain("source", fails=True)
    destination = SlowDomain("destination")
    hypervisor.domains = [source, destination]  # type: ignore[list-item]
    asyncio.run(hypervisor.close())
    # Not one after the other: each began before the other ended.
    assert source.span[0] < destination.span[1] and destination.span[0] < source.span[1]
    assert destination.removed and not source.removed
    assert "removing the domain on the source: cannot acquire state change lock" in caplog.text
