"""The embedded testbed: four namespaced hosts, a switch, shaped links and a real NFS server.

With `libvirt=True` (or `start_libvirt()` later) each hypervisor host also runs its own libvirtd
(testbed/libvirtd.py), reached from here at `libvirt_uri(role)`.

`Testbed(name).up()` builds it and records every piece in a state file as it goes; `down()`
removes every recorded piece (also those of a vmigrate that was killed); `status()` tells
what is there. Names of namespaces and interfaces start with the testbed's name, so two
testbeds never collide.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from vmigrate import libvirt_client
from vmigrate.errors import TestbedError, UsageError
from vmigrate.paths import state_root
from vmigrate.pids import is_same_process, terminate
from vmigrate.testbed import libvirt_domains, libvirtd, network
from vmigrate.testbed.leftovers import (
    leftover_interfaces,
    leftover_namespaces,
    leftover_processes,
)
from vmigrate.testbed.netns import netns_exists, netns_pids
from vmigrate.testbed.network import GUEST_IP, GUEST_MAC, HYPERVISOR_ROLES, Host
from vmigrate.testbed.nfs import read_pids, start_nfs_server
from vmigrate.testbed.state import Resource, StateFile, stop_libvirtd, tear_down

log = logging.getLogger(__name__)

DEFAULT_NAME = "vmig"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,7}$")
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Testbed:
    """A named testbed; cheap to construct, nothing happens until `up`/`down`."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, name: str = DEFAULT_NAME) -> None:
        if not NAME_PATTERN.match(name):
            raise UsageError(
                f"testbed name {name!r} is invalid: use 1-8 lowercase letters/digits, "
                f"starting with a letter (e.g. {DEFAULT_NAME!r})"
            )
        self.name = name
        self.dir = state_root() / name
        self.state = StateFile(self.dir / "state.json")
        self.hosts: dict[str, Host] = network.host_layout(name)
        self.guest_ip = GUEST_IP
        self.guest_mac = GUEST_MAC

    @property
    def export_dir(self) -> Path:
        """The directory the storage host exports over NFS (the VMs' disks live here)."""
        return self.dir / "export"

    def local_disk_dir(self, role: str) -> Path:
        """Where hypervisor host `role` keeps its own disks (storage.mode = local)."""
        return self.dir / "hosts" / role / "disks"

    @property
    def storage(self) -> Host:
        return self.hosts["storage"]

    def nfs_url(self, path: Path) -> str:
        """The nfs:// URL through which QEMU on any host opens `path` inside the export."""
        return f"nfs://{self.storage.ip}{path}"

    def exists(self) -> bool:
        """True when a state file says this testbed was (at least partly) brought up."""
        return self.state.path.exists()

    def is_healthy(self) -> bool:
        """Every namespace present and the NFS server's processes alive. (The libvirt daemons
        are apart — `has_libvirt`: a dead one is restarted alone, the testbed stays.)"""
        if not self.exists() or not self.state.facts().get("complete"):
            return False
        resources = self.state.resources()
        namespaces_ok = all(netns_exists(r.name) for r in resources if r.kind == "netns")
        procs_ok = all(
            is_same_process(r.pid, r.start_ticks)
            for r in resources
            if r.kind == "process" and r.name.startswith("nfs")
        )
        return namespaces_ok and procs_ok

    def up(self, bandwidth_mbit: float, progress: Progress = _quiet, libvirt: bool = False) -> None:
        """Build the testbed (or re-shape a healthy one); on any failure, remove what was made.

        `libvirt`: also run a libvirtd on each hypervisor host (started on a healthy testbed
        that has none yet; a testbed that has them keeps them either way).
        """
        if self.is_healthy():
            self.shape(bandwidth_mbit)
            progress(f"testbed {self.name} already up; links set to {bandwidth_mbit:g} Mbit/s")
            if self._libvirtd_records() and not self.has_libvirt():
                progress("a libvirtd of this testbed died: removing what it left behind")
                self._forget_libvirtd()
            if libvirt and not self.has_libvirt():
                self.start_libvirt(progress)
            elif libvirt and (stuck := self._stuck_libvirtd()):
                progress(
                    f"libvirtd on {', '.join(stuck)} cannot let go of a domain an earlier run "
                    "left (a job hung after a fault): restarting the daemons"
                )
                self.start_libvirt(progress)
            return
        if self.exists():
            progress(f"testbed {self.name}: removing leftovers of an earlier run")
            self.down()
        _check_tools()
        if libvirt:
            libvirtd.libvirtd_binary()  # fail early, with the fix, before building anything
            libvirt_client.load()
        try:
            self._build(bandwidth_mbit, progress)
            if libvirt:
                self.start_libvirt(progress)
        except BaseException:
            self.down()
            raise

    # -- libvirt ---------------------------------------------------------------------------

    def _libvirtd_records(self) -> dict[str, Resource]:
        """The recorded libvirtd processes by host role."""
        if not self.exists():
            return {}
        return {
            r.name.removeprefix(libvirtd.LABEL_PREFIX): r
            for r in self.state.resources()
            if r.kind == "process" and r.name.startswith(libvirtd.LABEL_PREFIX)
        }

    def has_libvirt(self) -> bool:
        """True when a libvirtd runs on every hypervisor host."""
        records = self._libvirtd_records()
        return all(
            role in records and is_same_process(records[role].pid, records[role].start_ticks)
            for role in HYPERVISOR_ROLES
        )

    def libvirt_dir(self, role: str) -> Path:
        """Host `role`'s libvirt directories (etc, lib, log, cache) and its libvirtd.log."""
        return self.dir / "libvirt" / role

    def start_libvirt(self, progress: Progress = _quiet) -> None:
        """Start a libvirtd on each hypervisor host of this (up) testbed; return once they answer.

        Daemons recorded earlier are stopped first (their domains destroyed). On failure nothing
        of the new ones is left (the rest of the testbed stays as it was).
        """
        specs = [
            libvirtd.DaemonSpec(
                label=f"{libvirtd.LABEL_PREFIX}{role}",
                work_dir=self.libvirt_dir(role),
                netns=self.hosts[role].netns,
                address=self.hosts[role].ip,
                host_uuid=libvirtd.host_uuid(self.name, role),
            )
            for role in HYPERVISOR_ROLES
        ]
        self._forget_libvirtd()
        for spec in specs:  # an earlier daemon's domain definitions and runtime state
            shutil.rmtree(spec.work_dir / "lib", ignore_errors=True)
            shutil.rmtree(spec.work_dir / "etc", ignore_errors=True)
        progress("starting libvirtd on the hypervisor hosts (" + ", ".join(HYPERVISOR_ROLES) + ")")
        try:
            libvirtd.start_daemons(specs, lambda d: self.state.add_process(d.pid, d.spec.label))
        except BaseException:
            self._forget_libvirtd()
            raise
        self.state.set_facts(libvirt=True)

    def _forget_libvirtd(self) -> None:
        """Stop (domains first) and forget every recorded libvirtd, alive or not; QEMUs a dead
        daemon left behind in its host go too (they would hold the host's tap)."""
        for role, record in self._libvirtd_records().items():
            if is_same_process(record.pid, record.start_ticks):
                stop_libvirtd(record)
            libvirtd.release(record.pid)
            self.state.forget(record)
            if role in self.hosts:
                for pid in libvirt_domains.orphaned_qemus(self.hosts[role].netns):
                    log.warning("stopping QEMU %d that a dead libvirtd left on %s", pid, role)
                    terminate(pid, None)

    def _stuck_libvirtd(self) -> list[str]:
        """The hypervisor hosts whose libvirtd holds a stopped domain it cannot remove, or does
        not answer (each named with what it holds)."""
        libvirt = libvirt_client.load()
        stuck = []
        for role in HYPERVISOR_ROLES:
            try:
                names = libvirt_domains.stuck_domains(self.libvirt_uri(role))
            except (libvirt.libvirtError, TimeoutError) as exc:
                log.warning("libvirtd on %s does not answer: %s", role, exc)
                names = ["no answer"]
            if names:
                stuck.append(f"{role} ({', '.join(names)})")
        return stuck

    def _libvirtd_pid(self, role: str) -> int:
        record = self._libvirtd_records().get(role)
        if record is None or not is_same_process(record.pid, record.start_ticks):
            raise TestbedError(
                f"no libvirtd runs on host {role!r} of testbed {self.name!r}: run "
                f"`vmigrate testbed up --libvirt --testbed {self.name}`"
            )
        return record.pid

    def libvirt_uri(self, role: str) -> str:
        """The URI through which this (root) namespace reaches host `role`'s libvirtd."""
        return libvirtd.unix_uri(self._libvirtd_pid(role))

    def libvirt_images_dir(self, role: str) -> Path:
        """Where host `role`'s libvirtd keeps local disks, seen from here; the daemon (and its
        QEMU) sees the same files at `libvirtd.IMAGES_DIR`, a path equal on every host, as
        libvirt's non-shared-storage migration wants it."""
        return self.libvirt_dir(role) / "lib" / "images"

    def tls_dir(self, role: str, libvirt: bool) -> Path:
        """Where host `role` keeps the certificates of an encrypted migration, seen from here:
        in its libvirtd's /etc/libvirt (qemu.conf's migrate_tls_x509_cert_dir), or for the
        QEMU vmigrate starts itself, next to the host's local disks."""
        if libvirt:
            return self.libvirt_dir(role) / "etc" / libvirtd.MIGRATE_TLS_DIR
        return self.dir / "hosts" / role / "tls"

    def libvirt_root(self, role: str) -> Path:
        """Host `role`'s libvirtd's view of the filesystem, from here: /proc/PID/root (its
        private /run, its /var/log/libvirt, ...). Valid while that daemon runs."""
        return libvirtd.root_of(self._libvirtd_pid(role))

    def libvirt_tcp_uri(self, role: str) -> str:
        """The URI through which another host's libvirtd (peer-to-peer migration) reaches
        host `role`'s: qemu+tcp://HOST_IP/system."""
        return libvirtd.tcp_uri(self.hosts[role].ip)

    def libvirt_migration_uri(self, role: str) -> str:
        """Where QEMU on host `role` takes an incoming migration stream: tcp://HOST_IP."""
        return libvirtd.migration_uri(self.hosts[role].ip)

    # ---------------------------------------------------------------------------------------

    def _build(self, bandwidth_mbit: float, progress: Progress) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state.set_facts(name=self.name, complete=False)
        fabric = network.fabric_netns(self.name)
        progress("creating the switch (fabric namespace)")
        self.state.add_netns(fabric)
        network.create_netns(fabric)
        network.create_fabric(self.name)
        for host in self.hosts.values():
            progress(f"creating host {host.role} ({host.ip})")
            self.state.add_netns(host.netns)
            network.create_netns(host.netns)
            network.wire_host(self.name, host)
        self.shape(bandwidth_mbit)
        progress("starting the NFS server (rpcbind + nfs-ganesha) on the storage host")
        self.export_dir.mkdir(parents=True, exist_ok=True)
        nfs_dir = self.dir / "nfs"
        nfs_dir.mkdir(parents=True, exist_ok=True)
        server = start_nfs_server(self.storage.netns, self.export_dir, nfs_dir, self.storage.ip)
        for index, pid in enumerate(server.pids):
            self.state.add_process(pid, f"nfs-{index}")
        self.state.set_facts(complete=True)

    def nfs_server_pid(self) -> int | None:
        """The storage host's ganesha.nfsd (faults stall it), if it runs."""
        for pid in read_pids(self.dir / "nfs"):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "ganesha.nfsd":
                    return pid
            except OSError:
                continue
        return None

    def shape(self, bandwidth_mbit: float) -> None:
        """Set every host's link rate."""
        for host in self.hosts.values():
            network.shape_host(self.name, host, bandwidth_mbit)
        self.state.set_facts(bandwidth_mbit=bandwidth_mbit)

    def require_up(self) -> None:
        """Raise a clear error unless the testbed is up and healthy."""
        if not self.is_healthy():
            raise TestbedError(
                f"testbed {self.name!r} is not up (or is broken); run `vmigrate testbed up` "
                f"(or `vmigrate testbed down` first to clear leftovers)"
            )

    def down(self) -> list[str]:
        """Remove everything recorded; return problems (empty when all is gone)."""
        problems = tear_down(self.state) if self.exists() else []
        leftovers = [n for n in self.namespace_names() if netns_exists(n)]
        if leftovers:
            problems.append(f"namespaces still present: {', '.join(leftovers)}")
        if not problems:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    def require_no_vm(self) -> None:
        """Refuse a run while a VM of an earlier run still holds a host's tap (vmigrate was
        killed mid-run): say how to settle or remove it."""
        alive = [
            f"{r.name} pid {r.pid}"
            for r in self.state.resources()
            if r.kind == "process" and r.name.startswith("qemu-")
            and is_same_process(r.pid, r.start_ticks)
        ]  # fmt: skip
        if alive:
            raise TestbedError(
                f"testbed {self.name!r} still runs a VM of an earlier run ({', '.join(alive)}): "
                f"`vmigrate testbed recover -t {self.name}` settles it, `vmigrate testbed down "
                f"-t {self.name}` removes it"
            )

    def processes(self) -> list[int]:
        """PIDs of every process inside this testbed's namespaces right now."""
        return [pid for ns in self.namespace_names() for pid in netns_pids(ns)]

    def leftovers(self, pids: Iterable[int] = ()) -> list[str]:
        """What of this testbed is still there (after `down` there should be nothing): its
        namespaces, interfaces named after it in the root namespace, processes of it — any of
        `pids` (say, `processes()` from before it came down) or naming its directory or tap —
        and its state directory."""
        found = leftover_namespaces(self.name) + leftover_interfaces(self.name)
        found += leftover_processes(self.name, self.dir, pids)
        if self.dir.exists():
            found.append(f"directory {self.dir}")
        return found

    def namespace_names(self) -> list[str]:
        """Every namespace this testbed may own."""
        return [network.fabric_netns(self.name)] + [h.netns for h in self.hosts.values()]

    def status(self) -> dict[str, Any]:
        """What exists now: per host its namespace, address; processes and whether they live."""
        resources = self.state.resources() if self.exists() else []
        return {
            "name": self.name,
            "state_dir": str(self.dir),
            "up": self.is_healthy(),
            "bandwidth_mbit": self.state.facts().get("bandwidth_mbit") if self.exists() else None,
            "hosts": {
                role: {"netns": h.netns, "ip": h.ip, "present": netns_exists(h.netns)}
                for role, h in self.hosts.items()
            },
            "libvirt": {
                role: self.libvirt_uri(role) for role in HYPERVISOR_ROLES if self.has_libvirt()
            },
            "processes": [
                {"label": r.name, "pid": r.pid, "alive": is_same_process(r.pid, r.start_ticks)}
                for r in resources
                if r.kind == "process"
            ],
        }


def _check_tools() -> None:
    """Fail early, with the fix, when a tool the testbed needs is missing."""
    needs = {
        "ip": "iproute2",
        "tc": "iproute2",
        "ganesha.nfsd": "nfs-ganesha nfs-ganesha-vfs",
        "rpcbind": "rpcbind",
    }
    for tool, package in needs.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise TestbedError(
                f"{tool} is missing: run `apt-get install {package}` (or make setup)"
            )
