"""The testbed's hosts and guests without a testbed: the layout for N hypervisor hosts, the
guests' identities, and the `ip`/`tc` commands that make taps and add or remove hosts (recorded
by a fake `run`; nothing is created)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from vmigrate.config import validate_scenario
from vmigrate.errors import TestbedError, UsageError
from vmigrate.guest.image import GuestImage
from vmigrate.hypervisor.qemu_backend import QemuHypervisor
from vmigrate.placement import Placement
from vmigrate.slot import VmSlot
from vmigrate.testbed import network, testbed_libvirt
from vmigrate.testbed import testbed as testbed_module
from vmigrate.testbed.guests import GUEST_SUBNET, MAX_GUESTS, GuestNic, every_guest, tap_pattern
from vmigrate.testbed.network import MAX_HYPERVISORS, Host, host_layout, hypervisor_roles
from vmigrate.testbed.state import Resource
from vmigrate.testbed.testbed import Testbed

LONGEST = "abcdefgh"  # a testbed name of the longest kind: 8 characters
IFNAMSIZ = 15  # Linux's longest interface name


def test_two_hypervisors_are_the_testbed_of_old() -> None:
    assert host_layout("vmig") == host_layout("vmig", 2) == {
        "source": Host("source", "vmig-source", "10.241.0.1", "vmig-up", "vmig-src",
                       "vmig-br", "vmig-tap"),
        "destination": Host("destination", "vmig-destination", "10.241.0.2", "vmig-up",
                            "vmig-dst", "vmig-br", "vmig-tap"),
        "storage": Host("storage", "vmig-storage", "10.241.0.3", "vmig-up", "vmig-sto"),
        "client": Host("client", "vmig-client", "10.241.0.4", "vmig-up", "vmig-cli"),
    }  # fmt: skip
    assert list(host_layout("vmig")) == ["source", "destination", "storage", "client"]


def test_four_hypervisors_add_hv3_and_hv4_after_the_destination() -> None:
    hosts = host_layout("vmig", 4)
    assert list(hosts) == ["source", "destination", "hv3", "hv4", "storage", "client"]
    assert hypervisor_roles(4) == ("source", "destination", "hv3", "hv4")
    assert {role: h.ip for role, h in hosts.items()} == {
        "source": "10.241.0.1", "destination": "10.241.0.2", "hv3": "10.241.0.5",
        "hv4": "10.241.0.6", "storage": "10.241.0.3", "client": "10.241.0.4",
    }  # fmt: skip
    assert (hosts["hv3"].netns, hosts["hv3"].fabric_port) == ("vmig-hv3", "vmig-h3")
    assert (hosts["hv4"].bridge, hosts["hv4"].tap) == ("vmig-br", "vmig-tap")


@pytest.mark.parametrize("count", range(2, MAX_HYPERVISORS + 1))
def test_every_layout_has_short_unique_names_and_addresses(count: int) -> None:
    hosts = host_layout(LONGEST, count).values()
    assert len(hosts) == count + 2
    assert sum(h.bridge is not None for h in hosts) == count
    for unique in ("netns", "ip", "fabric_port"):
        assert len({getattr(h, unique) for h in hosts}) == len(hosts), unique
    names = {h.uplink for h in hosts} | {h.fabric_port for h in hosts}
    names |= {h.bridge for h in hosts if h.bridge} | {nic.tap(LONGEST) for nic in every_guest()}
    assert max(len(name) for name in names) <= IFNAMSIZ, max(names, key=len)
    subnet = ipaddress.ip_network("10.241.0.0/24")
    guests = ipaddress.ip_network(GUEST_SUBNET)
    for host in hosts:
        assert ipaddress.ip_address(host.ip) in subnet
        assert ipaddress.ip_address(host.ip) not in guests


@pytest.mark.parametrize("count", [-1, 0, 1, MAX_HYPERVISORS + 1, 100])
def test_a_count_out_of_range_says_the_range(count: int, fake: FakeIp, state: Path) -> None:
    with pytest.raises(UsageError, match=f"2 to {MAX_HYPERVISORS} hypervisor hosts, not"):
        host_layout("vmig", count)
    with pytest.raises(UsageError, match="2 to"):
        Testbed("vmunit", hypervisors=count)
    with pytest.raises(UsageError, match="2 to"):
        Testbed("vmunit").up(1000, hypervisors=count)
    assert fake.calls == [] and not (state / "vmunit").exists()


def test_guest_zero_is_the_guest_of_old_and_the_others_follow() -> None:
    zero = GuestNic(0)
    assert (zero.ip, zero.mac, zero.tap("vmig")) == (
        "10.241.0.100",
        "52:54:00:f1:00:64",
        "vmig-tap",
    )
    assert (GuestNic(1).ip, GuestNic(1).mac, GuestNic(1).tap("vmig")) == (
        "10.241.0.101", "52:54:00:f1:00:65", "vmig-t1",
    )  # fmt: skip
    last = GuestNic(MAX_GUESTS - 1)
    assert (last.ip, last.mac, last.tap(LONGEST)) == ("10.241.0.127", "52:54:00:f1:00:7f",
                                                       "abcdefgh-t27")  # fmt: skip
    guests = every_guest()
    for key in ("ip", "mac"):
        assert len({getattr(g, key) for g in guests}) == MAX_GUESTS, key
    assert len({g.tap("vmig") for g in guests}) == MAX_GUESTS
    subnet = ipaddress.ip_network(GUEST_SUBNET)
    assert all(ipaddress.ip_address(g.ip) in subnet for g in guests)
    assert all(int(g.mac.split(":")[-1], 16) == 0x64 + g.index for g in guests)


@pytest.mark.parametrize("index", [-1, MAX_GUESTS, 1000])
def test_a_guest_out_of_range_says_the_range(index: int) -> None:
    with pytest.raises(UsageError, match=f"guests 0 to {MAX_GUESTS - 1}"):
        GuestNic(index)


def test_the_tap_pattern_finds_every_guests_tap_of_its_testbed_only() -> None:
    pattern = tap_pattern("vmig")
    for text in ("ifname=vmig-tap,script=no", "ifname=vmig-t1,", "dev vmig-t27"):
        assert pattern.search(text), text
    for text in ("ifname=vmigt-tap,", "ifname=xvmig-tap,", "vmig-tapx", "vmig-t1x", "vmig-br"):
        assert not pattern.search(text), text


def test_the_client_route_with_a_short_rto_covers_every_guest(fake: FakeIp) -> None:
    network.tune_stack(host_layout("vmig")["client"])
    routes = [argv for argv in fake.calls if "route" in argv]
    assert routes == [["ip", "-n", "vmig-client", "route", "add", GUEST_SUBNET, "dev", "vmig-up",
                       "rto_min", "5ms"]]  # fmt: skip
    network.tune_stack(host_layout("vmig")["source"])
    assert len([argv for argv in fake.calls if "route" in argv]) == 1  # the client's alone


# -- a testbed that is "up" in a state file, with a fake `ip` ---------------------------------


class FakeIp:
    """Records every command; keeps the namespaces and taps that `ip` would have made."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.namespaces: set[str] = set()
        self.links: set[tuple[str, str]] = set()
        self.pids: dict[str, list[int]] = {}

    def run(self, argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        code = 0
        if argv[:3] == ["ip", "netns", "add"]:
            self.namespaces.add(argv[3])
        elif argv[:3] == ["ip", "netns", "delete"]:
            self.namespaces.discard(argv[3])
        elif argv[:2] == ["ip", "-n"] and argv[3:5] == ["link", "show"]:
            code = 0 if (argv[2], argv[-1]) in self.links else 1
        elif argv[:2] == ["ip", "-n"] and argv[3:5] == ["tuntap", "add"]:
            self.links.add((argv[2], argv[6]))
        return subprocess.CompletedProcess(argv, code, "", "")

    def made(self, what: str) -> list[list[str]]:
        """The commands that include `what` (a word)."""
        return [argv for argv in self.calls if what in argv]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMIGRATE_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, state: Path) -> FakeIp:
    fake = FakeIp()
    monkeypatch.setattr(network, "run", fake.run)
    monkeypatch.setattr(testbed_module, "run", fake.run)
    monkeypatch.setattr(testbed_module, "netns_exists", lambda ns: ns in fake.namespaces)
    monkeypatch.setattr(testbed_module, "netns_pids", lambda ns: fake.pids.get(ns, []))
    return fake


