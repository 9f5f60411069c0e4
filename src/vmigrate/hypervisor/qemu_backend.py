"""The QEMU backend: vmigrate starts one qemu-system process per host itself (in the host's
namespace) and drives both ends over QMP."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import (
    Backend,
    Domain,
    HostPlace,
    Hypervisor,
    Migration,
    VmConfig,
    other_host,
)
from vmigrate.hypervisor.plan import MigrationPlan
from vmigrate.hypervisor.qemu import QemuDomain
from vmigrate.hypervisor.qemu_migration import DiskMirror, QemuMigration
from vmigrate.testbed.network import PAIR

log = logging.getLogger(__name__)

MIGRATION_PORT = 4444
NBD_PORT = 10809


@dataclass(frozen=True)
class QemuInstance:
    """What sets one VM's QEMUs apart from other VMs' QEMUs on the same hosts: `tag` ends their
    process labels and QMP socket names ("": a VM alone on its hosts, the names as they always
    were), and the ports its destination listens on for the RAM and the disk copy."""

    tag: str = ""
    migration_port: int = MIGRATION_PORT
    nbd_port: int = NBD_PORT

    def _tagged(self, stem: str) -> str:
        return f"{stem}-{self.tag}" if self.tag else stem

    def label(self, role: str) -> str:
        """The label of this VM's QEMU on host `role` in the testbed's state file."""
        return self._tagged(f"qemu-{role}")

    def qmp_socket(self, socket_dir: Path, role: str) -> Path:
        """Where this VM's QEMU on host `role` opens its QMP socket."""
        return socket_dir / (self._tagged(f"qmp-{role}") + ".sock")

    def labels(self) -> tuple[str, ...]:
        """The labels of this VM's QEMUs on either host."""
        return tuple(self.label(role) for role in PAIR)


class QemuHypervisor(Hypervisor):
    """QEMU on the source and destination hosts of the testbed.

    A migration starts the incoming QEMU on the host the VM is not on (`other_host`), with
    that host's tap, address and CPU ceiling: a VM moves to the destination and may move back.
    A host's tap serves one QEMU at a time, so the QEMU a VM left must be shut down before the
    VM comes back to that host.

    `on_start(pid, label)` / `on_exit(pid)` record each QEMU process the moment it exists and
    once it is gone (the testbed's state file); `target_disk(role)`, for storage that is not
    shared, gives host `role` a fresh empty disk (its path) before each attempt to move there;
    `tls_dirs`, for an encrypted migration, where each host's certificates are (by role);
    `instance`, what sets this VM's QEMUs apart from others on the same hosts (labels, QMP
    sockets in `socket_dir`, ports).
    """

    backend = Backend.QEMU

    def __init__(
        self,
        source: HostPlace,
        destination: HostPlace,
        log_dir: Path,
        socket_dir: Path,
        on_start: Callable[[int, str], None],
        on_exit: Callable[[int], None],
        target_disk: Callable[[str], str] | None = None,
        tls_dirs: Mapping[str, Path] | None = None,
        instance: QemuInstance = QemuInstance(),
    ) -> None:
        self.places = {"source": source, "destination": destination}
        self.log_dir = log_dir
        self.socket_dir = socket_dir
        self.on_start = on_start
        self.on_exit = on_exit
        self.target_disk = target_disk
        self.tls_dirs = tls_dirs
        self.instance = instance
        self.config: VmConfig | None = None
        self.domains: list[QemuDomain] = []
        self._version = ""

    async def _launch(self, role: str, config: VmConfig, incoming: str | None) -> QemuDomain:
        place = self.places[role]
        domain = await QemuDomain.launch(
            host_role=role,
            netns=place.netns,
            tap=place.tap,
            config=config,
            log_dir=self.log_dir,
            qmp_socket=self.instance.qmp_socket(self.socket_dir, role),
            incoming=incoming,
            on_start=lambda pid: self.on_start(pid, self.instance.label(role)),
            on_exit=self.on_exit,
            cpu_ceiling=place.cpu_ceiling,
        )
        # QEMUs already shut down are forgotten: a VM hopping back and forth leaves no trail.
        self.domains = [d for d in self.domains if not d.released] + [domain]
        return domain

    def retarget(self, destination: HostPlace) -> None:
        """Move the VM to another host than the one given at first (a drain places its VMs
        once they run): before its first migration only, while no QEMU runs there.

        :raise HypervisorError: the VM already has a QEMU on the destination."""
        if any(d.host_role == "destination" and not d.released for d in self.domains):
            raise HypervisorError("the VM already has a QEMU on its destination host")
        self.places["destination"] = destination

    async def boot(self, config: VmConfig) -> Domain:
        self.config = config
        domain = await self._launch("source", config, None)
        self._version = await domain.version()
        return domain

    async def prepare_migration(self, source: Domain, plan: MigrationPlan) -> Migration:
        """Start QEMU with `-incoming defer` on the host the VM is not on (a fresh one each
        attempt: an abandoned incoming QEMU is spent) and configure both ends.

        :raise HypervisorError: the target host refuses the VM, or a QEMU still holds its tap."""
        if self.config is None or not isinstance(source, QemuDomain):
            raise HypervisorError("the QEMU backend migrates only a VM it booted itself")
        if plan.tls and self.tls_dirs is None:
            raise HypervisorError("an encrypted migration needs the hosts' TLS certificates")
        target = other_host(source.host_role)
        if any(d.host_role == target and d.process_id() is not None for d in self.domains):
            raise HypervisorError(
                f"a QEMU still runs on the {target} (its tap serves one at a time): shut down "
                "the VM's earlier instance there before moving the VM back"
            )
        config = self.config
        if plan.copy_storage:
            if self.target_disk is None:
                raise HypervisorError("storage that is not shared needs a disk on each host")
            config = dataclasses.replace(config, disk_url=self.target_disk(target))
        destination = await self._launch(target, config, "defer")
        address = self.places[target].ip
        mirror = (
            DiskMirror(source, destination, address, self.instance.nbd_port, plan.tls)
            if plan.copy_storage
            else None
        )
        migration = QemuMigration(
            source,
            destination,
            plan,
            f"tcp:{address}:{self.instance.migration_port}",
            mirror,
            tls_hostname=address,
            tls_dirs=self.tls_dirs,
        )
        try:
            await migration.configure()
        except BaseException:
            await destination.shutdown()
            raise
        return migration

    def listen_ports(self, plan: MigrationPlan) -> dict[str, int]:
        ports = {"migration": self.instance.migration_port}
        if plan.copy_storage:
            ports["nbd"] = self.instance.nbd_port
        return ports

    async def versions(self) -> dict[str, str]:
        return {"qemu_version": self._version}

    async def close(self) -> None:
        for domain in reversed(self.domains):
            try:
                await domain.shutdown()
            except Exception as exc:  # every VM gets its turn, whatever the one before did
                log.warning("stopping QEMU on %s: %s", domain.host_role, exc)
