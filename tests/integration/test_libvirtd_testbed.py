"""libvirtd on the testbed, for real: one daemon per hypervisor host, each in its host's network
namespace and a private mount namespace; a live peer-to-peer migration between them; teardown
that leaves nothing, also after the vmigrate that brought them up was SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import leftovers, processes_in

from vmigrate import libvirt_client
from vmigrate.errors import TestbedError
from vmigrate.guest.build import build_image
from vmigrate.guest.cmdline import kernel_cmdline
from vmigrate.guest.image import GuestImage
from vmigrate.testbed import libvirtd, libvirtd_config
from vmigrate.testbed.testbed import Testbed

pytestmark = pytest.mark.timeout(600)

NAME = "vmlvt"


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_image(progress=lambda m: print(f"[image] {m}"))


def domain_xml(bed: Testbed, image: GuestImage, name: str, role: str = "source") -> str:
    """A small TCG guest booting the built kernel + initramfs, on the host's tap, no disk."""
    cmdline = kernel_cmdline(f"{bed.guest_ip}/24", workload="idle", extra=["panic=-1"])
    return textwrap.dedent(f"""\
        <domain type='qemu'>
          <name>{name}</name>
          <memory unit='MiB'>256</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='q35'>hvm</type>
            <kernel>{image.kernel}</kernel>
            <initrd>{image.initrd}</initrd>
            <cmdline>{cmdline}</cmdline>
          </os>
          <features><acpi/></features>
          <cpu mode='custom' match='exact' check='none'>
            <model fallback='forbid'>qemu64</model>
          </cpu>
          <on_poweroff>destroy</on_poweroff>
          <on_reboot>destroy</on_reboot>
          <on_crash>destroy</on_crash>
          <devices>
            <interface type='ethernet'>
              <target dev='{bed.hosts[role].tap}' managed='no'/>
              <mac address='{bed.guest_mac}'/>
              <model type='virtio'/>
            </interface>
            <serial type='file'>
              <source path='/var/log/libvirt/qemu/{name}-serial.log' append='on'/>
              <target port='0'/>
            </serial>
            <controller type='usb' model='none'/>
            <memballoon model='none'/>
          </devices>
        </domain>""")


def guest_answers(bed: Testbed, timeout_s: float) -> bool:
    """True once the guest answers a ping from the client host (within `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run(
            ["ip", "netns", "exec", bed.hosts["client"].netns,
             "ping", "-c", "1", "-W", "1", bed.guest_ip],
            capture_output=True,
        )  # fmt: skip
        if done.returncode == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def qemu_pids(domain: str) -> list[int]:
    """PIDs of QEMU processes that libvirt started for `domain` (by its -name guest=...)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"qemu-system-x86_64")
            and f"guest={domain},".encode() in (b" ".join(argv))
        ):
            found.append(int(proc.name))
    return found


def netns_of(pid: int) -> str:
    return subprocess.run(
        ["ip", "netns", "identify", str(pid)], capture_output=True, text=True
    ).stdout.strip()


def test_libvirtd_per_host_migrates_a_live_domain_peer_to_peer(image: GuestImage) -> None:
    libvirt = libvirt_client.load()
    bed = Testbed(NAME)
    bed.down()
    domain = f"{NAME}-guest"
    conns: dict[str, Any] = {}
    pids: list[int] = []
    try:
        started = time.monotonic()
        bed.up(1000, libvirt=True)
        up_s = time.monotonic() - started
        assert bed.is_healthy() and bed.has_libvirt()
        assert set(bed.status()["libvirt"]) == set(bed.hypervisor_roles)

        # Each daemon: in its host's netns, in a mount namespace of its own, its own host UUID.
        own_mnt = os.stat("/proc/self/ns/mnt").st_ino
        for role in bed.hypervisor_roles:
            uri = bed.libvirt_uri(role)
            pid = int(uri.split("/proc/")[1].split("/")[0])
            assert bed.libvirt_root(role) == Path(f"/proc/{pid}/root")
            assert netns_of(pid) == bed.hosts[role].netns
            assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != own_mnt
            conns[role] = libvirt.open(uri)
            assert libvirtd.capabilities_uuid(conns[role]) == libvirtd_config.host_uuid(NAME, role)
        assert libvirtd.capabilities_uuid(conns["source"]) != libvirtd.capabilities_uuid(
            conns["destination"]
        )
        assert conns["source"].getVersion() >= 9_000_000  # the QEMU driver found QEMU >= 9

        # A guest on the source host's tap, answering the client host.
        dom = conns["source"].defineXML(domain_xml(bed, image, domain))
        started = time.monotonic()
        dom.create()
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        [source_qemu] = qemu_pids(domain)
        assert netns_of(source_qemu) == bed.hosts["source"].netns
        pid_file = bed.libvirt_root("source") / "run/libvirt/qemu" / f"{domain}.pid"
        assert int(pid_file.read_text()) == source_qemu
        assert (bed.libvirt_dir("source") / "log/qemu" / f"{domain}.log").exists()
        assert guest_answers(bed, 60), "the guest never answered on the source host"
        boot_s = time.monotonic() - started

        # Live, peer to peer: the source daemon reaches the destination's over TCP itself.
        started = time.monotonic()
        dom.migrateToURI3(
            bed.libvirt_tcp_uri("destination"),
            {libvirt.VIR_MIGRATE_PARAM_URI: bed.libvirt_migration_uri("destination")},
            libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER,
        )
        migrate_s = time.monotonic() - started
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)  # the source is persistent
        moved = conns["destination"].lookupByName(domain)
        assert moved.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED]
        assert not dom.isActive()
        [dest_qemu] = qemu_pids(domain)
        assert dest_qemu != source_qemu
        assert netns_of(dest_qemu) == bed.hosts["destination"].netns
        assert guest_answers(bed, 10), "the guest did not answer from the destination host"
        print(
            f"\n[libvirt] testbed up with libvirt {up_s:.2f} s; guest answered {boot_s:.1f} s "
            f"after start; migrateToURI3 returned after {migrate_s:.2f} s (libvirt: "
            f"{stats['time_elapsed']} ms total, {stats['downtime']} ms downtime, "
            f"{stats['memory_processed'] / 1e6:.0f} MB sent)"
        )
        pids = processes_in(NAME)
        assert dest_qemu in pids
    finally:
        for conn in conns.values():
            conn.close()
        started = time.monotonic()
        problems = bed.down()
        print(f"[libvirt] testbed down {time.monotonic() - started:.2f} s")
    assert problems == []
    assert leftovers(NAME, pids) == []
    assert qemu_pids(domain) == []
    assert not bed.dir.exists()


