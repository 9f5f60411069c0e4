"""Pre-flight on your own hosts, through libvirt: the destination's verdict on the domain's CPU
(with a model both hosts offer as the fix), its free memory, the disk cache mode. Each check
says pass, warn or fail, and the fix."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vmigrate.config import Scenario
from vmigrate.hypervisor.libvirt_backend import LibvirtHypervisor
from vmigrate.hypervisor.libvirt_domain import LibvirtDomain
from vmigrate.hypervisor.libvirt_hosts import cpu_verdict, domain_size, free_memory_bytes
from vmigrate.migration.preflight import (
    QEMU_OVERHEAD_MIB,
    SAFE_SHARED_CACHE,
    Check,
    Preflight,
    postcopy_risk_check,
)

MIB = 1024 * 1024


async def own_hosts_preflight(
    scenario: Scenario, hv: LibvirtHypervisor, source: LibvirtDomain, unsafe: bool
) -> Preflight:
    """Every check for migrating `source` between the scenario's hosts."""
    verdict = await cpu_verdict(hv, source)
    report = Preflight(
        cpu_model_requested=verdict.model or verdict.mode,
        cpu_model=verdict.model or verdict.mode,
        machine="",
        unsafe_allowed=unsafe,
    )
    report.checks.append(
        cpu_check(verdict.compatible, verdict.detail, verdict.model, verdict.baseline)
    )
    size = await domain_size(hv, source)
    report.checks.append(
        memory_check(size.memory_bytes, await free_memory_bytes(hv, "destination"))
    )
    dom = await source.virdomain()
    xml = await source.call("read the domain XML", lambda: dom.XMLDesc(0))
    report.checks.append(cache_check(xml, scenario.storage.mode, unsafe))
    report.checks.append(postcopy_risk_check(scenario))
    # Ports: libvirt picks one of the destination's migration range; whether the network
    # between the hosts lets it through shows only when the migration starts.
    return report


def cpu_check(compatible: bool | None, detail: str, model: str, baseline: str) -> Check:
    """The destination's CPU verdict as a check (libvirt's words, and a model both offer)."""
    fix = (
        f"define the domain with a CPU model both hosts offer: <cpu mode='custom'><model>"
        f"{baseline}</model></cpu> (libvirt's baseline of the two hosts)"
        if baseline
        else "define the domain with a CPU model both hosts offer (`virsh hypervisor-cpu-baseline`)"
    )
    figures = {"cpu_model": model, "baseline_model": baseline}
    if compatible is None:
        return Check("cpu", "warn", f"not compared: {detail}", fix, figures)
    if not compatible:
        return Check(
            "cpu",
            "fail",
            f"host CPU does not provide required features of guest CPU {model or '(default)'}: "
            f"{detail}",
            fix,
            figures,
        )
    return Check("cpu", "pass", f"the destination offers the domain's CPU {model} ({detail})",
                 figures=figures)  # fmt: skip


def memory_check(needed_bytes: int, free_bytes: int) -> Check:
    """The destination has room for the domain (its RAM plus QEMU's own)."""
    need = needed_bytes + QEMU_OVERHEAD_MIB * MIB
    figures = {"needed_bytes": need, "destination_free_bytes": free_bytes}
    message = (
        f"the destination has {free_bytes / MIB:.0f} MiB free; the domain needs "
        f"{need / MIB:.0f} MiB (its RAM + {QEMU_OVERHEAD_MIB} MiB QEMU)"
    )
    if free_bytes < need:
        return Check("memory", "fail", message, "free memory on the destination", figures)
    return Check("memory", "pass", message, figures=figures)


def cache_check(domain_xml: str, storage_mode: str, unsafe: bool) -> Check:
    """Shared disks cached on the source make a migration unsafe (libvirt refuses it)."""
    if storage_mode == "local":
        return Check("disk_cache", "pass", "the disks are copied (storage.mode = local)")
    risky = []
    for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
        if disk.get("device", "disk") != "disk" or disk.find("readonly") is not None:
            continue
        driver = disk.find("driver")
        cache = driver.get("cache", "default") if driver is not None else "default"
        if cache not in SAFE_SHARED_CACHE:
            target = disk.find("target")
            risky.append(f"{target.get('dev') if target is not None else '?'} (cache={cache})")
    if not risky:
        return Check("disk_cache", "pass", "every shared disk has cache none or directsync")
    message = "migration is unsafe: shared disks cached on the source: " + ", ".join(risky)
    fix = "set <driver cache='none'/> on those disks, or --unsafe (libvirt's --unsafe)"
    return Check("disk_cache", "warn" if unsafe else "fail", message, fix)