def up_in_state(fake: FakeIp, name: str, count: int) -> Testbed:
    """Testbed `name` as `up` leaves it with `count` hypervisor hosts (in its state file and
    the fake's namespaces); nothing runs."""
    bed = Testbed(name, hypervisors=count)
    bed.state.set_facts(name=name, complete=True, hypervisors=count, bandwidth_mbit=1000)
    for netns in [network.fabric_netns(name)] + [h.netns for h in bed.hosts.values()]:
        bed.state.add_netns(netns)
        fake.namespaces.add(netns)
    fake.links |= {(bed.hosts[role].netns, f"{name}-tap") for role in bed.hypervisor_roles}
    return bed


def test_the_count_of_an_existing_testbed_comes_from_its_state(fake: FakeIp) -> None:
    assert Testbed("vmunit").hypervisors == 2  # none yet
    up_in_state(fake, "vmunit", 4)
    bed = Testbed("vmunit")
    assert bed.hypervisor_roles == ("source", "destination", "hv3", "hv4")
    assert bed.is_healthy() and bed.status()["hypervisors"] == 4
    assert set(bed.status()["hosts"]) == {"source", "destination", "hv3", "hv4", "storage",
                                          "client"}  # fmt: skip
    assert not Testbed("vmunit", hypervisors=2).is_healthy()  # not the testbed asked for
    assert "vmunit-hv6" in bed.namespace_names()  # down looks for every host it may have
    old = json.loads(bed.state.path.read_text())  # a state file of old: 2 hosts
    del old["facts"]["hypervisors"]
    bed.state.path.write_text(json.dumps(old))
    assert Testbed("vmunit").hypervisors == 2
    bed.state.path.write_text("{")  # damaged: the default, and `down` removes what it can
    assert Testbed("vmunit").hypervisors == 2