CHILD = """
import sys, time
from pathlib import Path
from vmigrate import libvirt_client
from vmigrate.testbed.testbed import Testbed

name, xml_file, ready_file = sys.argv[1:4]
bed = Testbed(name)
bed.up(1000, libvirt=True)
if xml_file:
    conn = libvirt_client.load().open(bed.libvirt_uri("source"))
    conn.defineXML(Path(xml_file).read_text()).create()
Path(ready_file).write_text("ready")
time.sleep(600)
"""


@pytest.mark.parametrize("stage", ["starting", "domain-running"])
def test_down_after_sigkill_removes_daemons_and_their_domains(
    stage: str, image: GuestImage, tmp_path: Path
) -> None:
    """SIGKILL the process that brought libvirtd up (while starting, or with a running
    domain): `vmigrate testbed down` works from the state file alone."""
    name = "vmlvk"
    bed = Testbed(name)
    bed.down()
    domain = f"{name}-guest"
    xml_file = tmp_path / "domain.xml"
    ready = tmp_path / "ready"
    if stage == "domain-running":
        xml_file.write_text(domain_xml(bed, image, domain))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, name, str(xml_file) if xml_file.exists() else "", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "child.err", "w"),  # noqa: SIM115 - the child keeps it
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if stage == "domain-running" and ready.exists():
                break
            if stage == "starting" and bed.state.path.exists():
                labels = [r.name for r in bed.state.resources()]
                if any(label.startswith(libvirtd.LABEL_PREFIX) for label in labels):
                    break
            time.sleep(0.02)
        assert proc.poll() is None, (
            "the child died before it could be killed: "
            + (tmp_path / "child.err").read_text()[-1500:]
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if stage == "domain-running":
        assert len(qemu_pids(domain)) == 1
    pids = processes_in(name) + qemu_pids(domain)
    assert leftovers(name), "the killed run should have left pieces behind for down to remove"
    done = subprocess.run(
        [sys.executable, "-m", "vmigrate", "testbed", "down", "--testbed", name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    if stage == "domain-running":  # destroyed through the daemon, not just swept away
        assert "domains not destroyed" not in done.stderr
    assert leftovers(name, pids) == []
    assert qemu_pids(domain) == []
    assert not bed.dir.exists()


def test_libvirt_joins_a_testbed_that_is_already_up() -> None:
    """`vmigrate testbed up --libvirt` on a testbed up without libvirt adds the daemons and
    keeps the rest (the NFS server is not restarted)."""
    name = "vmlvs"
    bed = Testbed(name)
    bed.down()
    try:
        bed.up(1000)
        assert bed.is_healthy() and not bed.has_libvirt()
        nfs = {r.pid for r in bed.state.resources() if r.name.startswith("nfs")}
        with pytest.raises(TestbedError, match="--libvirt"):
            bed.libvirt_uri("source")
        cli = [sys.executable, "-m", "vmigrate", "testbed"]
        done = subprocess.run(
            [*cli, "up", "--testbed", name, "--libvirt"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads(
            subprocess.run(
                [*cli, "status", "--testbed", name, "--json"], capture_output=True, text=True
            ).stdout
        )
        assert status["up"] is True
        assert status["libvirt"] == {role: bed.libvirt_uri(role) for role in bed.hypervisor_roles}
        assert {r.pid for r in bed.state.resources() if r.name.startswith("nfs")} == nfs
        pids = processes_in(name)
    finally:
        problems = bed.down()
    assert problems == []
    assert leftovers(name, pids) == []
