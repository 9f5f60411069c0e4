"""`vmigrate doctor`: is this machine able to run the testbed? Each finding names its fix.

Kernel features are tried for real (a throwaway namespace with a bridge, a tap and a tbf
qdisc), and so is libvirtd (a throwaway daemon in private mount and network namespaces), not
inferred from file names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmigrate.proc import run

SETUP_HINT = "make setup"


@dataclass(frozen=True)
class Finding:
    """One check: did it pass, what was seen, and what to do when it did not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _tool(name: str, package: str) -> Finding:
    path = shutil.which(name)
    return Finding(
        name,
        path is not None,
        path or "not found",
        fix=f"apt-get install {package}",
    )


def _file(name: str, path: Path, package: str) -> Finding:
    return Finding(name, path.exists(), str(path), fix=f"apt-get install {package}")


def _qemu_block_nfs() -> Finding:
    candidates = list(Path("/usr/lib").glob("*/qemu/block-nfs.so"))
    return Finding(
        "QEMU nfs:// block driver",
        bool(candidates),
        str(candidates[0]) if candidates else "block-nfs.so not found",
        fix="apt-get install qemu-block-extra",
    )


def _ganesha_vfs() -> Finding:
    candidates = list(Path("/usr/lib").glob("*/ganesha/libfsalvfs.so"))
    return Finding(
        "nfs-ganesha VFS backend",
        bool(candidates),
        str(candidates[0]) if candidates else "libfsalvfs.so not found",
        fix="apt-get install nfs-ganesha-vfs",
    )


def _kernel_networking() -> Finding:
    """Create a namespace with a bridge, a tap and a tbf qdisc, then delete it."""
    ns = f"vmigdoctor{os.getpid()}"
    steps = [
        (["ip", "netns", "add", ns], "network namespaces"),
        (["ip", "-n", ns, "link", "add", "d-br", "type", "bridge"], "bridge"),
        (["ip", "-n", ns, "tuntap", "add", "dev", "d-tap", "mode", "tap"], "tun/tap"),
        (["ip", "-n", ns, "link", "add", "d-a", "type", "veth", "peer", "name", "d-b"], "veth"),
        (
            [
                "tc",
                "-n",
                ns,
                "qdisc",
                "add",
                "dev",
                "d-a",
                "root",
                "tbf",
                "rate",
                "100mbit",
                "burst",
                "64k",
                "latency",
                "50ms",
            ],
            "tbf shaping",
        ),
    ]
    try:
        for argv, feature in steps:
            done = run(argv, check=False)
            if done.returncode != 0:
                return Finding(
                    "kernel networking",
                    False,
                    f"{feature} failed: {done.stderr.strip()}",
                    fix="a kernel with netns, bridge, veth, tun and sch_tbf (modprobe them)",
                )
    finally:
        run(["ip", "netns", "delete", ns], check=False)
    return Finding("kernel networking", True, "netns, bridge, veth, tap, tbf all work")


def _kvm() -> Finding:
    """Whether accel=auto will use KVM: the bounded boot probe's verdict (cached per boot)."""
    from vmigrate.guest.build import load_cached_image
    from vmigrate.hypervisor.accel import resolve_accel

    if not os.path.exists("/dev/kvm"):
        return Finding("KVM", False, "/dev/kvm absent: TCG will be used", required=False)
    image = load_cached_image()
    if image is None:
        return Finding("KVM", False, "not probed yet (needs the guest image)",
                       fix="vmigrate image build", required=False)  # fmt: skip
    accel, reason = resolve_accel("auto", image.kernel)
    detail = f"{reason}; accel=auto uses {accel.upper()}"
    return Finding("KVM", accel == "kvm", detail, fix="none needed: TCG works", required=False)


def _qemu_version() -> Finding:
    """QEMU >= 9.0: older ones lose guest writes when migrating a TCG guest (padded around)."""
    from vmigrate.hypervisor.qemu import FIXED_TCG_DIRTY_TRACKING, qemu_version

    version = qemu_version()
    ok = version[:2] >= FIXED_TCG_DIRTY_TRACKING
    detail = ".".join(map(str, version))
    if not ok:
        detail += ": TCG dirty tracking bug, worked around by padding RAM (stalls the guest)"
    return Finding(
        "QEMU >= 9.0", ok, detail, fix="make setup (QEMU from bookworm-backports)", required=False
    )


