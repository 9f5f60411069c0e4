"""Where the testbed's VM lives: its disks (one on the NFS export, or one per host), the
configuration both hosts run it with, and the backend that runs it there (QEMU started by
vmigrate, or the hosts' libvirtd). The VM fills a slot (slot.py): guest 0 from the source to
the destination unless told otherwise; its address and MAC go into its configuration, its tap
and the testbed hosts that play its source and destination into the backend, and its names,
labels and ports keep it apart from the other VMs of the testbed."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from vmigrate.config import Scenario
from vmigrate.guest.facts import guest_cmdline
from vmigrate.guest.image import GuestImage
from vmigrate.hypervisor.base import Backend, HostPlace, Hypervisor, VmConfig
from vmigrate.hypervisor.libvirt_backend import LibvirtHost, LibvirtHypervisor
from vmigrate.hypervisor.qemu_backend import QemuHypervisor
from vmigrate.hypervisor.tls import make_certificates
from vmigrate.proc import run
from vmigrate.slot import DEFAULT_SLOT, VmSlot
from vmigrate.testbed.libvirtd import IMAGES_DIR
from vmigrate.testbed.network import PAIR
from vmigrate.testbed.testbed import Testbed

DISK_SIZE = "256M"


def create_disk(path: Path) -> None:
    """An empty qcow2 disk of the guest's size (replacing whatever was there)."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), DISK_SIZE])


