"""A drain places its VMs once they run: a lane's destination is bound at its release. The slot,
the hosts by role, a local destination disk and either backend's destination follow; a lane
tells the drain when its migration ended, and a lane that ends any other way says so too.
Nothing runs: `ip`, QEMU, libvirt and the network are faked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_lane_hooks import FakeRun, no_analysis  # noqa: F401 - a fixture
from test_testbed_layout import FakeIp
from test_vm_slot import fake_ip, up_in_state

from vmigrate import libvirt_client
from vmigrate import placement as placement_module
from vmigrate.config import validate_scenario
from vmigrate.errors import HypervisorError, UsageError
from vmigrate.experiment import Experiment, SilentObserver
from vmigrate.hypervisor.libvirt_backend import LibvirtHost, LibvirtHypervisor
from vmigrate.hypervisor.qemu_backend import QemuHypervisor
from vmigrate.lane import LaneHooks
from vmigrate.migration.preflight import Check, Preflight
from vmigrate.slot import VmSlot
from vmigrate.testbed.guests import GuestNic
from vmigrate.testbed.testbed import Testbed

SLOT1 = VmSlot(GuestNic(1), "source", "destination")


@pytest.fixture(autouse=True)
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMIGRATE_STATE", str(tmp_path / "state"))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeIp:
    return fake_ip(monkeypatch)


@pytest.fixture
def disks_made(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """qemu-img faked: a disk is an empty file."""
    made: list[Path] = []

    def create(path: Path) -> None:
        path.touch()
        made.append(path)

    monkeypatch.setattr(placement_module, "create_disk", create)
    return made


def lane(bed: Testbed, tmp_path: Path, **sections: Any) -> Experiment:
    """A lane set up as its session leaves it: hosts, disks and backend for SLOT1."""
    run = Experiment(
        validate_scenario({"name": "g", **sections}), tmp_path / "g", bed, SilentObserver(),
        slot=SLOT1, shared=True, sample_hosts=False,
    )  # fmt: skip
    run.hosts = SLOT1.hosts(bed)
    run.disks.update(run.placement.create_disks())
    run.hypervisor = run.placement.hypervisor(run.disks)
    return run


def test_binding_the_destination_moves_the_slot_hosts_disk_and_qemu_backend(
    fake: FakeIp, tmp_path: Path, disks_made: list[Path]
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    run = lane(bed, tmp_path, storage={"mode": "local"})
    first = run.disks["destination"]
    assert first.parent == bed.local_disk_dir("destination") and first.exists()
    asyncio.run(run.bind_destination("hv3"))
    assert run.slot == VmSlot(GuestNic(1), "source", "hv3") and run.placement.slot == run.slot
    assert run.hosts["destination"] == bed.hosts["hv3"]
    assert run.hosts["source"] == bed.hosts["source"]
    moved = run.disks["destination"]
    assert moved.parent == bed.local_disk_dir("hv3") and moved.name == first.name
    assert moved.exists() and not first.exists()
    assert str(moved) in bed.state.path.read_text()  # recorded: `testbed down` removes it
    hypervisor = run.hypervisor
    assert isinstance(hypervisor, QemuHypervisor)
    assert (hypervisor.places["destination"].netns, hypervisor.places["destination"].ip) == (
        "vmu-hv3", "10.241.0.5",
    )  # fmt: skip
    assert hypervisor.target_disk is not None
    assert hypervisor.target_disk("destination") == str(moved)  # the backend copies into it
    assert run._environment().model_dump()["destination_host"] == "hv3"
    asyncio.run(run.bind_destination("hv3"))  # the same again: nothing changes
    assert disks_made.count(moved) == 2  # made once, then afresh by target_disk above


def test_binding_a_shared_storage_lane_makes_no_disk(
    fake: FakeIp, tmp_path: Path, disks_made: list[Path]
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    run = lane(bed, tmp_path)
    asyncio.run(run.bind_destination("hv3"))
    assert list(run.disks) == ["source"] and len(disks_made) == 1


def test_a_destination_that_is_the_source_or_absent_is_refused(
    fake: FakeIp, tmp_path: Path, disks_made: list[Path]
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    run = lane(bed, tmp_path)
    with pytest.raises(UsageError, match="to itself"):
        asyncio.run(run.bind_destination("source"))
    with pytest.raises(UsageError, match="hypervisors = 4"):
        asyncio.run(run.bind_destination("hv4"))
    assert run.slot == SLOT1  # unchanged


def test_the_qemu_backend_refuses_a_new_destination_once_it_runs_a_qemu_there(
    tmp_path: Path,
) -> None:
    bed = Testbed("vmu", hypervisors=3)
    placement = placement_module.Placement(validate_scenario({}), bed, tmp_path, SLOT1)
    hypervisor = placement.hypervisor({})
    assert isinstance(hypervisor, QemuHypervisor)

    class Running:
        host_role, released = "destination", False

    hypervisor.domains.append(Running())  # type: ignore[arg-type]
    with pytest.raises(HypervisorError, match="already has a QEMU"):
        hypervisor.retarget(placement.host_place("destination"))


class FakeConn:
    def __init__(self, uri: str) -> None:
        self.uri, self.closed = uri, False

    def close(self) -> None:
        self.closed = True

    def getLibVersion(self) -> int:
        return 11_003_000

    def getVersion(self) -> int:
        return 10_000_002


def test_the_libvirt_backend_talks_to_the_new_destinations_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    libvirt = type("libvirt", (), {"libvirtError": OSError})
    monkeypatch.setattr(libvirt_client, "load", lambda: libvirt)
    monkeypatch.setattr(libvirt_client, "connect", lambda uri, timeout: FakeConn(uri))
    hypervisor = LibvirtHypervisor(
        LibvirtHost("source", "uri-source"), LibvirtHost("destination", "uri-old"), tmp_path
    )

    async def go() -> tuple[FakeConn, FakeConn]:
        await hypervisor.connect()
        old = hypervisor.conns["destination"]
        await hypervisor.retarget(LibvirtHost("destination", "uri-hv3"))
        return old, hypervisor.conns["destination"]

    old, new = asyncio.run(go())
    assert old.closed and new.uri == "uri-hv3" and not new.closed
    assert hypervisor.hosts["destination"].uri == "uri-hv3"
    fresh = LibvirtHypervisor(LibvirtHost("source", "s"), LibvirtHost("destination", "d"), tmp_path)
    asyncio.run(fresh.retarget(LibvirtHost("destination", "uri-hv3")))
    assert fresh.conns == {}  # not connected yet: it connects to the new one when it boots


def test_the_placement_retargets_a_libvirt_lane_at_its_new_hosts_daemon(
    fake: FakeIp, tmp_path: Path, disks_made: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    pids = {role: 7000 + i for i, role in enumerate(bed.hypervisor_roles)}  # their libvirtds
    monkeypatch.setattr(Testbed, "_libvirtd_pid", lambda self, role: pids[role])
    run = lane(bed, tmp_path, hosts={"backend": "libvirt"})
    assert isinstance(run.hypervisor, LibvirtHypervisor)
    asyncio.run(run.bind_destination("hv3"))
    host = run.hypervisor.hosts["destination"]
    assert (host.role, host.uri) == ("destination", bed.libvirt_uri("hv3"))
    assert str(pids["hv3"]) in host.uri and host.root == Path(f"/proc/{pids['hv3']}/root")
    assert host.migration_uri == bed.libvirt_migration_uri("hv3")


# -- the lane tells the drain ------------------------------------------------------------------


def test_hooks_carry_the_destination_and_say_when_the_migration_ended() -> None:
    hooks = LaneHooks()

    async def go() -> None:
        hooks.report_booted("domain")  # type: ignore[arg-type]
        assert hooks.source == "domain"
        hooks.release((1, 2), destination_host="hv3")
        assert await hooks.turn() == (1, 2)
        assert hooks.destination_host == "hv3" and hooks.released_ns is not None
        assert not hooks.migrated.is_set()
        hooks.report_migrated()
        await asyncio.wait_for(hooks.wait_migrated(), 1)
        first = hooks.migrated_ns
        hooks.give_up()  # the lane ends later: its migration's end stays as it was
        assert hooks.migrated_ns == first and hooks.source is None and not hooks.failed

    asyncio.run(go())


def test_a_lane_that_ends_without_migrating_frees_its_slot() -> None:
    hooks = LaneHooks()
    hooks.give_up()
    assert hooks.failed and hooks.booted.is_set() and hooks.migrated.is_set()


@pytest.mark.usefixtures("no_analysis")
def test_a_released_lane_keeps_the_drains_estimate_and_is_sent_where_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bed = Testbed("vmu", hypervisors=3)
    run = FakeRun(
        Experiment(validate_scenario({"name": "g"}), tmp_path / "g", bed, SilentObserver(),
                   slot=SLOT1, shared=True),
        monkeypatch,
    )  # fmt: skip
    run.run.ctx.preflight = Preflight("qemu64", "qemu64", "pc-q35-10.0", skipped=True)
    bound: list[str] = []

    async def bind(host: str) -> None:
        bound.append(host)

    monkeypatch.setattr(run.run, "bind_destination", bind)
    hooks = LaneHooks()
    estimate = Check("estimate", "pass", "the drain's plan", figures={"model": "precopy"})

    async def drain() -> Any:
        task = asyncio.create_task(run.run.run_lane(hooks))
        assert await hooks.wait_booted()
        hooks.release((1, 2), "hv3", estimate)
        await hooks.wait_migrated()
        return await task

    result = asyncio.run(drain())
    assert bound == ["hv3"] and hooks.migrated_ns is not None
    assert [c.name for c in result["preflight"].checks] == ["estimate"]
    assert result["preflight"].figures_of("estimate") == {"model": "precopy"}
