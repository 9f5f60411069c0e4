"""A VM's slot on a shared testbed: the default slot is the single run of old; another slot has
its own guest, hosts, QEMU labels, QMP sockets, ports and names, and the backend, the guest's
facts, the meters, the sampler and the checks use them. Nothing runs: `ip`, QEMU and the network
are faked."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_testbed_layout import FakeIp, up_in_state

from vmigrate import placement as placement_module
from vmigrate.config import Scenario, validate_scenario
from vmigrate.errors import TestbedError, UsageError
from vmigrate.experiment import Experiment, SilentObserver
from vmigrate.guest import facts
from vmigrate.guest.image import GuestImage
from vmigrate.hypervisor.qemu import QemuDomain
from vmigrate.hypervisor.qemu_backend import MIGRATION_PORT, NBD_PORT, QemuHypervisor
from vmigrate.hypervisor.qemu_migration import QemuMigration
from vmigrate.measure.meters import Meters
from vmigrate.measure.resources import ResourceSampler
from vmigrate.migration import preflight
from vmigrate.migration.strategy import plan_for
from vmigrate.pids import process_start_ticks
from vmigrate.placement import Placement
from vmigrate.slot import DEFAULT_SLOT, VmSlot
from vmigrate.testbed import network
from vmigrate.testbed import testbed as testbed_module
from vmigrate.testbed.guests import MAX_GUESTS, GuestNic
from vmigrate.testbed.state import Resource
from vmigrate.testbed.testbed import Testbed

SLOT2 = VmSlot(GuestNic(2), "source", "hv3")


@pytest.fixture(autouse=True)
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMIGRATE_STATE", str(tmp_path / "state"))


def fake_ip(monkeypatch: pytest.MonkeyPatch) -> FakeIp:
    """`ip` faked: namespaces and taps are made in a FakeIp."""
    fake = FakeIp()
    monkeypatch.setattr(network, "run", fake.run)
    monkeypatch.setattr(testbed_module, "run", fake.run)
    monkeypatch.setattr(testbed_module, "netns_exists", lambda ns: ns in fake.namespaces)
    monkeypatch.setattr(testbed_module, "netns_pids", lambda ns: fake.pids.get(ns, []))
    return fake


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeIp:
    return fake_ip(monkeypatch)


def scenario(**sections: Any) -> Scenario:
    return validate_scenario({"name": "g", **sections})


# -- the slot itself ---------------------------------------------------------------------------


def test_the_default_slot_keeps_the_names_labels_and_ports_of_a_single_run(tmp_path: Path) -> None:
    slot = VmSlot()
    assert slot == DEFAULT_SLOT and slot.is_default and slot.tag == ""
    assert (slot.nic.index, slot.source_host, slot.destination_host) == (0, "source", "destination")
    qemu = slot.qemu
    assert qemu.labels() == ("qemu-source", "qemu-destination")
    assert qemu.qmp_socket(tmp_path, "source") == tmp_path / "qmp-source.sock"
    assert (qemu.migration_port, qemu.nbd_port) == (MIGRATION_PORT, NBD_PORT) == (4444, 10809)
    assert slot.name("demo") == "demo"
    assert slot.hypervisors_needed == 2
    assert [slot.host_role(r) for r in ("source", "destination", "storage", "client")] == [
        "source", "destination", "storage", "client",
    ]  # fmt: skip


def test_slot_2_to_hv3_has_its_own_guest_hosts_names_and_ports(tmp_path: Path) -> None:
    assert not SLOT2.is_default and SLOT2.tag == "vm2"
    assert (SLOT2.nic.ip, SLOT2.nic.mac, SLOT2.nic.tap("vmu")) == (
        "10.241.0.102", "52:54:00:f1:00:66", "vmu-t2",
    )  # fmt: skip
    qemu = SLOT2.qemu
    assert qemu.labels() == ("qemu-source-vm2", "qemu-destination-vm2")
    assert qemu.qmp_socket(tmp_path, "destination") == tmp_path / "qmp-destination-vm2.sock"
    assert (qemu.migration_port, qemu.nbd_port) == (4446, 10811)
    assert SLOT2.name("demo") == "demo-vm2"
    assert SLOT2.host_role("destination") == "hv3" and SLOT2.hypervisors_needed == 3
    bed = Testbed("vmu", hypervisors=3)
    hosts = SLOT2.hosts(bed)
    assert (hosts["source"], hosts["destination"]) == (bed.hosts["source"], bed.hosts["hv3"])
    assert (hosts["storage"], hosts["client"]) == (bed.hosts["storage"], bed.hosts["client"])


def test_every_guests_slot_has_names_and_ports_no_other_has(tmp_path: Path) -> None:
    slots = [VmSlot(GuestNic(i), "source", "hv4") for i in range(MAX_GUESTS)]
    labels = [label for slot in slots for label in slot.qemu.labels()]
    sockets = [slot.qemu.qmp_socket(tmp_path, r) for slot in slots for r in ("source", "x")]
    ports = [p for slot in slots for p in (slot.qemu.migration_port, slot.qemu.nbd_port)]
    names = [slot.name("demo") for slot in slots]
    for what in (labels, sockets, ports, names):
        assert len(set(what)) == len(what)
    assert all(len(str(s)) < 108 for s in sockets)  # a unix socket path's limit


@pytest.mark.parametrize(
    ("source", "destination", "says"),
    [("source", "source", "to itself"), ("storage", "hv3", "not a hypervisor host"),
     ("source", "hv9", "not a hypervisor host")],
)  # fmt: skip
def test_a_slot_refuses_hosts_it_cannot_use(source: str, destination: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        VmSlot(GuestNic(1), source, destination)


def test_a_slot_on_a_testbed_without_its_host_says_how_many_it_needs() -> None:
    with pytest.raises(UsageError, match=r"hypervisors = 3 or more"):
        SLOT2.hosts(Testbed("vmu", hypervisors=2))


# -- the placement and the QEMU backend ------------------------------------------------------


def placed(bed: Testbed, tmp_path: Path, slot: VmSlot, **sections: Any) -> Placement:
    return Placement(scenario(**sections), bed, tmp_path, slot)


def test_the_qemu_backend_places_the_vm_roles_on_the_slots_hosts(
    fake: FakeIp, tmp_path: Path
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    hypervisor = placed(bed, tmp_path, SLOT2).hypervisor({})
    assert isinstance(hypervisor, QemuHypervisor)
    source, destination = hypervisor.places["source"], hypervisor.places["destination"]
    assert (source.role, source.netns, source.ip, source.tap) == (
        "source", "vmu-source", "10.241.0.1", "vmu-t2",
    )  # fmt: skip
    assert (destination.role, destination.netns, destination.ip, destination.tap) == (
        "destination", "vmu-hv3", "10.241.0.5", "vmu-t2",
    )  # fmt: skip
    assert hypervisor.instance == SLOT2.qemu
    assert hypervisor.listen_ports(plan_for(scenario().migration, copy_storage=True)) == {
        "migration": 4446,
        "nbd": 10811,
    }
    default = placed(bed, tmp_path, DEFAULT_SLOT).hypervisor({})
    assert isinstance(default, QemuHypervisor)
    assert default.places["destination"].netns == "vmu-destination"
    assert default.listen_ports(plan_for(scenario().migration, copy_storage=False)) == {
        "migration": 4444
    }


def test_a_slots_disks_and_certificates_are_its_own(fake: FakeIp, tmp_path: Path) -> None:
    bed = up_in_state(fake, "vmu", 3)
    made: list[Path] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(placement_module, "create_disk", made.append)
        disks = placed(bed, tmp_path, SLOT2, storage={"mode": "local"}).create_disks()
        alone = placed(bed, tmp_path, DEFAULT_SLOT, storage={"mode": "local"}).create_disks()
    assert disks["source"].parent == bed.local_disk_dir("source")
    assert disks["destination"].parent == bed.local_disk_dir("hv3")
    assert disks["source"].name.startswith("g-vm2-") and "vm" not in alone["source"].name
    assert made == [*disks.values(), *alone.values()]
    dirs = placed(bed, tmp_path, SLOT2, migration={"tls": True}).certificates()
    assert dirs == {
        "source": bed.dir / "hosts" / "source" / "tls-vm2",
        "destination": bed.dir / "hosts" / "hv3" / "tls-vm2",
    }
    assert (dirs["destination"] / "server-cert.pem").exists()


def test_the_vm_config_names_the_vm_after_its_slot(fake: FakeIp, tmp_path: Path) -> None:
    bed = up_in_state(fake, "vmu", 3)
    image = GuestImage(tmp_path / "vmlinuz", tmp_path / "initrd", "6.1", "abc")
    config = placed(bed, tmp_path, SLOT2).vm_config(image, tmp_path / "d", "kvm", "qemu64", "q35")
    assert (config.name, config.mac) == ("g-vm2", "52:54:00:f1:00:66")
    assert "10.241.0.102/24" in config.kernel_cmdline


class FakePopen:
    """A QEMU that never runs: its argv is kept."""

    started: ClassVar[list[list[str]]] = []

    def __init__(self, argv: list[str], **_: Any) -> None:
        self.argv = argv
        self.pid = 40000 + len(FakePopen.started)
        self.returncode: int | None = None
        FakePopen.started.append(argv)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = 0
        return 0


def test_the_slots_qemus_use_its_netns_tap_mac_socket_label_and_port(
    fake: FakeIp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    placement = placed(bed, tmp_path, SLOT2)
    image = GuestImage(tmp_path / "vmlinuz", tmp_path / "initrd", "6.1", "abc")
    config = placement.vm_config(image, tmp_path / "disk", "kvm", "qemu64", "q35")
    hypervisor = placement.hypervisor({})
    assert isinstance(hypervisor, QemuHypervisor)
    labels: list[str] = []
    hypervisor.on_start = lambda pid, label: labels.append(label)
    hypervisor.on_exit = lambda pid: None
    commands: list[tuple[str, str, Any]] = []

    async def execute(self: QemuDomain, command: str, arguments: Any = None) -> Any:
        commands.append((self.host_role, command, arguments))
        return {"qemu": {"major": 10, "minor": 0, "micro": 2}} if command == "query-version" else {}

    async def connected(self: QemuDomain) -> None:
        pass

    FakePopen.started = []
    monkeypatch.setattr(subprocess, "Popen", FakePopen)  # what qemu.py starts QEMU with
    monkeypatch.setattr(QemuDomain, "_connect", connected)
    monkeypatch.setattr(QemuDomain, "execute", execute)

    async def boot_and_prepare() -> QemuMigration:
        source = await hypervisor.boot(config)
        migration = await hypervisor.prepare_migration(
            source, plan_for(scenario().migration, copy_storage=False)
        )
        assert isinstance(migration, QemuMigration)
        await hypervisor.close()
        return migration

    migration = asyncio.run(boot_and_prepare())
    assert labels == ["qemu-source-vm2", "qemu-destination-vm2"]
    run_dir = bed.dir / "run"
    for argv, netns, role in zip(
        FakePopen.started, ["vmu-source", "vmu-hv3"], ["source", "destination"], strict=True
    ):
        assert argv[:4] == ["ip", "netns", "exec", netns]
        line = " ".join(argv)
        assert "ifname=vmu-t2," in line and "mac=52:54:00:f1:00:66," in line
        assert f"unix:{run_dir / f'qmp-{role}-vm2.sock'},server=on" in line
        assert argv[argv.index("-name") + 1] == "g-vm2,debug-threads=on"
    assert FakePopen.started[1][-2:] == ["-incoming", "defer"]
    assert migration.uri == "tcp:10.241.0.5:4446"
    incoming = [args for role, cmd, args in commands if cmd == "migrate-incoming"]
    assert incoming == [{"uri": "tcp:10.241.0.5:4446"}]


# -- the guest's word, the meters, the sampler, the checks -------------------------------------


def test_ask_guest_asks_the_slots_address_from_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str, str]] = []
    replies: dict[str, Any] = {
        "http_get": {"boot_id": "b1"}, "checksum": "c1", "verify": (8, 0), "disk_verify": (4, 0),
    }  # fmt: skip

    def call_in_netns(netns: str, fn: Any, address: str) -> Any:
        asked.append((netns, fn.__name__, address))
        return replies[fn.__name__]

    monkeypatch.setattr(facts, "call_in_netns", call_in_netns)
    bed = Testbed("vmu")
    got = asyncio.run(facts.ask_guest(bed, True, SLOT2.nic.ip))
    assert (got.boot_id, got.checksum, got.pages_checked, got.disk_blocks_checked) == (
        "b1", "c1", 8, 4,
    )  # fmt: skip
    assert {(netns, address) for netns, _, address in asked} == {("vmu-client", "10.241.0.102")}
    assert len(asked) == 4
    asked.clear()
    asyncio.run(facts.ask_guest(bed, False))
    assert asked == [("vmu-client", "http_get", bed.guest_ip)]


def experiment(bed: Testbed, tmp_path: Path, slot: VmSlot, **kw: Any) -> Experiment:
    return Experiment(scenario(), tmp_path / "run", bed, SilentObserver(), slot=slot, **kw)


def test_the_meters_aim_at_the_slots_address_and_capture_its_mac(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aimed: list[Any] = []

    async def start(self: Meters, load: Any, http: bool) -> None:
        aimed.append(self.target)

    monkeypatch.setattr(Meters, "start", start)
    bed = Testbed("vmu", hypervisors=3)
    asyncio.run(experiment(bed, tmp_path, SLOT2).start_clients())
    asyncio.run(experiment(bed, tmp_path, DEFAULT_SLOT).start_clients())
    lane, alone = aimed
    assert (lane.netns, lane.address) == ("vmu-client", "10.241.0.102")
    assert lane.capture_on == ("vmu-up", "52:54:00:f1:00:66")
    assert (alone.address, alone.capture_on) == (bed.guest_ip, ("vmu-up", bed.guest_mac))


def test_the_sampler_watches_the_slots_hosts_under_the_vms_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ResourceSampler, "start", lambda self: None)
    bed = Testbed("vmu", hypervisors=3)
    run = experiment(bed, tmp_path, SLOT2)
    run.hosts = SLOT2.hosts(bed)
    run._start_sampler()
    assert run.sampler is not None
    assert [(h.role, h.netns) for h in run.sampler.hosts] == [
        ("source", "vmu-source"), ("destination", "vmu-hv3"), ("storage", "vmu-storage"),
    ]  # fmt: skip


def test_the_ports_check_looks_on_the_slots_destination(monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []

    def call_in_netns(netns: str, fn: Any, port: int) -> bool:
        looked.append(netns)
        return True

    monkeypatch.setattr(preflight, "call_in_netns", call_in_netns)
    bed = Testbed("vmu", hypervisors=3)
    ports = {"migration": SLOT2.qemu.migration_port}
    check = preflight.ports_check(bed, ports, SLOT2.host(bed, "destination"))
    assert check.status == "pass" and looked == ["vmu-hv3"]
    preflight.ports_check(bed, {"migration": 4444})
    assert looked[-1] == "vmu-destination"


# -- a VM of an earlier run in the way --------------------------------------------------------


def test_only_a_qemu_of_the_lanes_own_slot_stops_a_lane(fake: FakeIp) -> None:
    bed = up_in_state(fake, "vmu", 3)
    me = os.getpid()  # a process that lives, recorded as another lane's QEMU
    bed.state.add(
        Resource("process", "qemu-source-vm1", pid=me, start_ticks=process_start_ticks(me))
    )
    with pytest.raises(TestbedError, match="qemu-source-vm1"):
        bed.require_no_vm()  # a run alone: any VM is in the way
    bed.require_no_vm(SLOT2.qemu.labels())  # a lane beside it: not its own
    with pytest.raises(TestbedError, match="still runs a VM of an earlier run"):
        bed.require_no_vm(VmSlot(GuestNic(1), "source", "hv3").qemu.labels())
    bed.state.add(Resource("process", "qemu-destination-vm2", pid=me, start_ticks=1))
    bed.require_no_vm(SLOT2.qemu.labels())  # its own, recorded, but that process is gone
    bed.state.add(
        Resource("process", "qemu-destination-vm2", pid=me, start_ticks=process_start_ticks(me))
    )
    with pytest.raises(TestbedError, match="qemu-destination-vm2"):
        bed.require_no_vm(SLOT2.qemu.labels())
