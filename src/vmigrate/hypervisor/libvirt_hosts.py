"""What libvirt says about a pair of hosts before a migration: does the destination offer the
domain's CPU (compareHypervisorCPU), which CPU both hosts offer (baselineHypervisorCPU over
their host-model CPUs), how much memory the destination has free. Answers, not checks: the
pre-flight (migration/) turns them into pass/warn/fail with a fix."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from vmigrate import libvirt_client
from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.libvirt_backend import LibvirtHypervisor
from vmigrate.hypervisor.libvirt_domain import LibvirtDomain


@dataclass(frozen=True)
class CpuVerdict:
    """The destination's word on the domain's CPU."""

    mode: str  # custom | host-model | host-passthrough | maximum
    model: str  # the domain's CPU model ("" when it names none)
    compatible: bool | None  # None: not comparable (host-passthrough: must be the same CPU)
    detail: str  # libvirt's own words
    baseline: str  # a model both hosts offer ("" when libvirt cannot tell)


@dataclass(frozen=True)
class DomainSize:
    """What the domain needs on the destination."""

    memory_bytes: int
    virt_type: str  # kvm | qemu


def domain_cpu(domain_xml: str) -> tuple[str, str, str, str]:
    """(virt type, CPU mode, CPU model, the <cpu> element as XML) of a domain's XML."""
    root = ET.fromstring(domain_xml)
    cpu = root.find("cpu")
    if cpu is None:
        return root.get("type", "kvm"), "default", "", ""
    return (
        root.get("type", "kvm"),
        cpu.get("mode", "custom"),
        cpu.findtext("model") or "",
        ET.tostring(cpu, encoding="unicode"),
    )


def host_model_cpu(domcaps_xml: str) -> str:
    """The host-model CPU of a host's domain capabilities, as a <cpu> element."""
    root = ET.fromstring(domcaps_xml)
    mode = root.find("cpu/mode[@name='host-model']")
    if mode is None or mode.findtext("model") is None:
        return ""
    cpu = ET.Element("cpu", mode="custom", match="exact")
    model = ET.SubElement(cpu, "model", fallback="forbid")
    model.text = mode.findtext("model")
    for feature in mode.iterfind("feature"):
        ET.SubElement(cpu, "feature", policy=feature.get("policy", "require"),
                      name=feature.get("name", ""))  # fmt: skip
    return ET.tostring(cpu, encoding="unicode")


async def domain_size(hv: LibvirtHypervisor, source: LibvirtDomain) -> DomainSize:
    """The domain's memory and virtualisation type."""
    dom = await source.virdomain()
    info = await source.call("read the domain's size", dom.info)
    xml = await source.call("read the domain XML", lambda: dom.XMLDesc(0))
    return DomainSize(memory_bytes=int(info[1]) * 1024, virt_type=domain_cpu(xml)[0])


async def cpu_verdict(hv: LibvirtHypervisor, source: LibvirtDomain) -> CpuVerdict:
    """Does the destination offer the domain's CPU, and which model would both hosts offer."""
    libvirt = libvirt_client.load()
    dom = await source.virdomain()
    xml = await source.call("read the domain XML", lambda: dom.XMLDesc(0))
    virt_type, mode, model, cpu = domain_cpu(xml)
    destination = hv.conns["destination"]
    compatible: bool | None = None
    detail = ""
    if mode == "host-passthrough":
        detail = "host-passthrough: the destination must have the very same CPU"
    elif cpu:
        flags = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
        try:
            answer = await asyncio.to_thread(
                destination.compareHypervisorCPU, None, None, None, virt_type, cpu, flags
            )
            compatible = answer != libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
            detail = "identical" if answer == libvirt.VIR_CPU_COMPARE_IDENTICAL else "superset"
        except libvirt.libvirtError as exc:
            compatible = False
            detail = libvirt_client.error_text(exc)
    return CpuVerdict(mode, model, compatible, detail, await _baseline(hv, virt_type))


async def _baseline(hv: LibvirtHypervisor, virt_type: str) -> str:
    """The model of the CPU both hosts offer (baselineHypervisorCPU over host-model CPUs)."""
    libvirt = libvirt_client.load()
    models = []
    for conn in (hv.conns["source"], hv.conns["destination"]):
        try:
            caps = await asyncio.to_thread(
                conn.getDomainCapabilities, None, None, None, virt_type, 0
            )
        except libvirt.libvirtError:
            return ""
        models.append(host_model_cpu(caps))
    if not all(models):
        return ""
    try:
        text = await asyncio.to_thread(
            hv.conns["source"].baselineHypervisorCPU, None, None, None, virt_type, models, 0
        )
    except libvirt.libvirtError:
        return ""
    return ET.fromstring(text).findtext("model") or ""


async def free_memory_bytes(hv: LibvirtHypervisor, role: str) -> int:
    """Free memory of a host (libvirt's node free memory)."""
    conn: Any = hv.conns[role]
    try:
        return int(await asyncio.to_thread(conn.getFreeMemory))
    except libvirt_client.load().libvirtError as exc:
        raise HypervisorError(
            f"libvirt on the {role} cannot tell its free memory: {libvirt_client.error_text(exc)}"
        ) from exc