def test_guest_taps_are_made_on_every_hypervisor_host_once(fake: FakeIp) -> None:
    bed = up_in_state(fake, "vmu", 4)
    assert bed.add_guest_taps(GuestNic(1)) == "vmu-t1"
    made = fake.made("tuntap")
    assert made == [["ip", "-n", f"vmu-{role}", "tuntap", "add", "dev", "vmu-t1", "mode", "tap"]
                    for role in ("source", "destination", "hv3", "hv4")]  # fmt: skip
    plugged = [argv for argv in fake.made("master") if "vmu-t1" in argv]
    assert plugged == [["ip", "-n", f"vmu-{role}", "link", "set", "vmu-t1", "master", "vmu-br",
                        "up"] for role in ("source", "destination", "hv3", "hv4")]  # fmt: skip
    fake.calls.clear()
    assert bed.add_guest_taps(GuestNic(1)) == "vmu-t1"  # again: nothing new
    assert bed.add_guest_taps(GuestNic(0)) == "vmu-tap"  # guest 0's came with the hosts
    assert fake.made("tuntap") == []
    assert bed.state.facts()["guest_taps"] == [1]
    assert not any("storage" in arg or "client" in arg for argv in fake.calls for arg in argv)


def test_guest_taps_need_a_testbed_that_is_up(fake: FakeIp) -> None:
    with pytest.raises(TestbedError, match="not up"):
        Testbed("vmu").add_guest_taps(GuestNic(2))
    assert fake.calls == []