LIBVIRT_FIX = "make setup (libvirt 11 from bookworm-backports, libvirt-python in .venv)"
#: libvirt 9.0 (Debian 12's own) passes QEMU 10 the removed -no-acpi and refuses multifd zstd.
MIN_LIBVIRT = (11, 0)


def _libvirt_versions() -> Finding:
    """libvirt's library (as libvirt-python loads it) and libvirtd: present, and >= 11.0."""
    from vmigrate.errors import VmigrateError
    from vmigrate.testbed import libvirtd

    name = "libvirt (library, libvirtd)"
    try:
        library = libvirtd.library_version()
        daemon = libvirtd.daemon_version()
    except (VmigrateError, OSError, subprocess.SubprocessError) as exc:
        return Finding(name, False, str(exc).split(":")[0], fix=LIBVIRT_FIX, required=False)
    numbers = tuple(int(x) for x in daemon.split(".")[:2] if x.isdigit())
    ok = numbers >= MIN_LIBVIRT and library.split(".")[:2] == daemon.split(".")[:2]
    detail = f"library {library}, libvirtd {daemon}"
    if numbers < MIN_LIBVIRT:
        detail += ": too old for QEMU 10 (-no-acpi, multifd zstd)"
    elif not ok:
        detail += ": different versions"
    return Finding(name, ok, detail, fix=LIBVIRT_FIX, required=False)


def _libvirtd_starts() -> Finding:
    """A throwaway libvirtd really starts (private mount and network namespaces) and answers."""
    from vmigrate.testbed import libvirtd

    try:
        detail = libvirtd.probe()
    except Exception as exc:  # TestbedError with its log; libvirtError, OSError: all a "no"
        lines = str(exc).strip().splitlines()
        detail = lines[0] + (f" … {lines[-1].strip()}" if len(lines) > 1 else "")
        return Finding("libvirtd starts", False, detail, fix=LIBVIRT_FIX, required=False)
    return Finding("libvirtd starts", True, detail, required=False)


def _guest_image() -> Finding:
    from vmigrate.guest.build import load_cached_image

    image = load_cached_image()
    return Finding(
        "guest image",
        image is not None,
        f"{image.initrd.parent} (kernel {image.kernel_version})" if image else "not built yet",
        fix="vmigrate image build",
    )


def diagnose() -> list[Finding]:
    """Every check, in the order a person would fix them."""
    findings = [
        Finding("root", os.geteuid() == 0, f"euid {os.geteuid()}", fix="run as root (sudo)"),
        _tool("qemu-system-x86_64", "qemu-system-x86"),
        _tool("qemu-img", "qemu-utils"),
        *([_qemu_version()] if shutil.which("qemu-system-x86_64") else []),
        _qemu_block_nfs(),
        _tool("ganesha.nfsd", "nfs-ganesha"),
        _ganesha_vfs(),
        _tool("rpcbind", "rpcbind"),
        _tool("ip", "iproute2"),
        _tool("tc", "iproute2"),
        _tool("iptables", "iptables"),
        _tool("tcpdump", "tcpdump"),
        _file("busybox-static", Path("/bin/busybox"), "busybox-static"),
        _tool("gcc", "gcc libc6-dev"),
        _file(
            "userfaultfd (post-copy)",
            Path("/proc/sys/vm/unprivileged_userfaultfd"),
            "a kernel with CONFIG_USERFAULTFD",
        ),
    ]
    if os.geteuid() == 0 and shutil.which("ip") and shutil.which("tc"):
        findings.append(_kernel_networking())
    libvirt = _libvirt_versions()
    findings.append(libvirt)
    if libvirt.ok and os.geteuid() == 0:
        findings.append(_libvirtd_starts())
    findings.append(_kvm())
    findings.append(_guest_image())
    return findings
