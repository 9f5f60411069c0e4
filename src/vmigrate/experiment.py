"""One scenario end to end: image, testbed, boot, warm up, baseline, migrate, verify, record.

The VM always ends up somewhere known (the orchestrator guarantees that), every process this
run starts is recorded in the testbed's state file the moment it exists, and on the way out —
success, failure or Ctrl-C — the run's VMs are stopped and, when this run brought the testbed
up, the testbed is torn down again.

The VM fills a slot of the testbed (slot.py: guest 0 from the source to the destination unless
told otherwise). With `shared=True` it runs beside other VMs on a testbed someone else brought
up (a drain, whose lanes are `run_lane`): it neither brings that testbed up nor takes it down,
and only a QEMU of its own slot left by an earlier run stops it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vmigrate import __version__
from vmigrate.analysis import analyze
from vmigrate.config import Scenario
from vmigrate.errors import GuestError, HypervisorError, UsageError, VmigrateError
from vmigrate.experiment_session import ExperimentObserver as ExperimentObserver
from vmigrate.experiment_session import ExperimentSession
from vmigrate.experiment_session import SilentObserver as SilentObserver
from vmigrate.guest.facts import ask_guest
from vmigrate.hypervisor.base import Domain, RunState, VmConfig
from vmigrate.lane import LaneHooks
from vmigrate.measure.progress import record_migration
from vmigrate.migration import preflight as checks
from vmigrate.migration.estimate_check import estimate_check
from vmigrate.migration.faults import FaultInjector, FaultTargets
from vmigrate.migration.orchestrator import MigrationRecord, Outcome, migrate, where_it_runs
from vmigrate.migration.preflight import Preflight
from vmigrate.report.html.page import render_report
from vmigrate.report.result import build_result, guest_verification
from vmigrate.result import Result, write_result
from vmigrate.result.document import Environment
from vmigrate.runlog import run_log
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)


class PreflightFailed(VmigrateError):
    """A pre-flight check failed: the run does not start what would fail."""


class Experiment(ExperimentSession):
    """Runs one scenario. `await Experiment(...).run()` returns the result document; a drain's
    lane is `await Experiment(..., slot=..., shared=True).run_lane(hooks)`."""

    async def run(self) -> Result:
        """The experiment: boot, load, baseline, migrate, after window, verify; the result."""
        return await self._run(self._migrate_once)

    async def run_lane(self, hooks: LaneHooks) -> Result:
        """One VM of a drain (lane.py): boot, load and warm up, say so (`hooks.booted`), wait
        for the drain's release (`hooks.go`), mark the baseline it gives, migrate, after window,
        verify; the result, as `run`'s. Give it its slot, and shared=True."""
        try:
            return await self._run(lambda config: self._lane(config, hooks))
        finally:
            hooks.give_up()

    async def _lane(self, config: VmConfig, hooks: LaneHooks) -> None:
        """A drain's lane: its guest, then the drain's word, then its migration."""
        source = await self._start_guest(config)
        hooks.report_booted(source)
        self.observer.stage("ready: waiting for the drain to release the migration")
        start, end = await hooks.turn()
        self.ctx.marks_ns.update(baseline_start=start, baseline_end=end)
        self.ctx.mark("destination_prepare")  # its setup: placed, then prepared
        if hooks.destination_host is not None:
            await self.bind_destination(hooks.destination_host)
        if hooks.estimate is not None and self.ctx.preflight is not None:
            self.ctx.preflight.checks.append(hooks.estimate)
        await self._migrate_from(source, hooks.report_migrated)

    async def _run(self, body: Callable[[VmConfig], Awaitable[None]]) -> Result:
        """Run `body` in a session; the result document, written also when the run failed."""
        ctx = self.ctx
        try:
            async with self.session() as config:
                self._stop_on_failed_checks()
                await body(config)
        except VmigrateError as exc:
            if isinstance(exc, UsageError):
                raise
            ctx.error = str(exc)
        started = ctx.marks_ns.get("migration_start")
        recorded = build_result(
            scenario=ctx.scenario,
            record=ctx.record,
            started_at=ctx.started_at,
            t0_ns=ctx.t0_ns,
            marks_ns=ctx.marks_ns,
            environment=self._environment(),
            preflight=ctx.preflight.section() if ctx.preflight else None,
            verification=guest_verification(
                ctx.before,
                ctx.after,
                ctx.running_on,
                ctx.record.source_state_after if ctx.record else None,
            ),
            error=ctx.error,
            fault=self.injector.section(ctx.t0_ns, started) if self.injector else None,
        )
        # In threads: a drain's other lanes go on migrating while this one is analysed.
        result = await asyncio.to_thread(analyze, ctx.out_dir, recorded)
        await asyncio.to_thread(write_result, ctx.out_dir, result)
        if self.render:
            await asyncio.to_thread(render_report, ctx.out_dir, result)
        return result

    def _environment(self) -> Environment:
        """Where and with what this run ran."""
        ctx = self.ctx
        return Environment.model_validate(
            {
                "tool_version": __version__,
                "testbed": ctx.testbed.name,
                "accel": ctx.accel,
                "accel_reason": ctx.accel_reason,
                "backend": self.hypervisor.backend.value if self.hypervisor else None,
                "qemu_version": ctx.versions.get("qemu_version", ""),
                **{k: v for k, v in ctx.versions.items() if k != "qemu_version"},
                "guest_kernel": ctx.image.kernel_version if ctx.image else "",
                "guest_image_digest": ctx.image.digest if ctx.image else "",
                **self._slot_environment(),
            }
        )

    def _slot_environment(self) -> dict[str, Any]:
        """Which guest and hosts a VM beside others had (nothing for a VM alone)."""
        slot = self.slot
        if slot.is_default:
            return {}
        return {
            "guest": slot.index,
            "source_host": slot.source_host,
            "destination_host": slot.destination_host,
        }

    async def preflight(self) -> Preflight:
        """Only the checks (`vmigrate preflight`): boot the guest on the source to measure how
        fast it dirties memory for the estimate, then stop; nothing migrates."""
        async with self.session() as config:
            assert self.ctx.preflight is not None
            report = self.ctx.preflight
            try:
                source = await self.boot_source(config)
            except (GuestError, HypervisorError) as exc:
                report.checks.append(
                    checks.Check(
                        "estimate",
                        "fail",
                        f"the guest does not start on the source, so nothing can be "
                        f"estimated: {exc}",
                        "fix the failures above first",
                    )
                )
                self.observer.check(report.checks[-1])
                return report
            await self._estimate(source)
            return report

    def _stop_on_failed_checks(self) -> None:
        """A run does not start what pre-flight says will fail."""
        report = self.ctx.preflight
        if report is not None and report.failures:
            raise PreflightFailed(
                "pre-flight failed: "
                + "; ".join(f"{c.name}: {c.message} — {c.fix}" for c in report.failures)
                + " (--skip-preflight goes ahead regardless)"
            )

    async def _estimate(self, source: Domain) -> None:
        """The pre-copy estimate, from the running guest's dirty rate and the link."""
        if self.skip_preflight or self.ctx.preflight is None:
            return
        self.observer.stage("pre-flight: measuring the dirty rate and the link")
        check = await estimate_check(self.ctx.scenario, source, self.ctx.testbed, self.hosts)
        self.ctx.preflight.checks.append(check)
        self.observer.check(check)

    async def _migrate_once(self, config: VmConfig) -> None:
        """A run alone: its guest, its own baseline window, its migration."""
        phases = self.ctx.scenario.phases
        source = await self._start_guest(config)
        self.ctx.mark("baseline_start")
        self.observer.stage(f"baseline window: {phases.baseline_s:g} s")
        await asyncio.sleep(phases.baseline_s)
        await self._migrate_from(source)

    async def _start_guest(self, config: VmConfig) -> Domain:
        """Boot the guest, start the meters, warm up, estimate: ready for the baseline."""
        phases = self.ctx.scenario.phases
        source = await self.boot_source(config)
        await self.start_clients()
        self.observer.stage(f"warming up for {phases.warmup_s:g} s")
        await asyncio.sleep(phases.warmup_s)
        await self._estimate(source)
        return source

    async def _migrate_from(
        self, source: Domain, migrated: Callable[[], None] | None = None
    ) -> None:
        """Prepare the destination, migrate, record; the after window and the guest's word.
        `migrated` is called once the migration ended (a drain's lane frees its slot)."""
        ctx, hypervisor = self.ctx, self.hypervisor
        assert hypervisor is not None
        self.observer.stage("preparing the destination")
        if "destination_prepare" not in ctx.marks_ns:
            ctx.mark("destination_prepare")
        plan = self._plan()
        try:
            job = await hypervisor.prepare_migration(source, plan)
        except HypervisorError as exc:  # the destination host refuses the VM: it stays put
            await self._refused(source, exc, migrated)
            return
        self.observer.stage(f"migrating ({ctx.scenario.migration.strategy})")
        cancel = asyncio.Event()
        self.injector = self._fault_injector(source, job.destination, cancel)
        ctx.mark("migration_start")
        ctx.record = await migrate(
            hypervisor,
            source,
            job,
            plan,
            ctx.scenario.migration,
            self.injector or self.observer,
            poll_interval_s=ctx.scenario.measure.progress_interval_ms / 1000,
            cancel=cancel,
        )
        ctx.mark("migration_end")
        if migrated is not None:
            migrated()
        if self.injector is not None:  # a cut link comes back, a frozen QEMU runs again
            self.injector.close()
            ctx.record.actions = sorted(ctx.record.actions + self.injector.actions)
        record_migration(self.recorder, ctx.record)
        ctx.running_on = await where_it_runs(source, ctx.record.destination or job.destination)
        if ctx.record.outcome == Outcome.COMPLETED:
            await source.shutdown()
        if ctx.record.error:
            self.observer.stage(f"migration {ctx.record.outcome}: {ctx.record.error}")
        await self._after_window()

    def _fault_injector(
        self, source: Domain, destination: Domain, cancel: asyncio.Event
    ) -> FaultInjector | None:
        """The scenario's fault, armed against this run's VMs, the source host's link, the NFS
        server and the migration's cancel."""
        spec = self.ctx.scenario.fault
        if spec.kind == "none":
            return None
        testbed = self.ctx.testbed
        host = self.hosts["source"]
        targets = FaultTargets(
            source.process_id,
            destination.process_id,
            host.netns,
            host.uplink,
            source_interface=host.interface,
            loss_pct=spec.loss_pct,
            nfs_pid=testbed.nfs_server_pid,
            cancel=cancel.set,
        )
        self.observer.stage(f"fault armed: {spec.kind} at {spec.at}")
        return FaultInjector(spec, targets, self.observer)

    async def _refused(
        self, source: Domain, exc: HypervisorError, migrated: Callable[[], None] | None = None
    ) -> None:
        """The destination would not start the VM: record a failed migration, keep measuring
        the VM that still serves on the source."""
        ctx = self.ctx
        now = time.monotonic_ns()
        ctx.mark("migration_start")
        ctx.record = MigrationRecord(
            strategy=ctx.scenario.migration.strategy,
            outcome=Outcome.FAILED,
            error=f"the destination did not start: {exc}",
            started_ns=now,
            ended_ns=now,
            attempts=0,
        )
        ctx.mark("migration_end")
        if migrated is not None:
            migrated()
        ctx.running_on = "source" if await source.run_state() == RunState.RUNNING else "none"
        self.observer.stage(f"migration failed: {ctx.record.error}")
        await self._after_window()

    async def _after_window(self) -> None:
        """The after window, then the clients' records and the guest's own word."""
        phases = self.ctx.scenario.phases
        self.observer.stage(f"after window: {phases.after_s:g} s")
        await asyncio.sleep(phases.after_s)
        self.ctx.mark("after_end")
        await self.stop_clients()
        self.ctx.after = await ask_guest(self.ctx.testbed, True, self.slot.nic.ip)


def run_experiment(
    scenario: Scenario,
    out_dir: Path,
    testbed: Testbed,
    observer: ExperimentObserver,
    skip_preflight: bool = False,
    unsafe: bool = False,
) -> Result:
    """Run one scenario to its result document (also written to out_dir/result.json)."""
    experiment = Experiment(scenario, out_dir, testbed, observer, skip_preflight, unsafe)
    with run_log(out_dir):
        return asyncio.run(experiment.run())


def run_preflight(
    scenario: Scenario, out_dir: Path, testbed: Testbed, observer: ExperimentObserver, unsafe: bool
) -> Preflight:
    """Only the pre-flight checks of a scenario (the guest boots on the source, nothing moves)."""
    with run_log(out_dir):
        experiment = Experiment(scenario, out_dir, testbed, observer, unsafe=unsafe)
        return asyncio.run(experiment.preflight())
