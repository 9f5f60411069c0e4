"""The testbed's wiring: namespaced hosts on a switch that lives in its own fabric namespace.

```
            fabric namespace: bridge <tb>-fab
   <tb>-src     <tb>-dst     (<tb>-h3 …)   <tb>-sto      <tb>-cli   (fabric ends of the veths)
      |            |             |             |             |
   <tb>-up      <tb>-up       <tb>-up       <tb>-up       <tb>-up    (host ends, one per host)
   bridge       bridge        bridge        10.241.0.3    10.241.0.4
   <tb>-br      <tb>-br       <tb>-br       storage       client
   + <tb>-tap   + <tb>-tap    + <tb>-tap
   10.241.0.1   10.241.0.2    10.241.0.5 …
   source       destination   hv3 …
```
A testbed has 2 to MAX_HYPERVISORS hypervisor hosts: the source and the destination, then hv3,
hv4, … at 10.241.0.5, .6, … (`host_layout`). Each has a bridge with guest 0's tap on it; the
taps of other guests (testbed/guests.py) are added to it when asked for (`add_tap`).

Nothing is added to the root namespace's network. Each host's uplink is shaped with tbf in both
directions (egress of the host end and of the fabric end), like a NIC on a switch port, whose
queue holds 5 ms at the link's rate (a switch port's shallow buffer: a 50 ms queue held the
migration's last pass behind 35 ms of earlier data at the switch-over, and every reply of the
guest behind it during the migration).

Each host's TCP stack is set like a host tuned for live migration (HOST_SYSCTLS): at most
128 KiB not yet sent per socket, so what QEMU has written is on the wire, not in a 4 MiB socket
buffer its downtime estimate cannot see. The client host, like a client tuned for a service that
moves, retransmits after 5 ms, not 200 ms, and without exponential back-off for a thin stream
(CLIENT_SYSCTLS, and `rto_min` on its route to the guests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vmigrate.errors import UsageError
from vmigrate.proc import run
from vmigrate.testbed.guests import GUEST0, GUEST_SUBNET

SUBNET_PREFIX = 24
DEFAULT_HYPERVISORS = 2
MAX_HYPERVISORS = 6  # what a 2-core machine carries; names and addresses would allow more
PAIR = ("source", "destination")  # the first two hypervisor hosts, those of a single-VM run
OTHER_ROLES = ("storage", "client")
_EXTRA = tuple(f"hv{n}" for n in range(3, MAX_HYPERVISORS + 1))  # hv3 … hv6
HOST_IPS = {
    "source": "10.241.0.1",
    "destination": "10.241.0.2",
    "storage": "10.241.0.3",
    "client": "10.241.0.4",
    **{role: f"10.241.0.{n + 2}" for n, role in enumerate(_EXTRA, start=3)},  # hv3 at .5
}
QUEUE_LATENCY = "5ms"
HOST_SYSCTLS = {"net.ipv4.tcp_notsent_lowat": "131072"}
CLIENT_SYSCTLS = {"net.ipv4.tcp_thin_linear_timeouts": "1"}
CLIENT_RTO_MIN = "5ms"
_SHORT = {
    "source": "src",
    "destination": "dst",
    "storage": "sto",
    "client": "cli",
    **{role: f"h{role.removeprefix('hv')}" for role in _EXTRA},  # <tb>-h3
}


@dataclass(frozen=True)
class Host:
    """One namespaced host: where its processes run and how it is wired."""

    role: str
    netns: str
    ip: str
    uplink: str
    fabric_port: str
    bridge: str | None = None
    tap: str | None = None

    @property
    def interface(self) -> str:
        """The interface that carries the host's address (its bridge, else its uplink)."""
        return self.bridge or self.uplink


def fabric_netns(prefix: str) -> str:
    return f"{prefix}-fabric"


def check_hypervisors(count: int) -> int:
    """`count` when a testbed can have that many hypervisor hosts.

    :raise UsageError: it cannot (the line says how many it can)."""
    if not DEFAULT_HYPERVISORS <= count <= MAX_HYPERVISORS:
        raise UsageError(
            f"a testbed has {DEFAULT_HYPERVISORS} to {MAX_HYPERVISORS} hypervisor hosts, "
            f"not {count}: use a number in that range"
        )
    return count


def hypervisor_roles(count: int) -> tuple[str, ...]:
    """The roles of a testbed's `count` hypervisor hosts, in order: source, destination, hv3…"""
    return (*PAIR, *_EXTRA[: check_hypervisors(count) - len(PAIR)])


def host_layout(prefix: str, hypervisors: int = DEFAULT_HYPERVISORS) -> dict[str, Host]:
    """The names and addresses of every host of testbed `prefix` with `hypervisors` hypervisor
    hosts, those first (pure; nothing is created).

    :raise UsageError: a testbed cannot have that many."""
    hypervisor = hypervisor_roles(hypervisors)
    hosts = {}
    for role in (*hypervisor, *OTHER_ROLES):
        hosts[role] = Host(
            role=role,
            netns=f"{prefix}-{role}",
            ip=HOST_IPS[role],
            uplink=f"{prefix}-up",
            fabric_port=f"{prefix}-{_SHORT[role]}",
            bridge=f"{prefix}-br" if role in hypervisor else None,
            tap=GUEST0.tap(prefix) if role in hypervisor else None,
        )
    return hosts


