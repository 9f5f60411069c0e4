"""The domain XML of the testbed's guest: the same VM the QEMU backend starts, described to
libvirt (our kernel, initrd and command line, the host's tap, the disk on NFS or local, the
serial console into a file)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlparse

from vmigrate.hypervisor.base import VmConfig
from vmigrate.hypervisor.cpu import feature_switch
from vmigrate.hypervisor.introspect import QEMU_BINARY


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(config: VmConfig, tap: str, console_log: Path) -> str:
    """A persistent domain for `config`, networked through `tap` (not managed by libvirt)."""
    domain = ET.Element("domain", type="kvm" if config.accel == "kvm" else "qemu")
    _sub(domain, "name", config.name)
    _sub(domain, "memory", str(config.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(config.vcpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=config.machine)
    _sub(os_, "kernel", str(config.kernel))
    _sub(os_, "initrd", str(config.initrd))
    _sub(os_, "cmdline", config.kernel_cmdline)
    _sub(_sub(domain, "features"), "acpi")
    domain.append(cpu_element(config.cpu_model))
    _sub(domain, "clock", offset="utc")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(domain, event, "destroy")
    devices = _sub(domain, "devices")
    _sub(devices, "emulator", shutil.which(QEMU_BINARY) or f"/usr/bin/{QEMU_BINARY}")
    devices.append(disk_element(config.disk_url, config.disk_cache))
    interface = _sub(devices, "interface", type="ethernet")
    _sub(interface, "mac", address=config.mac)
    _sub(interface, "target", dev=tap, managed="no")
    _sub(interface, "model", type="virtio")
    _sub(interface, "rom", enabled="no")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(console_log))
    _sub(serial, "target", port="0")
    _sub(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def cpu_element(cpu_model: str) -> ET.Element:
    """A `-cpu` string ("Westmere,aes=on,-x2apic") as libvirt's custom CPU."""
    name, *switches = cpu_model.split(",")
    cpu = ET.Element("cpu", mode="custom", match="exact", check="none")
    _sub(cpu, "model", name, fallback="forbid")
    for switch in switches:
        feature, on = feature_switch(switch)
        _sub(cpu, "feature", policy="require" if on else "disable", name=feature)
    return cpu


def disk_element(disk_url: str, cache: str) -> ET.Element:
    """The guest disk: nfs://HOST/PATH as a network disk (QEMU's own NFS client), else a file."""
    url = urlparse(disk_url)
    if url.scheme == "nfs":
        disk = ET.Element("disk", type="network", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2", cache=cache)
        source = _sub(disk, "source", protocol="nfs", name=url.path)
        _sub(source, "host", name=url.hostname or "")
    else:
        disk = ET.Element("disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2", cache=cache)
        _sub(disk, "source", file=disk_url)
    _sub(disk, "target", dev="vda", bus="virtio")
    return disk


def with_console(xml: str, console_log: Path) -> str:
    """The same domain XML with its serial console writing to `console_log` (the destination
    keeps its own console file)."""
    domain = ET.fromstring(xml)
    for source in domain.iterfind("devices/serial/source"):
        source.set("path", str(console_log))
    return ET.tostring(domain, encoding="unicode")
