"""`vmigrate drain`: a drain file run for real on the embedded testbed.

    image, testbed (N hypervisor hosts; libvirtd on each with hosts.backend = libvirt), the
    drain's own host sampler ──► one lane per guest (experiment.py's run_lane: boot, probe,
    load, warm-up) ──► every lane booted (one that did not: the drain goes on without it) ──►
    each guest measured in turn (memory holding data, dirty rate) and the link once ──► the plan
    (plan.json) ──► a common baseline ──► the lanes released under the policy, each to the
    host the plan placed it on (schedule.py) ──► every lane's migration, after window and
    verification ──► the lanes' host series cut from the drain's, each re-analysed ──► the
    bill (drain.json) and report.html

Why the destination is bound at the release and not before the boot: the plan wants what the
guests really are (an idle guest has touched a fraction of its memory; a web guest dirties a
little), and those are measured on the running guests. So a lane boots with a provisional
destination (the first receiving host), and the drain sends it where the plan says when it
releases it (Experiment.bind_destination).

However the drain is left (done, failed, Ctrl-C), every lane's VM is stopped by its lane (the
orchestrator leaves a migration that was under way settled first), the drain's sampler
stops, and a testbed the drain brought up is taken down; what went wrong on the way out is
logged in DRAIN_DIR/vmigrate.log, and the bill is written with what there is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from vmigrate.drain.account import DrainRecord, LaneRecord, make_bill
from vmigrate.drain.bill import DrainBill
from vmigrate.drain.drain_file import Drain, Guest
from vmigrate.drain.inputs import (
    GuestInputs,
    PlannerInputs,
    check_fits,
    measure_guest,
    measure_link_mbit_s,
    planned_estimate,
    replan,
)
from vmigrate.drain.plan import Plan
from vmigrate.drain.progress import DrainBoard, DrainFront, LaneObserver, LanePhase, LaneStatus
from vmigrate.drain.schedule import Limits, carry_out, turns_of
from vmigrate.drain.series import cut_for_lane, drain_sampler
from vmigrate.errors import UsageError, VmigrateError
from vmigrate.experiment import Experiment
from vmigrate.guest.build import build_image
from vmigrate.lane import LaneHooks
from vmigrate.measure.resources import ResourceSampler
from vmigrate.migration.estimate import ModelConstants
from vmigrate.migration.estimate_check import load_constants
from vmigrate.migration.preflight import Check
from vmigrate.report.rebuild import rebuild
from vmigrate.result import Result
from vmigrate.runlog import run_log
from vmigrate.slot import VmSlot
from vmigrate.testbed.guests import GuestNic
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)
BILL_FILE = "drain.json"
PLAN_FILE = "plan.json"


class DrainFailed(VmigrateError):
    """The drain could not go on (no guest booted, ...): its bill says why."""


@dataclass
class Lane:
    """One guest's lane: its experiment, the hooks it meets the drain by, its task, its status
    on the board, and what the drain records of it."""

    guest: Guest
    experiment: Experiment
    hooks: LaneHooks
    status: LaneStatus
    record: LaneRecord
    task: asyncio.Task[Result] | None = None
    baseline_ns: tuple[int, int] | None = None
    estimate: Check | None = None  # the plan's figures for it

    def release(self, destination: str) -> None:
        """Migrate now, to `destination` (schedule.Releasable)."""
        self.record.destination_host = destination
        self.record.released_ns = time.monotonic_ns()
        self.status.release(destination)
        self.hooks.release(self.baseline_ns, destination, self.estimate)

    async def wait_ended(self) -> None:
        """Until its migration ended, or the lane did (schedule.Releasable)."""
        await self.hooks.wait_migrated()
        self.status.migrated()


@dataclass
class DrainRun:
    """One drain, run (see the module's docstring). `await run()` gives its bill."""

    drain: Drain
    out_dir: Path
    testbed: Testbed
    front: DrainFront
    constants: ModelConstants = field(default_factory=load_constants)
    board: DrainBoard = field(init=False)
    lanes: list[Lane] = field(default_factory=list)
    marks_ns: dict[str, int] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    inputs: PlannerInputs | None = None
    plan: Plan | None = None
    error: str | None = None
    interrupted: bool = False
    owns_testbed: bool = False
    sampler: ResourceSampler | None = None

    def __post_init__(self) -> None:
        self.board = DrainBoard(self.drain.name)

    def mark(self, name: str) -> None:
        self.marks_ns[name] = time.monotonic_ns()

    def _stage(self, text: str) -> None:
        """The drain moved on: in its log, and on the front end."""
        log.info("drain: %s", text)
        self.front.stage(text)

    async def run(self) -> DrainBill:
        """The drain, start to end; its bill (also written to DRAIN_DIR/drain.json).

        :raise UsageError: the testbed cannot hold the drain (it was left as found)."""
        self.mark("start")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self._drain()
        except asyncio.CancelledError:
            self.interrupted = True
            await self._finish()
            raise
        except UsageError:
            await self._finish()
            raise
        except VmigrateError as exc:
            self.error = str(exc)
            log.error("drain: %s", exc)
        return await self._finish()

    async def _drain(self) -> None:
        """Everything up to the last lane's end."""
        await self._prepare()
        self._start_lanes()
        self.front.start(self.board)
        booted = await self._wait_booted()
        if not booted:
            raise DrainFailed(
                "no guest booted: "
                + "; ".join(
                    f"{lane.guest.name}: {lane.experiment.ctx.error}" for lane in self.lanes
                )
            )
        self.mark("booted")
        plan = await self._measure_and_plan(booted)
        self.mark("measured")
        window = await self._baseline()
        planned = {vm.name: vm for vm in plan.vms}
        for lane in booted:
            lane.baseline_ns = window
            lane.status.phase = LanePhase.QUEUED
            if self.inputs is not None and lane.guest.name in planned:
                lane.estimate = planned_estimate(
                    lane.guest, planned[lane.guest.name], self.inputs, plan.calibrated_runs
                )
        self._stage(f"draining {self.drain.host}: {len(booted)} guests under the policy")
        lanes = {lane.guest.name: lane for lane in booted}
        await carry_out(turns_of(plan), lanes, Limits.of(plan.policy))
        self._stage("every migration ended: after windows and verification")
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)  # each lane's end: _lane_ended

    async def _prepare(self) -> None:
        """The guest image, the testbed with the drain's hosts, the drain's host sampler."""
        base = self.drain.base
        self._stage("guest image")
        await asyncio.to_thread(build_image, False, self._stage)
        testbed = self.testbed
        self.owns_testbed = not testbed.is_healthy()
        hypervisors = max(base.testbed.hypervisors, testbed.hypervisors)
        libvirt = base.hosts.backend == "libvirt"
        await asyncio.to_thread(
            testbed.up, base.network.bandwidth_mbit, self._stage, libvirt, hypervisors
        )
        interval_s = base.measure.resource_interval_ms / 1000
        self.sampler = drain_sampler(testbed, self.out_dir, interval_s)
        await asyncio.to_thread(self.sampler.start)

    def _start_lanes(self) -> None:
        """A lane per guest, each booting now; its destination is bound at its release."""
        provisional = self.drain.receivers[0]
        for guest in self.drain.guests:
            status = self.board.add(guest.name, guest.group, self.drain.host)
            experiment = Experiment(
                guest.scenario, self.out_dir / "vms" / guest.name, self.testbed,
                LaneObserver(status), skip_preflight=True,
                slot=VmSlot(GuestNic(guest.index), self.drain.host, provisional),
                shared=True, sample_hosts=False, render=False,
            )  # fmt: skip
            lane = Lane(guest, experiment, LaneHooks(), status, LaneRecord(guest))
            lane.task = asyncio.create_task(experiment.run_lane(lane.hooks), name=guest.name)
            lane.task.add_done_callback(functools.partial(_lane_ended, lane))
            self.lanes.append(lane)

    async def _wait_booted(self) -> list[Lane]:
        """The lanes whose guest booted and serves (the others are left out of the drain)."""
        self._stage(f"booting {len(self.lanes)} guests on {self.drain.host}")
        ready = await asyncio.gather(*(lane.hooks.wait_booted() for lane in self.lanes))
        booted = []
        for lane, ok in zip(self.lanes, ready, strict=True):
            lane.record.booted = ok
            if ok:
                lane.status.phase = LanePhase.READY
                booted.append(lane)
            else:
                log.warning("%s did not boot: %s", lane.guest.name, lane.experiment.ctx.error)
        return booted

    async def _measure_and_plan(self, booted: list[Lane]) -> Plan:
        """Each booted guest measured in turn, the link once; the plan, written to plan.json."""
        measured: dict[str, GuestInputs] = {}
        for lane in booted:
            self._stage(f"measuring {lane.guest.name}: memory holding data, dirty rate")
            source = lane.hooks.source
            if source is not None:
                measured[lane.guest.name] = await measure_guest(lane.guest, source)
        link_mbit_s, link_measured = await self._measure_link()
        self.inputs = PlannerInputs(
            link_mbit_s=link_mbit_s, link_measured=link_measured, guests=measured
        )
        names = [lane.guest.name for lane in booted if lane.guest.name in measured]
        fallback = check_fits(self.drain, self.constants)
        self.plan, note = replan(self.drain, self.inputs, fallback, self.constants, names)
        if note:
            self._stage(note)
        (self.out_dir / PLAN_FILE).write_text(self.plan.model_dump_json(indent=2) + "\n")
        self._stage(
            f"planned: {len(self.plan.vms)} migrations in {self.plan.total_time_s:.1f} s "
            f"(order {self.plan.policy.order}, placement {self.plan.policy.placement})"
        )
        return self.plan

    async def _measure_link(self) -> tuple[float, bool]:
        """The drained host's link to the first receiver, Mbit/s, and whether it was measured
        (else the configured rate)."""
        self._stage("measuring the link")
        try:
            rate = await asyncio.to_thread(
                measure_link_mbit_s, self.testbed, self.drain.host, self.drain.receivers[0]
            )
        except (OSError, VmigrateError) as exc:
            log.warning("the link was not measured (%s); planned at its configured rate", exc)
            return self.drain.base.network.bandwidth_mbit, False
        return (rate, True) if rate > 0 else (self.drain.base.network.bandwidth_mbit, False)

    async def _baseline(self) -> tuple[int, int]:
        """The common baseline window every guest's extra cost is measured against."""
        seconds = self.drain.base.phases.baseline_s
        self._stage(f"baseline window: {seconds:g} s")
        self.mark("baseline_start")
        await asyncio.sleep(seconds)
        self.mark("baseline_end")
        return self.marks_ns["baseline_start"], self.marks_ns["baseline_end"]

    async def _finish(self) -> DrainBill:
        """However the drain is left: lanes ended, sampler stopped, the testbed as found; then
        each lane's series and re-analysis, the bill and the report."""
        self.front.stop()
        await self._end_lanes()
        if self.sampler is not None:
            await _logged("stopping the drain's sampler", asyncio.to_thread(self.sampler.stop))
        if self.owns_testbed:
            self._stage("tearing the testbed down")
            problems = await asyncio.to_thread(self.testbed.down)
            if problems:
                log.error("testbed down left: %s", "; ".join(problems))
                self.error = (self.error + "; " if self.error else "") + "testbed: " + problems[0]
        releases = [lane.record.released_ns for lane in self.lanes if lane.record.released_ns]
        if releases:
            self.marks_ns["first_release"] = min(releases)
        if not self.interrupted:
            await asyncio.to_thread(self._complete_lanes)
        bill = make_bill(self._record(), self.out_dir, self.drain.base.hosts.backend)
        await asyncio.to_thread(write_bill, self.out_dir, bill)
        return bill

    async def _end_lanes(self) -> None:
        """Every lane ended (a lane still waiting is cancelled: it stops its VM); what each
        left recorded."""
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _complete_lanes(self) -> None:
        """Each lane's host series from the drain's (a guest that left: its source, its
        destination, storage; one that never left: its source and storage), then its result
        re-analysed and its report rendered, one lane after the other (the migrations are
        over by now)."""
        for lane in self.lanes:
            result = lane.record.result
            if result is None:
                continue
            run_dir = lane.experiment.ctx.out_dir
            roles = {self.drain.host: "source", "storage": "storage"}
            if lane.record.destination_host is not None:
                roles[lane.record.destination_host] = "destination"
            end = result.clock.t0_ns + round(max(result.timeline_s.values(), default=0) * 1e9)
            try:
                cut_for_lane(self.out_dir, run_dir, roles, (result.clock.t0_ns, end))
                lane.record.result, _ = rebuild(run_dir)
            except (OSError, VmigrateError) as exc:  # its result.json stays as the lane wrote it
                log.warning(
                    "%s: re-analysing with the drain's host series: %s", lane.guest.name, exc
                )

    def _record(self) -> DrainRecord:
        return DrainRecord(
            drain=self.drain, testbed=self.testbed.name, hypervisors=self.testbed.hypervisors,
            started_at=self.started_at, marks_ns=dict(self.marks_ns), inputs=self.inputs,
            plan=self.plan, lanes=[lane.record for lane in self.lanes], error=self.error,
            interrupted=self.interrupted,
        )  # fmt: skip


