"""The drain run, end to end with everything real faked (image, testbed, sampler, lanes, the
link): lanes booted, measured one at a time, planned, released under the policy to their
planned hosts; a lane that does not boot is left out; nothing booted is a failed drain;
Ctrl-C leaves nothing running; the bill, the plan and the report are written; a testbed the
drain brought up is taken down, one it found up is not. Nothing here starts a process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from drain_fakes import DRAIN, S, fake_drain, lane_result, unbooted_result

import vmigrate.drain.run as run_module
from vmigrate.drain.bill import DrainOutcome
from vmigrate.drain.drain_file import Drain
from vmigrate.drain.progress import LanePhase, SilentFront
from vmigrate.drain.run import DrainRun
from vmigrate.lane import LaneHooks
from vmigrate.migration.estimate import PHYSICS
from vmigrate.report.rebuild import reanalyse
from vmigrate.result import write_result

MIB = 1024 * 1024
TICK_S = 0.02


class World:
    """What the fakes saw: the testbed's ups and downs, the lanes' releases, measurements."""

    def __init__(self, healthy: bool = False, fail_boot: tuple[str, ...] = ()) -> None:
        self.healthy, self.fail_boot = healthy, fail_boot
        self.ups: list[tuple[float, bool, int]] = []
        self.downs = 0
        self.sampler: list[str] = []
        self.measuring: list[str] = []
        self.measuring_now = 0
        self.most_measuring = 0
        self.released: list[tuple[str, str]] = []
        self.migrating = 0
        self.most_migrating = 0
        self.cancelled: list[str] = []
        self.slots: dict[str, tuple[int, str, str]] = {}
        self.rebuilt: list[str] = []


class FakeTestbed:
    def __init__(self, world: World) -> None:
        self.world, self.name, self.hypervisors = world, "vmu", 2

    def is_healthy(self) -> bool:
        return self.world.healthy

    def up(self, bandwidth: float, stage: Any, libvirt: bool, hypervisors: int) -> None:
        self.world.ups.append((bandwidth, libvirt, hypervisors))
        self.hypervisors = hypervisors

    def down(self) -> list[str]:
        self.world.downs += 1
        return []


class FakeSampler:
    def __init__(self, world: World) -> None:
        self.world = world

    def start(self) -> None:
        self.world.sampler.append("start")

    def stop(self) -> None:
        self.world.sampler.append("stop")


class FakeDomain:
    def __init__(self, world: World, name: str) -> None:
        self.world, self.name = world, name

    async def touched_memory_bytes(self) -> int:
        return 100 * MIB

    async def data_memory_bytes(self) -> int:
        return 80 * MIB

    async def measure_dirty_rate(self, seconds: int) -> float:
        world = self.world
        world.measuring.append(self.name)
        world.measuring_now += 1
        world.most_measuring = max(world.most_measuring, world.measuring_now)
        await asyncio.sleep(TICK_S)
        world.measuring_now -= 1
        return 10.0 if "mem" in self.name else 0.5


def fake_experiment(world: World, drain: Drain) -> type:
    class FakeExperiment:
        """A lane: boots (or not), waits for its release, migrates for a few ticks."""

        def __init__(self, scenario: Any, out_dir: Path, testbed: Any, observer: Any,
                     **kw: Any) -> None:  # fmt: skip
            self.name, self.out_dir, self.observer = scenario.name, out_dir, observer
            slot = kw["slot"]
            assert kw["shared"] and not kw["sample_hosts"] and not kw["render"]
            assert kw["skip_preflight"]
            world.slots[self.name] = (slot.index, slot.source_host, slot.destination_host)
            self.ctx = type("Ctx", (), {"out_dir": out_dir, "error": None})()

        async def run_lane(self, hooks: LaneHooks) -> Any:
            try:
                return await self._lane(hooks)
            except asyncio.CancelledError:
                world.cancelled.append(self.name)
                raise
            finally:
                hooks.give_up()

        async def _lane(self, hooks: LaneHooks) -> Any:
            await asyncio.sleep(TICK_S)
            if self.name in world.fail_boot:
                self.ctx.error = "the guest did not boot"
                result = unbooted_result(drain, self.name)
                self.out_dir.mkdir(parents=True, exist_ok=True)
                write_result(self.out_dir, result)
                return result
            self.observer.stage("booted")
            hooks.report_booted(FakeDomain(world, self.name))  # type: ignore[arg-type]
            await hooks.turn()
            destination = hooks.destination_host
            assert destination is not None
            world.released.append((self.name, destination))
            world.migrating += 1
            world.most_migrating = max(world.most_migrating, world.migrating)
            start = time.monotonic_ns()
            await asyncio.sleep((4 if "mem" in self.name else 2) * TICK_S)
            world.migrating -= 1
            hooks.report_migrated()
            end = time.monotonic_ns()
            result = lane_result(
                drain, self.name, destination, (0, (end - start) / S), release_ns=start,
                total_s=(end - start) / S,
            )  # fmt: skip
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_result(self.out_dir, result)
            return result

    return FakeExperiment


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    """Every boundary of the drain run faked; what they saw."""
    world = World()
    monkeypatch.setattr(run_module, "build_image", lambda force, stage: None)
    monkeypatch.setattr(run_module, "drain_sampler", lambda tb, out, s: FakeSampler(world))
    monkeypatch.setattr(run_module, "measure_link_mbit_s", lambda tb, a, b: 380.0)

    # each lane re-analysed from its series, its report not drawn (slow, and tested elsewhere)
    def rebuild(run_dir: Path) -> tuple[Any, Path]:
        world.rebuilt.append(run_dir.name)
        return reanalyse(run_dir), run_dir / "report.html"

    monkeypatch.setattr(run_module, "rebuild", rebuild)
    return world


def drain_run(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any
) -> DrainRun:
    quick = {"phases": {"warmup_s": 0, "baseline_s": TICK_S, "after_s": 0}}
    drain = fake_drain(base={**DRAIN["base"], **quick}, **changes)
    monkeypatch.setattr(run_module, "Experiment", fake_experiment(world, drain))
    return DrainRun(drain, tmp_path / "drain", FakeTestbed(world), SilentFront(), PHYSICS)  # type: ignore[arg-type]


def test_a_drain_runs_every_lane_under_the_policy_and_writes_its_bill(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = drain_run(world, tmp_path, monkeypatch, policy={"parallel_per_host": 2})
    bill = asyncio.run(run.run())
    assert bill.outcome == DrainOutcome.COMPLETED, bill.error
    assert world.ups == [(1000, False, 3)] and world.downs == 1  # brought up, so taken down
    assert world.sampler == ["start", "stop"]
    # lanes: guests 1…3 from the source, provisionally to the first receiver
    assert world.slots == {"d-web-1": (1, "source", "destination"),
                           "d-web-2": (2, "source", "destination"),
                           "d-mem-1": (3, "source", "destination")}  # fmt: skip
    # measured one at a time, then planned from what was measured
    assert sorted(world.measuring) == ["d-mem-1", "d-web-1", "d-web-2"]
    assert world.most_measuring == 1
    assert run.inputs is not None and run.inputs.link_mbit_s == 380 and run.inputs.link_measured
    assert run.inputs.guests["d-web-1"].touched_mib == 100
    assert run.inputs.guests["d-web-1"].data_mib == 80  # what the plan sends
    assert run.inputs.guests["d-mem-1"].dirty_rate_mib_s == 10
    # released in the plan's order, each to its planned host, at most two at once
    assert run.plan is not None
    planned = [(vm.name, vm.destination) for vm in run.plan.vms]
    assert world.released == planned and world.most_migrating == 2
    # the bill, the plan, the report
    out = tmp_path / "drain"
    document = json.loads((out / "drain.json").read_text())
    assert document["outcome"] == "completed" and len(document["vms"]) == 3
    assert json.loads((out / "plan.json").read_text())["cluster"] == "d"
    assert (out / "report.html").exists()
    assert all(vm.verified and vm.destination_host for vm in bill.vms)
    assert all(lane.phase == LanePhase.DONE for lane in run.board.lanes.values())
    assert bill.total_drain_time_s is not None and bill.total_drain_time_s > 0


def test_one_at_a_time_when_the_policy_says_so(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = drain_run(world, tmp_path, monkeypatch, policy={"parallel_per_host": 1})
    assert asyncio.run(run.run()).outcome == DrainOutcome.COMPLETED
    assert world.most_migrating == 1 and len(world.released) == 3


def test_a_guest_that_does_not_boot_is_left_out_the_others_drain(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.fail_boot = ("d-web-2",)
    run = drain_run(world, tmp_path, monkeypatch)
    bill = asyncio.run(run.run())
    assert bill.outcome == DrainOutcome.INCOMPLETE
    assert {name for name, _ in world.released} == {"d-web-1", "d-mem-1"}
    assert run.plan is not None and {vm.name for vm in run.plan.vms} == {"d-web-1", "d-mem-1"}
    lost = next(vm for vm in bill.vms if vm.name == "d-web-2")
    assert not lost.booted and not lost.verified and lost.outcome is None
    assert run.board.lanes["d-web-2"].phase == LanePhase.FAILED
    assert world.downs == 1
    assert sorted(world.rebuilt) == ["d-mem-1", "d-web-1", "d-web-2"]  # each gets its report


def test_nothing_booted_is_a_failed_drain_and_the_testbed_goes(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.fail_boot = ("d-web-1", "d-web-2", "d-mem-1")
    bill = asyncio.run(drain_run(world, tmp_path, monkeypatch).run())
    assert bill.outcome == DrainOutcome.FAILED and bill.error is not None
    assert bill.error.startswith("no guest booted") and world.released == []
    assert world.downs == 1 and world.sampler == ["start", "stop"]


def test_a_testbed_found_up_stays_up(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.healthy = True
    bill = asyncio.run(drain_run(world, tmp_path, monkeypatch).run())
    assert bill.outcome == DrainOutcome.COMPLETED and world.downs == 0


def test_ctrl_c_mid_drain_stops_every_lane_and_leaves_nothing(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = drain_run(world, tmp_path, monkeypatch, policy={"parallel_per_host": 1})

    async def interrupt() -> None:
        task = asyncio.create_task(run.run())
        while not world.released:
            await asyncio.sleep(TICK_S / 4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupt())
    assert len(world.cancelled) == 3  # the one migrating and the two waiting
    assert world.downs == 1 and world.sampler == ["start", "stop"]
    document = json.loads((tmp_path / "drain" / "drain.json").read_text())
    assert document["outcome"] == "interrupted"
    assert not [vm for vm in document["vms"] if vm["verified"]]
