"""The embedded testbed: namespaced hypervisor hosts (2 or more), a storage host running a real
NFS server and a client host, on a switch with shaped links.

With `libvirt=True` (or `start_libvirt()` later) each hypervisor host also runs its own libvirtd
(testbed/testbed_libvirt.py), reached from here at `libvirt_uri(role)`.

`Testbed(name).up()` builds it and records every piece in a state file as it goes; `down()`
removes every recorded piece (also those of a vmigrate that was killed); `status()` tells
what is there. Names of namespaces and interfaces start with the testbed's name, so two
testbeds never collide. How many hypervisor hosts a testbed has is recorded too, so
`Testbed(name)` of an existing testbed describes all its hosts.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from vmigrate import libvirt_client
from vmigrate.errors import TestbedError, UsageError
from vmigrate.paths import state_root
from vmigrate.pids import is_same_process, process_start_ticks, terminate
from vmigrate.proc import run
from vmigrate.testbed import libvirtd, network
from vmigrate.testbed.guests import GUEST0, GuestNic
from vmigrate.testbed.leftovers import (
    leftover_interfaces,
    leftover_namespaces,
    leftover_processes,
)
from vmigrate.testbed.netns import netns_exists, netns_pids
from vmigrate.testbed.network import DEFAULT_HYPERVISORS, MAX_HYPERVISORS, Host
from vmigrate.testbed.nfs import read_pids, start_nfs_server
from vmigrate.testbed.state import Resource, StateFile, tear_down
from vmigrate.testbed.testbed_libvirt import LibvirtDaemons, Progress

log = logging.getLogger(__name__)

DEFAULT_NAME = "vmig"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,7}$")


def _quiet(_: str) -> None:
    pass


class Testbed(LibvirtDaemons):
    """A named testbed; cheap to construct, nothing happens until `up`/`down`.

    `hypervisors`: how many hypervisor hosts it has (source, destination, hv3, …); None: as
    many as its state file says (an existing testbed), else DEFAULT_HYPERVISORS. `hosts` (by
    role) and `hypervisor_roles` (in order) describe that many.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, name: str = DEFAULT_NAME, hypervisors: int | None = None) -> None:
        if not NAME_PATTERN.match(name):
            raise UsageError(
                f"testbed name {name!r} is invalid: use 1-8 lowercase letters/digits, "
                f"starting with a letter (e.g. {DEFAULT_NAME!r})"
            )
        self.name = name
        self.dir = state_root() / name
        self.state = StateFile(self.dir / "state.json")
        if hypervisors is None:
            hypervisors = self.recorded_hypervisors() or DEFAULT_HYPERVISORS
        self._lay_out(hypervisors)
        self.guest_ip = GUEST0.ip
        self.guest_mac = GUEST0.mac

    def _lay_out(self, hypervisors: int) -> None:
        """Describe this testbed with `hypervisors` hypervisor hosts (nothing is made).

        :raise UsageError: a testbed cannot have that many."""
        self.hosts: dict[str, Host] = network.host_layout(self.name, hypervisors)
        self.hypervisor_roles: tuple[str, ...] = network.hypervisor_roles(hypervisors)

    @property
    def hypervisors(self) -> int:
        """How many hypervisor hosts this testbed has (or will have once up)."""
        return len(self.hypervisor_roles)

    def recorded_hypervisors(self) -> int | None:
        """How many hypervisor hosts the state file says this testbed has: None without a
        state file (or with one that makes no sense), 2 for one recorded before the count was."""
        if not self.exists():
            return None
        try:
            value = self.state.facts().get("hypervisors", DEFAULT_HYPERVISORS)
            return network.check_hypervisors(int(value))
        except (ValueError, TypeError, UsageError) as exc:
            log.warning("testbed %s: no hypervisor count in its state file: %s", self.name, exc)
            return None

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
        """Every namespace present, the NFS server's processes alive, and as many hypervisor
        hosts as this object describes. (The libvirt daemons are apart — `has_libvirt`: a dead
        one is restarted alone, the testbed stays.)"""
        return self._intact() and self.recorded_hypervisors() == self.hypervisors

    def _intact(self) -> bool:
        """Built completely, every recorded namespace present, the NFS server alive."""
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

    def up(
        self,
        bandwidth_mbit: float,
        progress: Progress = _quiet,
        libvirt: bool = False,
        hypervisors: int | None = None,
    ) -> None:
        """Build the testbed (or re-shape a healthy one); on any failure, remove what was made.

        `libvirt`: also run a libvirtd on each hypervisor host (started on a healthy testbed
        that has none yet; a testbed that has them keeps them either way, on hosts added too).
        `hypervisors`: how many hypervisor hosts (None: as many as this object describes); a
        healthy testbed with fewer gets the missing ones added, one with more has its last
        ones removed.

        :raise TestbedError: a tool is missing, a step failed, or a host to remove still runs
            something (a VM).
        :raise UsageError: a testbed cannot have `hypervisors` hypervisor hosts."""
        if hypervisors is not None:
            self._lay_out(hypervisors)
        if self._intact():
            self._resize(progress)
            self.shape(bandwidth_mbit)
            progress(f"testbed {self.name} already up; links set to {bandwidth_mbit:g} Mbit/s")
            self._keep_libvirt(libvirt, progress)
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

    def _build(self, bandwidth_mbit: float, progress: Progress) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state.set_facts(name=self.name, complete=False, hypervisors=self.hypervisors)
        fabric = network.fabric_netns(self.name)
        progress("creating the switch (fabric namespace)")
        self.state.add_netns(fabric)
        network.create_netns(fabric)
        network.create_fabric(self.name)
        for host in self.hosts.values():
            self._make_host(host, progress)
        self.shape(bandwidth_mbit)
        progress("starting the NFS server (rpcbind + nfs-ganesha) on the storage host")
        self.export_dir.mkdir(parents=True, exist_ok=True)
        nfs_dir = self.dir / "nfs"
        nfs_dir.mkdir(parents=True, exist_ok=True)
        server = start_nfs_server(self.storage.netns, self.export_dir, nfs_dir, self.storage.ip)
        for index, pid in enumerate(server.pids):
            self.state.add_process(pid, f"nfs-{index}")
        self.state.set_facts(complete=True)

    def _make_host(self, host: Host, progress: Progress) -> None:
        """Create host `host` (recorded first) and wire it to the switch."""
        progress(f"creating host {host.role} ({host.ip})")
        self.state.add_netns(host.netns)
        network.create_netns(host.netns)
        network.wire_host(self.name, host)

    # -- hypervisor hosts and guests -------------------------------------------------------

    def _resize(self, progress: Progress) -> None:
        """Give a testbed that is up as many hypervisor hosts as this object describes."""
        recorded = self.recorded_hypervisors() or DEFAULT_HYPERVISORS
        if recorded == self.hypervisors:
            return
        asked = f"testbed {self.name} has {recorded} hypervisor hosts, {self.hypervisors} asked"
        if recorded > self.hypervisors:
            self._remove_hosts(recorded, asked, progress)
            return
        new = [self.hosts[role] for role in self.hypervisor_roles[recorded:]]
        progress(f"{asked}: adding {', '.join(h.role for h in new)}")
        self._drop_hosts([h for h in new if netns_exists(h.netns)])  # a killed resize's
        try:
            for host in new:
                self._make_host(host, progress)
                for index in self.state.facts().get("guest_taps", []):
                    network.add_tap(host, GuestNic(int(index)).tap(self.name))
        except BaseException:
            self._drop_hosts(new)
            raise
        self.state.set_facts(hypervisors=self.hypervisors)

    def _remove_hosts(self, recorded: int, asked: str, progress: Progress) -> None:
        """Remove the hypervisor hosts beyond those this object describes (the testbed has
        `recorded`), with their libvirtd; refused while one runs anything else (a VM)."""
        layout = network.host_layout(self.name, recorded)
        gone = [host for role, host in layout.items() if role not in self.hosts]
        daemons = {r.pid for r in self._libvirtd_records().values()}
        busy = [
            f"{host.role} (pids {', '.join(map(str, pids))})"
            for host in gone
            if (pids := [pid for pid in netns_pids(host.netns) if pid not in daemons])
        ]
        if busy:
            self._lay_out(recorded)  # as it still is
            raise TestbedError(
                f"{asked}, but {', '.join(busy)} still run something (a VM?): let it finish, "
                f"or `vmigrate testbed down -t {self.name}` first"
            )
        progress(f"{asked}: removing {', '.join(h.role for h in gone)}")
        self._forget_libvirtd([host.role for host in gone])
        self._drop_hosts(gone)
        self.state.set_facts(hypervisors=self.hypervisors)

    def _drop_hosts(self, hosts: Iterable[Host]) -> None:
        """Delete these hosts' switch ports (their uplinks go with them at once; a namespace's
        own devices are freed by the kernel later) and namespaces (their processes, bridge and
        taps with them), and forget them. Never raises: what stays is logged, and a namespace
        that stays stays recorded for `down`."""
        fabric = network.fabric_netns(self.name)
        for host in hosts:
            for pid in netns_pids(host.netns):
                terminate(pid, process_start_ticks(pid), grace_s=2.0)
            port = run(["ip", "-n", fabric, "link", "del", host.fabric_port], check=False)
            if port.returncode != 0 and "Cannot find device" not in port.stderr:
                log.warning("switch port %s not removed: %s", host.fabric_port, port.stderr.strip())
            if netns_exists(host.netns):
                done = run(["ip", "netns", "delete", host.netns], check=False)
                if done.returncode != 0:
                    log.warning("netns %s not removed: %s", host.netns, done.stderr.strip())
                    continue
            self.state.forget(Resource("netns", host.netns))

    def add_guest_taps(self, nic: GuestNic) -> str:
        """Guest `nic`'s tap on every hypervisor host of this (up) testbed, made where it is
        missing (so calling again does nothing); its name. Hosts added later get it too; it
        goes with the hosts' namespaces.

        :raise TestbedError: the testbed is not up."""
        self.require_up()
        tap = nic.tap(self.name)
        for role in self.hypervisor_roles:
            network.add_tap(self.hosts[role], tap)
        if nic.index:  # under the state's lock: guests of lanes starting together all count
            self.state.update_facts(
                lambda facts: {"guest_taps": sorted(set(facts.get("guest_taps", [])) | {nic.index})}
            )
        return tap

    # ---------------------------------------------------------------------------------------

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

    def require_no_vm(self, labels: Collection[str] | None = None) -> None:
        """Refuse a run while a VM of an earlier run still holds a host's tap (vmigrate was
        killed mid-run): say how to settle or remove it. `labels`: only a QEMU recorded under
        one of these refuses (the VM's own, when other VMs may run beside it); None: any QEMU.

        :raise TestbedError: such a QEMU lives."""
        alive = [
            f"{r.name} pid {r.pid}"
            for r in self.state.resources()
            if r.kind == "process" and r.name.startswith("qemu-")
            and (labels is None or r.name in labels)
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
        """Every namespace this testbed may own (with as many hypervisor hosts as it can have)."""
        hosts = network.host_layout(self.name, MAX_HYPERVISORS).values()
        return [network.fabric_netns(self.name)] + [h.netns for h in hosts]

    def status(self) -> dict[str, Any]:
        """What exists now: per host its namespace, address; processes and whether they live."""
        resources = self.state.resources() if self.exists() else []
        return {
            "name": self.name,
            "state_dir": str(self.dir),
            "up": self.is_healthy(),
            "bandwidth_mbit": self.state.facts().get("bandwidth_mbit") if self.exists() else None,
            "hypervisors": self.hypervisors,
            "hosts": {
                role: {"netns": h.netns, "ip": h.ip, "present": netns_exists(h.netns)}
                for role, h in self.hosts.items()
            },
            "libvirt": {
                role: self.libvirt_uri(role) for role in self.hypervisor_roles if self.has_libvirt()
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