def create_netns(name: str) -> None:
    """A new network namespace with its loopback up."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def create_fabric(prefix: str) -> None:
    """The switch: a bridge in the (already created) fabric namespace."""
    ns = fabric_netns(prefix)
    run(["ip", "-n", ns, "link", "add", f"{prefix}-fab", "type", "bridge"])
    run(["ip", "-n", ns, "link", "set", f"{prefix}-fab", "type", "bridge", "forward_delay", "0"])
    run(["ip", "-n", ns, "link", "set", f"{prefix}-fab", "up"])


def wire_host(prefix: str, host: Host) -> None:
    """Connect a host (its namespace exists) to the fabric and give it its address."""
    fabric = fabric_netns(prefix)
    ns = host.netns
    run(["ip", "-n", fabric, "link", "add", host.fabric_port, "type", "veth",
         "peer", "name", host.uplink, "netns", ns])  # fmt: skip
    run(["ip", "-n", fabric, "link", "set", host.fabric_port, "master", f"{prefix}-fab", "up"])
    if host.bridge is not None and host.tap is not None:
        run(["ip", "-n", ns, "link", "add", host.bridge, "type", "bridge"])
        run(["ip", "-n", ns, "link", "set", host.bridge, "type", "bridge", "forward_delay", "0"])
        run(["ip", "-n", ns, "link", "set", host.uplink, "master", host.bridge, "up"])
        run(["ip", "-n", ns, "tuntap", "add", "dev", host.tap, "mode", "tap"])
        run(["ip", "-n", ns, "link", "set", host.tap, "master", host.bridge, "up"])
    run(["ip", "-n", ns, "addr", "add", f"{host.ip}/{SUBNET_PREFIX}", "dev", host.interface])
    run(["ip", "-n", ns, "link", "set", host.interface, "up"])
    run(["ip", "-n", ns, "link", "set", host.uplink, "up"])
    tune_stack(host)


def add_tap(host: Host, tap: str) -> bool:
    """Put a tap called `tap` on hypervisor host `host`'s bridge, unless it is there; True when
    it was made now. (It lives in the host's namespace and goes with it.)"""
    if host.bridge is None:
        raise ValueError(f"host {host.role} is not a hypervisor host: it has no bridge for taps")
    exists = run(["ip", "-n", host.netns, "link", "show", "dev", tap], check=False)
    if exists.returncode != 0:
        run(["ip", "-n", host.netns, "tuntap", "add", "dev", tap, "mode", "tap"])
    run(["ip", "-n", host.netns, "link", "set", tap, "master", host.bridge, "up"])
    return exists.returncode != 0


def tune_stack(host: Host) -> None:
    """Set the host's TCP stack (see the module's docstring); the client's route to the guests
    (every guest's address, GUEST_SUBNET) carries its minimum retransmission timeout
    (`rto_min`, a route metric every kernel has)."""
    sysctls = HOST_SYSCTLS | (CLIENT_SYSCTLS if host.role == "client" else {})
    run(["ip", "netns", "exec", host.netns, "sysctl", "-q", "-w",
         *(f"{key}={value}" for key, value in sysctls.items())])  # fmt: skip
    if host.role == "client":
        run(["ip", "-n", host.netns, "route", "add", GUEST_SUBNET, "dev", host.interface,
             "rto_min", CLIENT_RTO_MIN])  # fmt: skip


def tbf_args(bandwidth_mbit: float) -> list[str]:
    """tc arguments for a token bucket at `bandwidth_mbit`: burst ~4 ms of traffic, ≥ 64 KiB."""
    rate_bytes_s = bandwidth_mbit * 1e6 / 8
    burst = max(int(rate_bytes_s * 0.004), 64 * 1024)
    return ["tbf", "rate", f"{bandwidth_mbit:g}mbit", "burst", str(burst), "latency",
            QUEUE_LATENCY]  # fmt: skip


def shape_host(prefix: str, host: Host, bandwidth_mbit: float) -> None:
    """Set (or change) the rate of a host's link in both directions."""
    args = tbf_args(bandwidth_mbit)
    run(["tc", "-n", host.netns, "qdisc", "replace", "dev", host.uplink, "root", *args])
    run(["tc", "-n", fabric_netns(prefix), "qdisc", "replace", "dev", host.fabric_port,
         "root", *args])  # fmt: skip


def link_counters(netns: str, interface: str) -> dict[str, int]:
    """rx/tx bytes and packets of an interface, read from inside its namespace."""
    done = run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", interface])
    stats = json.loads(done.stdout)[0]["stats64"]
    return {
        "rx_bytes": int(stats["rx"]["bytes"]),
        "tx_bytes": int(stats["tx"]["bytes"]),
        "rx_packets": int(stats["rx"]["packets"]),
        "tx_packets": int(stats["tx"]["packets"]),
    }
