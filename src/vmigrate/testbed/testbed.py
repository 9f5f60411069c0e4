"""The embedded testbed: four namespaced hosts, a switch, shaped links and a real NFS server.

`Testbed(name).up()` builds it and records every piece in a state file as it goes; `down()`
removes every recorded piece (also those of a vmigrate that was killed); `status()` tells
what is there. Names of namespaces and interfaces start with the testbed's name, so two
testbeds never collide.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmigrate.errors import TestbedError, UsageError
from vmigrate.paths import state_root
from vmigrate.pids import is_same_process
from vmigrate.testbed import network
from vmigrate.testbed.network import GUEST_IP, GUEST_MAC, Host
from vmigrate.testbed.nfs import start_nfs_server
from vmigrate.testbed.state import StateFile, netns_exists, tear_down

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
        """Every namespace present and the NFS server's processes alive."""
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

    def up(self, bandwidth_mbit: float, progress: Progress = _quiet) -> None:
        """Build the testbed (or re-shape a healthy one); on any failure, remove what was made."""
        if self.is_healthy():
            self.shape(bandwidth_mbit)
            progress(f"testbed {self.name} already up; links set to {bandwidth_mbit:g} Mbit/s")
            return
        if self.exists():
            progress(f"testbed {self.name}: removing leftovers of an earlier run")
            self.down()
        _check_tools()
        try:
            self._build(bandwidth_mbit, progress)
        except BaseException:
            self.down()
            raise

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