class Placement:
    """The scenario's VM in `slot` of the testbed: as its guest (address, MAC and taps; guest
    0's tap every hypervisor host has, another guest's taps must be made first:
    `Testbed.add_guest_taps`), on the testbed hosts that play its source and destination."""

    def __init__(
        self, scenario: Scenario, testbed: Testbed, out_dir: Path, slot: VmSlot = DEFAULT_SLOT
    ) -> None:
        self.scenario = scenario
        self.testbed = testbed
        self.out_dir = out_dir
        self.slot = slot
        self.nic = slot.nic
        self.disk_name = ""  # set by create_disks

    def hypervisor(self, disks: dict[str, Path]) -> Hypervisor:
        """The backend that runs this scenario's VM on the slot's hosts (named by the roles the
        VM sees them in, reached where the testbed has them). `disks` by role; the backend
        reads it when it moves the VM, so a disk replaced there later is the one it uses."""
        testbed, slot = self.testbed, self.slot
        tls_dirs = self.certificates() if self.scenario.migration.tls else None
        if self.libvirt:
            return LibvirtHypervisor(
                self.libvirt_host("source"), self.libvirt_host("destination"), self.out_dir
            )

        def target_disk(role: str) -> str:
            """A fresh empty disk on host `role`, which the VM moves to (each attempt starts
            its copy over; the VM's earlier instance there, if any, is gone)."""
            create_disk(disks[role])
            return str(disks[role])

        return QemuHypervisor(
            self.host_place("source"),
            self.host_place("destination"),
            log_dir=self.out_dir,
            socket_dir=testbed.dir / "run",
            on_start=testbed.state.add_process,
            on_exit=testbed.state.forget_process,
            target_disk=target_disk if "destination" in disks else None,
            tls_dirs=tls_dirs,
            instance=slot.qemu,
        )

    def host_place(self, role: str) -> HostPlace:
        """The QEMU backend's view of the slot's host playing `role`."""
        host = self.slot.host(self.testbed, role)
        tap = self.nic.tap(self.testbed.name)
        return HostPlace(role, host.netns, tap, host.ip, self.scenario.hosts.cpu(role))

    def libvirt_host(self, role: str) -> LibvirtHost:
        """How the libvirt backend reaches the daemon of the slot's host playing `role`."""
        testbed = self.testbed
        host = self.slot.host(testbed, role).role
        return LibvirtHost(
            role,
            uri=testbed.libvirt_uri(host),
            peer_uri=testbed.libvirt_tcp_uri(host),
            migration_uri=testbed.libvirt_migration_uri(host),
            root=testbed.libvirt_root(host),
            tap=self.nic.tap(testbed.name),
        )

    async def retarget(self, hypervisor: Hypervisor) -> None:
        """Point `hypervisor` (made by `hypervisor()` for an earlier slot, its VM not moved yet)
        at the destination host of the current slot.

        :raise HypervisorError: the new destination's libvirtd does not answer."""
        if isinstance(hypervisor, LibvirtHypervisor):
            await hypervisor.retarget(self.libvirt_host("destination"))
        elif isinstance(hypervisor, QemuHypervisor):
            hypervisor.retarget(self.host_place("destination"))
        else:  # pragma: no cover - every backend the testbed runs is above
            raise TypeError(f"cannot retarget a {type(hypervisor).__name__}")

    def certificates(self) -> dict[str, Path]:
        """This run's TLS certificates (migration.tls): a fresh CA, and for the source and the
        destination a server certificate for its address and a client certificate, where its QEMU
        (or libvirtd's) reads them; the directories by the VM's host role. Each VM's QEMUs have
        their own directory per host; a host's libvirtd has one for all its VMs (so VMs beside
        each other under libvirt must share one CA, made once for all of them: not here)."""
        hosts = {role: self.slot.host(self.testbed, role) for role in PAIR}
        dirs = {role: self.testbed.tls_dir(host.role, self.libvirt) for role, host in hosts.items()}
        if self.slot.tag and not self.libvirt:
            dirs = {role: path.with_name(f"tls-{self.slot.tag}") for role, path in dirs.items()}
        make_certificates(
            {role: (hosts[role].ip, path) for role, path in dirs.items()}, label=self.out_dir.name
        )
        return dirs

    def create_disks(self) -> dict[str, Path]:
        """Fresh qcow2 disks for this run (recorded, so `testbed down` removes them too): one in
        the NFS export for shared storage; one on each of the slot's hosts for local storage (the
        destination's stays empty until the migration copies the source's into it). By the VM's
        host role; named after the VM (its slot), the time and this process."""
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.disk_name = f"{self.slot.name(self.scenario.name)}-{stamp}-{os.getpid()}.qcow2"
        if self.scenario.storage.mode == "shared-nfs":
            return {"source": self._new_disk(self.testbed.export_dir)}
        return {role: self._new_disk(self._local_dir(role)) for role in PAIR}

    def destination_disk(self) -> Path:
        """A fresh disk on the slot's destination host (storage not shared), for a destination
        chosen after `create_disks`; the same name as the others."""
        return self._new_disk(self._local_dir("destination"))

    def _local_dir(self, role: str) -> Path:
        """Where the slot's host playing `role` keeps its own disks."""
        host = self.slot.host(self.testbed, role).role
        if self.libvirt:
            return self.testbed.libvirt_images_dir(host)
        return self.testbed.local_disk_dir(host)

    def _new_disk(self, directory: Path) -> Path:
        """An empty disk of this run's name in `directory`, recorded in the testbed's state."""
        directory.mkdir(parents=True, exist_ok=True)
        disk = directory / self.disk_name
        self.testbed.state.add_path(disk)
        create_disk(disk)
        return disk

    @property
    def libvirt(self) -> bool:
        """True when libvirt runs the VM (hosts.backend = libvirt)."""
        return Backend(self.scenario.hosts.backend) == Backend.LIBVIRT

    def disk_url(self, disk: Path) -> str:
        """How the hypervisor opens `disk`: over NFS, or as a local file (under libvirt at the
        path its daemons see, the same on every host)."""
        if self.scenario.storage.mode == "shared-nfs":
            return self.testbed.nfs_url(disk)
        return f"{IMAGES_DIR}/{disk.name}" if self.libvirt else str(disk)

    def vm_config(
        self, image: GuestImage, disk: Path, accel: str, cpu_model: str, machine: str
    ) -> VmConfig:
        """The VM both hosts run: the scenario's size, the settled CPU model and machine type,
        our kernel and initrd, the guest's address and MAC, its disk."""
        scenario = self.scenario
        return VmConfig(
            name=self.slot.name(scenario.name),
            memory_mib=scenario.vm.memory_mib,
            vcpus=scenario.vm.vcpus,
            cpu_model=cpu_model,
            machine=machine,
            disk_cache=scenario.vm.disk_cache,
            accel=accel,
            kernel=image.kernel,
            initrd=image.initrd,
            kernel_cmdline=guest_cmdline(scenario, self.nic.ip),
            disk_url=self.disk_url(disk),
            mac=self.nic.mac,
        )
