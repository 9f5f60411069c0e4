"""One VM's slot on a testbed that may run other VMs beside it (a drain's lanes): which guest it
is, which testbed hosts play its source and its destination, and what its QEMUs and libvirt
domain are called and listen on, so that no two VMs of one testbed collide.

A VM speaks of its hosts by the roles it sees, "source" and "destination" (events, series and
result.json keep those names); the slot maps them to the testbed's hosts, e.g. source →
"source", destination → "hv3". Everything unique per VM follows from the guest's index:

    guest (GuestNic)   address, MAC, tap              10.241.0.(100+i), …, <tb>-t<i>
    QEMU labels        in the testbed's state file     qemu-source-vm<i>, qemu-destination-vm<i>
    QMP sockets        in the testbed's run directory  qmp-source-vm<i>.sock, …
    ports              on the destination              migration 4444+i, NBD 10809+i
    names              libvirt domain, disk files      <scenario>-vm<i>

The default slot (guest 0 from the source to the destination) is a VM alone on its testbed:
every name, label and port is what a single run has always used.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.errors import UsageError
from vmigrate.hypervisor.qemu_backend import MIGRATION_PORT, NBD_PORT, QemuInstance
from vmigrate.testbed.guests import GUEST0, GuestNic
from vmigrate.testbed.network import MAX_HYPERVISORS, PAIR, Host, hypervisor_roles
from vmigrate.testbed.testbed import Testbed


@dataclass(frozen=True)
class VmSlot:
    """Guest `nic` running from testbed host `source_host` to `destination_host` (hypervisor
    host roles: "source", "destination", "hv3", …).

    :raise UsageError: the two hosts are the same, or not hypervisor hosts."""

    nic: GuestNic = GUEST0
    source_host: str = "source"
    destination_host: str = "destination"

    def __post_init__(self) -> None:
        known = hypervisor_roles(MAX_HYPERVISORS)
        for host in (self.source_host, self.destination_host):
            if host not in known:
                raise UsageError(
                    f"{host!r} is not a hypervisor host of a testbed: use one of {', '.join(known)}"
                )
        if self.source_host == self.destination_host:
            raise UsageError(
                f"guest {self.index} would migrate from {self.source_host} to itself: give it "
                "another destination host"
            )

    @property
    def index(self) -> int:
        """The guest's index: what every per-VM name and port derives from."""
        return self.nic.index

    @property
    def is_default(self) -> bool:
        """True for guest 0 from the source to the destination: a VM alone on its testbed."""
        return self == DEFAULT_SLOT

    @property
    def tag(self) -> str:
        """What ends this VM's names: "" for guest 0 (the names of a single run), else vm<i>."""
        return f"vm{self.index}" if self.index else ""

    def host_role(self, role: str) -> str:
        """The testbed host that plays VM-relative role `role` for this VM ("source" and
        "destination" are the slot's hosts; "storage" and "client" are themselves)."""
        if role == "source":
            return self.source_host
        if role == "destination":
            return self.destination_host
        return role

    def host(self, testbed: Testbed, role: str) -> Host:
        """The testbed host that plays VM-relative role `role` for this VM.

        :raise UsageError: the testbed has no such host (too few hypervisor hosts)."""
        physical = self.host_role(role)
        if physical not in testbed.hosts:
            raise UsageError(
                f"testbed {testbed.name!r} has {testbed.hypervisors} hypervisor hosts, none "
                f"called {physical!r} (guest {self.index}'s {role}): set [testbed] hypervisors "
                f"= {self.hypervisors_needed} or more"
            )
        return testbed.hosts[physical]

    def hosts(self, testbed: Testbed) -> dict[str, Host]:
        """The testbed hosts this VM uses, by the roles it sees them in (source, destination,
        storage, client). :raise UsageError: the testbed lacks one."""
        return {role: self.host(testbed, role) for role in (*PAIR, "storage", "client")}

    @property
    def hypervisors_needed(self) -> int:
        """How many hypervisor hosts a testbed needs for this slot's two."""
        roles = hypervisor_roles(MAX_HYPERVISORS)
        return max(roles.index(self.source_host), roles.index(self.destination_host)) + 1

    @property
    def qemu(self) -> QemuInstance:
        """This VM's QEMUs' labels, QMP sockets and ports (the QEMU backend)."""
        return QemuInstance(self.tag, MIGRATION_PORT + self.index, NBD_PORT + self.index)

    def name(self, base: str) -> str:
        """This VM's name from the scenario's `base` name: the libvirt domain (unique on a
        host's libvirtd), QEMU's -name, the stem of its disk files."""
        return f"{base}-{self.tag}" if self.tag else base


DEFAULT_SLOT = VmSlot()
