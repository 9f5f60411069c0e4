"""The libvirt backend: the VM runs under libvirtd on each host and moves with libvirt's own
peer-to-peer migration (the source daemon talks to the destination daemon, which starts the
incoming QEMU). In the testbed vmigrate defines the guest itself; on a user's own hosts it
attaches to an existing domain and never changes anything but the migration it was asked for.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmigrate import libvirt_client
from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import (
    Backend,
    Domain,
    Hypervisor,
    Migration,
    VmConfig,
    other_host,
)
from vmigrate.hypervisor.libvirt_domain import LibvirtDomain, remove_domain
from vmigrate.hypervisor.libvirt_migration import LibvirtMigration
from vmigrate.hypervisor.libvirt_xml import domain_xml, with_console
from vmigrate.hypervisor.plan import MigrationPlan

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
MIGRATION_PORT_MIN = 49152  # libvirt's default migration_port_min


@dataclass(frozen=True)
class LibvirtHost:
    """How vmigrate reaches one host's libvirtd, and what it knows of that host.

    `uri` is what vmigrate connects to; `peer_uri` what the source daemon uses to reach this
    (destination) daemon; `migration_uri` where this host's incoming QEMU listens (None: libvirt
    chooses); `root` the daemon's view of the filesystem from here (/proc/PID/root in the
    testbed, for QEMU's PID and log files; None on a remote host); `tap` the host's tap for a
    guest vmigrate defines."""

    role: str
    uri: str
    peer_uri: str = ""
    migration_uri: str | None = None
    root: Path | None = None
    tap: str = ""

    def qemu_pid(self, name: str) -> int | None:
        """The PID of domain `name`'s QEMU on this host, when its pid file is reachable."""
        if self.root is None:
            return None
        try:
            return int((self.root / "run/libvirt/qemu" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def qemu_log(self, name: str) -> Path | None:
        """Where libvirt writes domain `name`'s QEMU output on this host, when reachable."""
        return None if self.root is None else self.root / "var/log/libvirt/qemu" / f"{name}.log"


class LibvirtHypervisor(Hypervisor):
    """libvirtd on the source and destination hosts."""

    backend = Backend.LIBVIRT

    def __init__(self, source: LibvirtHost, destination: LibvirtHost, log_dir: Path) -> None:
        self.hosts = {"source": source, "destination": destination}
        self.log_dir = log_dir
        self.conns: dict[str, Any] = {}
        self.domains: list[LibvirtDomain] = []
        self.name = ""
        self._versions: dict[str, str] = {}

    async def connect(self) -> None:
        """Open both connections (idempotent).

        :raise HypervisorError: a daemon does not answer or refuses."""
        libvirt = libvirt_client.load()
        for role, host in self.hosts.items():
            if role in self.conns:
                continue
            try:
                self.conns[role] = await asyncio.to_thread(
                    libvirt_client.connect, host.uri, CONNECT_TIMEOUT_S
                )
            except (libvirt.libvirtError, TimeoutError) as exc:
                raise HypervisorError(
                    f"cannot reach libvirt on the {role} ({host.uri}): "
                    f"{libvirt_client.error_text(exc)}"
                ) from exc
        conn = self.conns["source"]
        self._versions = {
            "libvirt_version": libvirt_client.version_string(conn.getLibVersion()),
            "qemu_version": libvirt_client.version_string(conn.getVersion()),
        }

    async def retarget(self, destination: LibvirtHost) -> None:
        """Move the VM to another host than the one given at first (a drain places its VMs
        once they run): the connection to the old destination's daemon is closed, the new one
        opened. Before the VM's first migration only.

        :raise HypervisorError: the VM already has a domain there, or the daemon does not
            answer."""
        if any(d.host_role == "destination" and not d.released for d in self.domains):
            raise HypervisorError("the VM already has a domain on its destination host")
        old = self.conns.pop("destination", None)
        self.hosts["destination"] = destination
        if old is not None:
            try:
                await asyncio.to_thread(old.close)
            except Exception as exc:  # a connection we no longer need: noted, not fatal
                log.info("closing the libvirt connection to the old destination: %s", exc)
        if self.conns:  # connected already: connect to the new one too
            await self.connect()

    def _domain(
        self, role: str, name: str, owned: bool, memory_mib: int = 0, incoming: bool = False
    ) -> LibvirtDomain:
        host = self.hosts[role]
        domain = LibvirtDomain(
            self.conns[role],
            name,
            role,
            owned,
            console_log=self.log_dir / f"serial-{role}.log" if owned else None,
            qemu_pid=lambda: host.qemu_pid(name),
            memory_mib=memory_mib,
            incoming=incoming,
        )
        # Handles already released are forgotten: a VM hopping back and forth leaves no trail.
        self.domains = [d for d in self.domains if not d.released] + [domain]
        return domain

    async def boot(self, config: VmConfig) -> Domain:
        """Define the guest on the source daemon (persistent) and start it."""
        await self.connect()
        self.name = config.name
        await self._remove_leftovers(config.name)
        source = self._domain("source", config.name, owned=True, memory_mib=config.memory_mib)
        assert source.console_log is not None
        source.console_log.unlink(missing_ok=True)
        xml = domain_xml(config, self.hosts["source"].tap, source.console_log)
        conn = self.conns["source"]
        dom = await source.call("define the domain", lambda: conn.defineXML(xml))
        await source.call("start the domain", dom.create)
        return source

    async def _remove_leftovers(self, name: str) -> None:
        """The testbed's daemons hold only vmigrate's domains: one of this name left by an
        earlier run (its removal timed out on a job that hung after a fault) is removed now."""
        for role, conn in self.conns.items():
            if await asyncio.to_thread(remove_domain, conn, name, role):
                log.warning("removed domain %s left on the %s by an earlier run", name, role)

    async def attach(self, name: str) -> LibvirtDomain:
        """A domain that already runs on the source (a user's: never changed, only moved).

        :raise HypervisorError: the source has no such domain, or the destination has one."""
        await self.connect()
        self.name = name
        source = self._domain("source", name, owned=False)
        dom = await source.call(f"look up domain {name}", source.lookup)
        if dom is None:
            raise HypervisorError(
                f"the source ({self.hosts['source'].uri}) has no domain {name!r}: "
                f"`virsh -c {self.hosts['source'].uri} list --all` lists its domains"
            )
        info = await source.call("read the domain's size", dom.info)
        source.memory_mib = int(info[2]) // 1024
        destination = LibvirtDomain(self.conns["destination"], name, "destination", owned=False)
        try:
            found = await destination.call(f"look up domain {name}", destination.lookup)
        finally:
            await destination.shutdown()
        if found is not None:
            raise HypervisorError(
                f"the destination ({self.hosts['destination'].uri}) already has a domain "
                f"{name!r}: remove it there first, or migrate another domain"
            )
        return source

    async def prepare_migration(self, source: Domain, plan: MigrationPlan) -> Migration:
        """A migration to the host the domain is not on (the destination, or back to the
        source: the domain's earlier instance there must be removed first).

        :raise HypervisorError: that host already has a domain of that name."""
        if not isinstance(source, LibvirtDomain):
            raise HypervisorError("the libvirt backend migrates only libvirt domains")
        target = other_host(source.host_role)
        destination_host = self.hosts[target]
        destination = self._domain(
            target, source.name, owned=source.owned, memory_mib=source.memory_mib, incoming=True
        )
        if await destination.call("look up the domain", destination.lookup) is not None:
            raise HypervisorError(
                f"the {target} already has a domain called {source.name!r}: remove it there "
                "first (virsh undefine), or migrate another domain"
            )
        destination_xml = None
        if source.owned and destination.console_log is not None:
            destination.console_log.unlink(missing_ok=True)
            libvirt = libvirt_client.load()
            dom = await source.virdomain()
            flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
            xml = await source.call("read the domain XML", lambda: dom.XMLDesc(flags))
            destination_xml = with_console(xml, destination.console_log)
        return LibvirtMigration(
            source,
            destination,
            plan,
            destination_host.peer_uri or destination_host.uri,
            destination_host.migration_uri,
            destination_xml,
        )

    def listen_ports(self, plan: MigrationPlan) -> dict[str, int]:
        """libvirt takes free ports of its migration range (qemu.conf migration_port_min..max,
        49152-49215 by default; a second one for the disk copy): its first must be free for
        a first migration to get it."""
        return {"migration": MIGRATION_PORT_MIN}

    async def versions(self) -> dict[str, str]:
        return dict(self._versions)

    async def close(self) -> None:
        """Remove the domains vmigrate defined (never a user's), keep libvirt's QEMU logs in
        the run directory, and close the connections.

        The domains go at once, each through its host's daemon: after a fault one may take its
        daemon long (a destination QEMU stuck in a failed post-copy ignores SIGTERM, libvirt
        kills it 10 s later; a source whose job hung keeps its lock, libvirt gives up after
        30 s), and the other need not wait for it."""
        domains = list(reversed(self.domains))
        outcomes = await asyncio.gather(*(d.shutdown() for d in domains), return_exceptions=True)
        for domain, outcome in zip(domains, outcomes, strict=True):
            if isinstance(outcome, Exception):  # every domain had its turn
                log.warning("removing the domain on the %s: %s", domain.host_role, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        self._keep_qemu_logs()
        for role, conn in self.conns.items():
            try:
                await asyncio.to_thread(conn.close)
            except Exception as exc:
                log.info("closing the libvirt connection to the %s: %s", role, exc)
        self.conns.clear()

    def _keep_qemu_logs(self) -> None:
        if not self.name:
            return
        for role, host in self.hosts.items():
            path = host.qemu_log(self.name)
            if path is None or not path.exists():
                continue
            try:
                shutil.copyfile(path, self.log_dir / f"qemu-{role}.log")
            except OSError as exc:
                log.warning("keeping libvirt's QEMU log of the %s: %s", role, exc)
