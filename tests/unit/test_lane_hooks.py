"""A drain's lanes: each finds the shared testbed up (never brings it up or down), waits for the
drain between its boot and its migration, measures against the common baseline, and says which
guest and hosts it had; several start at once without racing on the testbed's state or the
guest image. The VM, the network and the analysis are faked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_testbed_layout import FakeIp, up_in_state
from test_vm_slot import SLOT2, fake_ip

from vmigrate import experiment as experiment_module
from vmigrate.analysis.windows import Windows
from vmigrate.config import validate_scenario
from vmigrate.errors import GuestError, TestbedError, UsageError
from vmigrate.experiment import Experiment, SilentObserver
from vmigrate.guest import build
from vmigrate.guest.image import GuestImage
from vmigrate.lane import LaneHooks
from vmigrate.pids import process_start_ticks
from vmigrate.slot import DEFAULT_SLOT, VmSlot
from vmigrate.testbed.guests import GuestNic
from vmigrate.testbed.state import Resource
from vmigrate.testbed.testbed import Testbed

SLOT1 = VmSlot(GuestNic(1), "source", "destination")


@pytest.fixture(autouse=True)
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMIGRATE_STATE", str(tmp_path / "state"))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeIp:
    return fake_ip(monkeypatch)


def lane(bed: Testbed, tmp_path: Path, slot: VmSlot, shared: bool = True) -> Experiment:
    scenario = validate_scenario({"name": "g"})
    return Experiment(
        scenario, tmp_path / slot.tag, bed, SilentObserver(), slot=slot, shared=shared
    )


# -- the testbed: found up, never brought up or down -------------------------------------------


def refuse_up(bed: Testbed, monkeypatch: pytest.MonkeyPatch) -> None:
    def up(*_: Any) -> None:
        raise AssertionError("a lane brought the shared testbed up")

    monkeypatch.setattr(bed, "up", up)


def test_a_lane_finds_the_shared_testbed_up_and_makes_its_tap(
    fake: FakeIp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    refuse_up(bed, monkeypatch)
    run = lane(bed, tmp_path, SLOT2)
    asyncio.run(run._testbed_for_the_vm())
    assert not run.owns_testbed
    assert run.hosts["destination"] == bed.hosts["hv3"]
    assert {("vmu-source", "vmu-t2"), ("vmu-hv3", "vmu-t2")} <= fake.links
    assert not any(step == "tearing the testbed down" for step, _ in run._teardown({}))


def test_a_lane_on_a_testbed_that_is_down_or_too_small_stops(
    fake: FakeIp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    down = Testbed("vmd", hypervisors=3)
    refuse_up(down, monkeypatch)
    with pytest.raises(TestbedError, match="is not up"):
        asyncio.run(lane(down, tmp_path, SLOT2)._testbed_for_the_vm())
    small = up_in_state(fake, "vms", 2)
    refuse_up(small, monkeypatch)
    with pytest.raises(UsageError, match="hypervisors = 3"):
        asyncio.run(lane(small, tmp_path, SLOT2)._testbed_for_the_vm())


def test_lanes_run_beside_each_other_but_not_beside_their_own_leftover(
    fake: FakeIp,
    tmp_path: Path,
) -> None:
    bed = up_in_state(fake, "vmu", 3)
    me = os.getpid()
    bed.state.add(
        Resource("process", "qemu-source-vm1", pid=me, start_ticks=process_start_ticks(me))
    )
    asyncio.run(lane(bed, tmp_path, SLOT2)._testbed_for_the_vm())  # guest 1's QEMU is no matter
    with pytest.raises(TestbedError, match="qemu-source-vm1"):
        asyncio.run(lane(bed, tmp_path, SLOT1)._testbed_for_the_vm())
    with pytest.raises(TestbedError, match="qemu-source-vm1"):  # a run alone: any VM stops it
        asyncio.run(lane(bed, tmp_path, SLOT2, shared=False)._testbed_for_the_vm())


def test_a_run_alone_brings_up_as_many_hosts_as_its_slot_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    for slot in (DEFAULT_SLOT, SLOT2):
        bed = Testbed("vmu")
        monkeypatch.setattr(bed, "is_healthy", lambda: False)
        monkeypatch.setattr(bed, "up", lambda bw, stage, libvirt, count: asked.append(count))
        monkeypatch.setattr(bed, "add_guest_taps", lambda nic: nic.tap("vmu"))
        monkeypatch.setattr(bed, "require_no_vm", lambda labels=None: None)
        run = lane(bed, tmp_path, slot, shared=False)
        with contextlib.suppress(UsageError):  # the fake up adds no hv3
            asyncio.run(run._testbed_for_the_vm())
        assert run.owns_testbed
    assert asked == [2, 3]


# -- the lane and its drain ----------------------------------------------------------------------


class FakeRun:
    """The parts of a lane that would boot, migrate and analyse, faked; what it did, kept."""

    def __init__(self, run: Experiment, monkeypatch: pytest.MonkeyPatch, fail: bool = False):
        self.run, self.fail, self.migrated_ns = run, fail, 0

        @contextlib.asynccontextmanager
        async def session() -> AsyncIterator[Any]:
            yield "config"

        async def start_guest(config: Any) -> Any:
            await asyncio.sleep(0.01)
            if self.fail:
                raise GuestError("the guest did not boot")
            return "domain"

        async def migrate_from(source: Any, migrated: Any = None) -> None:
            self.migrated_ns = time.monotonic_ns()
            run.ctx.mark("migration_start")
            if migrated is not None:
                migrated()

        monkeypatch.setattr(run, "session", session)
        monkeypatch.setattr(run, "_start_guest", start_guest)
        monkeypatch.setattr(run, "_migrate_from", migrate_from)


@pytest.fixture
def no_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment_module, "build_result", lambda **kw: kw)
    monkeypatch.setattr(experiment_module, "analyze", lambda out, recorded: recorded)
    monkeypatch.setattr(experiment_module, "write_result", lambda out, result: None)
    monkeypatch.setattr(experiment_module, "render_report", lambda out, result: None)


def test_a_drain_boots_its_lanes_then_releases_them_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_analysis: None
) -> None:
    bed = Testbed("vmu", hypervisors=3)
    runs = [FakeRun(lane(bed, tmp_path, slot), monkeypatch) for slot in (SLOT1, SLOT2)]
    hooks = [LaneHooks(), LaneHooks()]

    async def drain() -> list[Any]:
        tasks = [asyncio.create_task(r.run.run_lane(h)) for r, h in zip(runs, hooks, strict=True)]
        assert all([await h.wait_booted() for h in hooks])
        start = time.monotonic_ns()
        await asyncio.sleep(0.01)  # the common baseline
        window = (start, time.monotonic_ns())
        hooks[0].release(window)
        await asyncio.sleep(0.05)
        assert runs[0].migrated_ns and not runs[1].migrated_ns  # the second waits its turn
        hooks[1].release(window)
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(drain())
    assert runs[0].migrated_ns < runs[1].migrated_ns
    for result, r in zip(results, runs, strict=True):
        marks = result["marks_ns"]
        assert marks["baseline_start"] < marks["baseline_end"] < marks["migration_start"]
        assert result["error"] is None and r.run.ctx.error is None
    assert results[0]["marks_ns"]["baseline_end"] == results[1]["marks_ns"]["baseline_end"]
    assert results[1]["environment"].model_dump(exclude_none=True)["destination_host"] == "hv3"


def test_a_lane_that_fails_to_boot_tells_the_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_analysis: None
) -> None:
    run = FakeRun(lane(Testbed("vmu", hypervisors=3), tmp_path, SLOT2), monkeypatch, fail=True)
    hooks = LaneHooks()

    async def drain() -> tuple[bool, Any]:
        task = asyncio.create_task(run.run.run_lane(hooks))
        return await hooks.wait_booted(), await task

    booted, result = asyncio.run(drain())
    assert booted is False and hooks.failed
    assert "did not boot" in result["error"] and not run.migrated_ns


def test_a_lane_released_without_a_window_measures_from_its_boot() -> None:
    hooks = LaneHooks()

    async def go() -> tuple[int, int]:
        hooks.report_booted()
        hooks.release()
        return await hooks.turn()

    start, end = asyncio.run(go())
    assert start == hooks.booted_ns and start <= end


def test_a_lane_says_which_guest_and_hosts_it_had_a_run_alone_does_not(tmp_path: Path) -> None:
    bed = Testbed("vmu", hypervisors=3)
    environment = lane(bed, tmp_path, SLOT2)._environment().model_dump(mode="json")
    assert {k: environment[k] for k in ("guest", "source_host", "destination_host")} == {
        "guest": 2, "source_host": "source", "destination_host": "hv3",
    }  # fmt: skip
    alone = lane(bed, tmp_path, DEFAULT_SLOT, shared=False)._environment().model_dump(mode="json")
    assert not {"guest", "source_host", "destination_host"} & set(alone)


def test_a_lanes_baseline_is_the_common_one_not_its_wait() -> None:
    marks = {"baseline_start": 1.0, "baseline_end": 3.0, "migration_start": 9.0,
             "migration_end": 10.0, "after_end": 12.0}  # fmt: skip
    windows = Windows.from_marks(0, marks)
    assert windows.baseline == (1_000_000_000, 3_000_000_000)
    assert windows.during == (9_000_000_000, 10_000_000_000)
    del marks["baseline_end"]  # a run alone: its baseline runs up to its migration
    assert Windows.from_marks(0, marks).baseline == (1_000_000_000, 9_000_000_000)


# -- lanes starting together -----------------------------------------------------------------


def test_guest_taps_recorded_by_lanes_at_once_are_all_kept(
    fake: FakeIp,
) -> None:
    bed = up_in_state(fake, "vmu", 2)

    def add(index: int) -> None:
        bed.state.update_facts(
            lambda facts: {"guest_taps": sorted({*facts.get("guest_taps", []), index})}
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(1, 17)))
    assert bed.state.facts()["guest_taps"] == list(range(1, 17))


def test_image_builds_of_one_process_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside, most = 0, 0
    guard = threading.Lock()
    image = GuestImage(tmp_path / "vmlinuz", tmp_path / "initrd", "6.1", "abc")

    def one_build(force: bool, progress: Any) -> GuestImage:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.02)
        with guard:
            inside -= 1
        return image

    monkeypatch.setattr(build, "_build_image", one_build)
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: build.build_image(), range(4))) == {image}
    assert most == 1