def test_up_with_more_hypervisors_adds_the_missing_hosts(fake: FakeIp) -> None:
    bed = up_in_state(fake, "vmu", 2)
    bed.add_guest_taps(GuestNic(2))
    said: list[str] = []
    fake.calls.clear()
    bed.up(100, said.append, hypervisors=4)
    assert "testbed vmu has 2 hypervisor hosts, 4 asked: adding hv3, hv4" in said
    assert {"vmu-hv3", "vmu-hv4"} <= fake.namespaces
    assert ["ip", "-n", "vmu-fabric", "link", "add", "vmu-h3", "type", "veth", "peer", "name",
            "vmu-up", "netns", "vmu-hv3"] in fake.calls  # fmt: skip
    assert ["ip", "-n", "vmu-hv4", "addr", "add", "10.241.0.6/24", "dev", "vmu-br"] in fake.calls
    for ns in ("vmu-hv3", "vmu-hv4"):  # guest 0's tap with the host, guest 2's as asked before
        assert (ns, "vmu-tap") in fake.links and (ns, "vmu-t2") in fake.links
        assert any(argv[:3] == ["tc", "-n", ns] and "100mbit" in argv for argv in fake.calls)
    added = [argv for argv in fake.calls if argv[:3] == ["ip", "netns", "add"]]
    assert added == [["ip", "netns", "add", "vmu-hv3"], ["ip", "netns", "add", "vmu-hv4"]]
    assert Testbed("vmu").hypervisors == 4 and bed.is_healthy()
    recorded = {r.name for r in bed.state.resources() if r.kind == "netns"}
    assert {"vmu-hv3", "vmu-hv4"} <= recorded


def test_up_with_fewer_hypervisors_removes_the_last_hosts(fake: FakeIp) -> None:
    bed = up_in_state(fake, "vmu", 4)
    said: list[str] = []
    bed.up(1000, said.append, hypervisors=3)
    assert "testbed vmu has 4 hypervisor hosts, 3 asked: removing hv4" in said
    assert fake.made("delete") == [["ip", "netns", "delete", "vmu-hv4"]]
    assert "vmu-hv4" not in {r.name for r in bed.state.resources()}
    assert Testbed("vmu").hypervisor_roles == ("source", "destination", "hv3")
    fake.calls.clear()
    bed.up(1000, said.append)  # the count it has: links re-shaped, no host added or removed
    assert fake.made("netns") == [] and fake.made("tc")


def test_a_host_that_still_runs_something_is_not_removed(fake: FakeIp) -> None:
    bed = up_in_state(fake, "vmu", 4)
    fake.pids["vmu-hv4"] = [4242]
    with pytest.raises(TestbedError, match=r"hv4 \(pids 4242\) still run something"):
        bed.up(1000, hypervisors=2)
    assert fake.made("delete") == []
    assert bed.hypervisors == 4 and Testbed("vmu").hypervisors == 4


def test_hosts_added_to_a_testbed_with_libvirt_get_their_daemon(
    fake: FakeIp, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = up_in_state(fake, "vmu", 2)
    for role in ("source", "destination"):
        bed.state.add(Resource("process", f"libvirtd-{role}", pid=10, start_ticks=1))
    monkeypatch.setattr(testbed_libvirt, "is_same_process", lambda pid, ticks: True)
    started: list[Sequence[str]] = []
    monkeypatch.setattr(bed, "start_libvirt", lambda progress, roles=(): started.append(roles))
    bed.up(1000, hypervisors=4)  # libvirt not asked for: the testbed has it, so keeps it
    assert started == [["hv3", "hv4"]]


def test_placement_runs_the_vm_as_the_guest_it_is_given(fake: FakeIp, tmp_path: Path) -> None:
    bed = up_in_state(fake, "vmu", 2)
    scenario = validate_scenario({"name": "g"})
    image = GuestImage(tmp_path / "vmlinuz", tmp_path / "initrd", "6.1", "abc")

    def vm(placement: Placement) -> tuple[str, str, str]:
        config = placement.vm_config(image, tmp_path / "disk", "tcg", "qemu64", "pc-q35-10.0")
        hypervisor = placement.hypervisor({})
        assert isinstance(hypervisor, QemuHypervisor)
        taps = {place.tap for place in hypervisor.places.values()}
        assert len(taps) == 1
        return config.mac, config.kernel_cmdline, taps.pop()

    mac, cmdline, tap = vm(Placement(scenario, bed, tmp_path))
    assert (mac, tap) == (bed.guest_mac, bed.hosts["source"].tap)
    assert f"{bed.guest_ip}/24" in cmdline
    mac, cmdline, tap = vm(Placement(scenario, bed, tmp_path, VmSlot(GuestNic(3))))
    assert (mac, tap) == ("52:54:00:f1:00:67", "vmu-t3")
    assert "10.241.0.103/24" in cmdline