def _lane_ended(lane: Lane, task: asyncio.Task[Result]) -> None:
    """Record what a lane's task left: its result, or why it has none."""
    status = lane.status
    status.migrated()
    if task.cancelled():
        lane.record.error = lane.record.error or "cancelled (the drain was left)"
        status.phase = LanePhase.FAILED
        return
    exc = task.exception()
    if exc is not None:
        lane.record.error = str(exc) or type(exc).__name__
        status.phase, status.stage = LanePhase.FAILED, lane.record.error
        log.error("%s: %s", lane.guest.name, lane.record.error)
        return
    result = task.result()
    lane.record.result = result
    status.outcome = result.outcome.value
    status.phase = LanePhase.DONE if lane.hooks.released_ns else LanePhase.FAILED
    if result.error:
        status.stage = result.error


async def _logged(what: str, step: Awaitable[object]) -> None:
    """Await a clean-up step; a failure is logged, not raised (the next step still runs)."""
    try:
        await step
    except Exception as exc:
        log.warning("%s: %s", what, exc)


def write_bill(out_dir: Path, bill: DrainBill) -> Path:
    """DRAIN_DIR/drain.json (atomically), and the drain's report.html beside it."""
    from vmigrate.report.html.drain_page import render_drain_report

    path = out_dir / BILL_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(bill.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(path)
    try:
        render_drain_report(out_dir, bill)
    except Exception as exc:  # the bill is written; a report that fails to draw is logged
        log.exception("drain report not written: %s", exc)
    return path


def run_drain(drain: Drain, out_dir: Path, testbed: Testbed, front: DrainFront) -> DrainBill:
    """Run a validated drain (see the module); its bill. The drain's log: out_dir/vmigrate.log."""
    with run_log(out_dir):
        return asyncio.run(DrainRun(drain, out_dir, testbed, front).run())
