"""A testbed with more than two hypervisor hosts, for real: four of them wired and shaped on the
switch, a guest's tap made on each on demand, a libvirtd on each, hosts added to and removed
from the testbed while it is up, and nothing left once it is down. No guest boots: quick."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import leftovers, processes_in

from vmigrate import libvirt_client
from vmigrate.testbed import libvirtd
from vmigrate.testbed.guests import GuestNic
from vmigrate.testbed.netns import call_in_netns
from vmigrate.testbed.testbed import Testbed

pytestmark = pytest.mark.timeout(180)

NAME = "vmigh"
FOUR = ("source", "destination", "hv3", "hv4")
SEEN: list[int] = []  # every process seen in the testbed's namespaces, for the final check


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    bed = Testbed(NAME)
    bed.down()
    bed.up(1000, hypervisors=4)
    yield bed
    bed.down()  # whatever a failed test left (the last test checks this for real)


def ip_json(netns: str, *args: str) -> Any:
    done = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(done.stdout)


def qdisc(netns: str, dev: str) -> str:
    return subprocess.run(["tc", "-n", netns, "qdisc", "show", "dev", dev],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def connect(address: tuple[str, int]) -> None:
    """Open (and close) a TCP connection to `address`, or raise."""
    socket.create_connection(address, timeout=5).close()


def test_a_testbed_with_four_hypervisors_has_them_all_reachable_and_shaped(bed: Testbed) -> None:
    assert bed.hypervisor_roles == FOUR
    again = Testbed(NAME)  # as `vmigrate testbed status/down` see it: from its state file
    assert again.hypervisor_roles == FOUR and again.is_healthy()
    status = again.status()
    assert status["up"] is True and status["hypervisors"] == 4
    assert set(status["hosts"]) == {*FOUR, "storage", "client"}
    assert all(host["present"] for host in status["hosts"].values())
    client = bed.hosts["client"]
    for role, host in bed.hosts.items():
        if role != "client":
            done = subprocess.run(
                ["ip", "netns", "exec", client.netns, "ping", "-c", "1", "-W", "2", host.ip],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, f"the client cannot reach {role}: {done.stdout}"
        assert "tbf" in qdisc(host.netns, host.uplink) and "1Gbit" in qdisc(host.netns, host.uplink)
        fabric = qdisc(f"{NAME}-fabric", host.fabric_port)
        assert "tbf" in fabric and "1Gbit" in fabric, role
    assert (bed.hosts["hv3"].ip, bed.hosts["hv4"].ip) == ("10.241.0.5", "10.241.0.6")
    root = {link["ifname"] for link in json.loads(subprocess.run(
        ["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)}  # fmt: skip
    assert not any(name.startswith(f"{NAME}-") for name in root)
    SEEN.extend(processes_in(NAME))


def test_a_guests_tap_is_made_on_every_hypervisor_host(bed: Testbed) -> None:
    nic = GuestNic(1)
    assert bed.add_guest_taps(nic) == f"{NAME}-t1"
    assert bed.add_guest_taps(nic) == f"{NAME}-t1"  # again: nothing changes
    for role in FOUR:
        host = bed.hosts[role]
        (link,) = ip_json(host.netns, "link", "show", "dev", f"{NAME}-t1")
        assert link["master"] == host.bridge and "UP" in link["flags"], (role, link)
    for role in ("storage", "client"):
        names = {link["ifname"] for link in ip_json(bed.hosts[role].netns, "link", "show")}
        assert f"{NAME}-t1" not in names
    # The client's short retransmission timeout covers this guest (and the last one) too.
    for ip in (nic.ip, GuestNic(27).ip):
        route = subprocess.run(["ip", "-n", bed.hosts["client"].netns, "route", "get", ip],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert re.search(r"rto_min (lock )?5ms", route), route


def test_a_libvirtd_answers_on_every_hypervisor_host(bed: Testbed) -> None:
    bed.up(1000, libvirt=True)
    assert bed.has_libvirt() and set(bed.status()["libvirt"]) == set(FOUR)
    uuids = set()
    own_mnt = os.stat("/proc/self/ns/mnt").st_ino
    for role in FOUR:
        uri = bed.libvirt_uri(role)
        pid = int(uri.split("/proc/")[1].split("/")[0])
        identify = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                                  text=True).stdout.strip()  # fmt: skip
        assert identify == bed.hosts[role].netns
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != own_mnt
        conn = libvirt_client.connect(uri)
        try:
            assert conn.getLibVersion() > 0
            uuids.add(libvirtd.capabilities_uuid(conn))
        finally:
            conn.close()
        # Peer-to-peer migration reaches it at its host's address from the source host.
        address = (bed.hosts[role].ip, libvirtd.TCP_PORT)
        call_in_netns(bed.hosts["source"].netns, connect, address)
    assert len(uuids) == 4  # each its own host
    SEEN.extend(processes_in(NAME))


def test_hosts_are_added_to_and_removed_from_a_testbed_that_is_up(bed: Testbed) -> None:
    nfs = {r.pid for r in bed.state.resources() if r.name.startswith("nfs")}
    said: list[str] = []
    bed.up(1000, said.append, hypervisors=5)  # libvirt not asked for: kept, and on hv5 too
    assert f"testbed {NAME} has 4 hypervisor hosts, 5 asked: adding hv5" in said
    assert bed.is_healthy() and bed.has_libvirt() and Testbed(NAME).hypervisors == 5
    hv5 = bed.hosts["hv5"]
    assert hv5.ip == "10.241.0.7"
    assert subprocess.run(["ip", "netns", "exec", bed.hosts["client"].netns, "ping", "-c", "1",
                           "-W", "2", hv5.ip], capture_output=True).returncode == 0  # fmt: skip
    (tap,) = ip_json(hv5.netns, "link", "show", "dev", f"{NAME}-t1")  # guest 1's, asked before
    assert tap["master"] == hv5.bridge
    conn = libvirt_client.connect(bed.libvirt_uri("hv5"))
    conn.close()
    SEEN.extend(processes_in(NAME))

    bed.up(1000, said.append, hypervisors=4)
    assert f"testbed {NAME} has 5 hypervisor hosts, 4 asked: removing hv5" in said
    assert Testbed(NAME).hypervisor_roles == FOUR and bed.is_healthy() and bed.has_libvirt()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert hv5.netns not in names.split()
    ports = {link["ifname"] for link in ip_json(f"{NAME}-fabric", "link", "show")}
    assert f"{NAME}-h5" not in ports and f"{NAME}-h4" in ports
    assert not any(r.name.endswith("hv5") for r in bed.state.resources())
    assert {r.pid for r in bed.state.resources() if r.name.startswith("nfs")} == nfs


def test_a_testbed_with_four_hypervisors_leaves_nothing_when_down(bed: Testbed) -> None:
    SEEN.extend(processes_in(NAME))
    assert bed.down() == []
    assert leftovers(NAME, SEEN) == []
    assert bed.leftovers(SEEN) == []
