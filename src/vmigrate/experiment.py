"""One scenario end to end: image, testbed, boot, warm up, baseline, migrate, verify, record.

The VM always ends up somewhere known (the orchestrator guarantees that), every process this
run starts is recorded in the testbed's state file the moment it exists, and on the way out —
success, failure or Ctrl-C — the run's VMs are stopped and, when this run brought the testbed
up, the testbed is torn down again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vmigrate import __version__
from vmigrate.analysis import analyze
from vmigrate.cleanup import Step, each
from vmigrate.config import Scenario
from vmigrate.errors import (
    EnvironmentProblem,
    GuestError,
    HypervisorError,
    TestbedError,
    UsageError,
    VmigrateError,
)
from vmigrate.guest.build import build_image
from vmigrate.guest.facts import GuestFacts, ask_guest, wait_for_agent
from vmigrate.guest.image import GuestImage
from vmigrate.hypervisor.accel import resolve_accel
from vmigrate.hypervisor.base import Domain, Hypervisor, RunState, VmConfig
from vmigrate.hypervisor.cpu import load_catalog
from vmigrate.hypervisor.plan import MigrationPlan
from vmigrate.measure.meters import Meters, Target
from vmigrate.measure.progress import record_migration
from vmigrate.measure.recorder import Recorder
from vmigrate.measure.resources import ResourceSampler, WatchedHost
from vmigrate.migration import preflight as checks
from vmigrate.migration.estimate_check import estimate_check
from vmigrate.migration.faults import FaultInjector, FaultTargets
from vmigrate.migration.orchestrator import (
    MigrationObserver,
    MigrationRecord,
    Outcome,
    migrate,
    where_it_runs,
)
from vmigrate.migration.preflight import Check, Preflight
from vmigrate.migration.strategy import plan_for
from vmigrate.placement import Placement
from vmigrate.report.html.page import render_report
from vmigrate.report.result import build_result, guest_verification
from vmigrate.result import Result, write_result
from vmigrate.result.document import Environment
from vmigrate.runlog import run_log
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)


class ExperimentObserver(MigrationObserver, Protocol):
    """What a front end is told while an experiment runs."""

    def stage(self, text: str) -> None: ...

    def check(self, check: Check) -> None: ...


class PreflightFailed(VmigrateError):
    """A pre-flight check failed: the run does not start what would fail."""


class SilentObserver:
    """An observer that shows nothing (tests, scripts)."""

    def stage(self, text: str) -> None:
        pass

    def check(self, check: Check) -> None:
        pass

    def migration_progress(self, elapsed_s: float, stats: Any) -> None:
        pass


@dataclass
class RunContext:
    """Everything one run knows; filled in as the run goes."""

    scenario: Scenario
    out_dir: Path
    testbed: Testbed
    t0_ns: int = field(default_factory=time.monotonic_ns)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    accel: str = ""
    accel_reason: str = ""
    image: GuestImage | None = None
    versions: dict[str, str] = field(default_factory=dict)
    marks_ns: dict[str, int] = field(default_factory=dict)
    before: GuestFacts = field(default_factory=GuestFacts)
    after: GuestFacts = field(default_factory=GuestFacts)
    running_on: str = "none"
    record: MigrationRecord | None = None
    preflight: Preflight | None = None
    error: str | None = None

    def mark(self, name: str) -> None:
        self.marks_ns[name] = time.monotonic_ns()


class Experiment:
    """Runs one scenario. `await Experiment(...).run()` returns the result document."""

    def __init__(
        self,
        scenario: Scenario,
        out_dir: Path,
        testbed: Testbed,
        observer: ExperimentObserver,
        skip_preflight: bool = False,
        unsafe: bool = False,
    ) -> None:
        self.ctx = RunContext(scenario=scenario, out_dir=out_dir, testbed=testbed)
        self.observer = observer
        self.skip_preflight = skip_preflight
        self.unsafe = unsafe
        self.hypervisor: Hypervisor | None = None
        self.injector: FaultInjector | None = None
        self.placement = Placement(scenario, testbed, out_dir)
        self.recorder = Recorder(out_dir)
        self.sampler: ResourceSampler | None = None
        self.meters: Meters | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[VmConfig]:
        """Everything a guest needs (image, accelerator, testbed, samplers, disk), yielding the
        VM's configuration; on the way out — however it is left — stops every client, sampler
        and VM of this run, and takes the testbed down if this run brought it up."""
        ctx = self.ctx
        if os.geteuid() != 0:
            raise EnvironmentProblem("vmigrate needs root for namespaces and taps: run with sudo")
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        testbed = ctx.testbed
        owns_testbed = False
        disks: dict[str, Path] = {}
        try:
            self.observer.stage("guest image")
            ctx.image = await asyncio.to_thread(build_image, False, self.observer.stage)
            ctx.accel, ctx.accel_reason = await asyncio.to_thread(
                resolve_accel, ctx.scenario.vm.accel, ctx.image.kernel
            )
            self.observer.stage(f"accelerator: {ctx.accel} ({ctx.accel_reason})")
            catalog = await asyncio.to_thread(load_catalog, ctx.accel)
            scenario = ctx.scenario
            ctx.preflight = await asyncio.to_thread(checks.settle, scenario, catalog, self.unsafe)
            ctx.preflight.skipped = self.skip_preflight
            owns_testbed = not testbed.is_healthy()
            await asyncio.to_thread(
                testbed.up,
                scenario.network.bandwidth_mbit,
                self.observer.stage,
                self.placement.libvirt,
                scenario.testbed.hypervisors,
            )
            testbed.require_no_vm()
            self._start_sampler()
            disks = self.placement.create_disks()
            self.hypervisor = self.placement.hypervisor(disks)
            if not self.skip_preflight:
                self.observer.stage("pre-flight checks")
                ctx.preflight.checks += [
                    checks.cpu_check(scenario, catalog, ctx.preflight.cpu_model),
                    checks.cache_check(scenario, self.unsafe),
                    checks.postcopy_risk_check(scenario),
                    *await asyncio.to_thread(
                        checks.compatibility_checks, testbed, ctx.accel, scenario
                    ),
                    await asyncio.to_thread(
                        checks.storage_check, scenario, testbed, disks["source"]
                    ),
                    checks.memory_check(scenario),
                    await asyncio.to_thread(
                        checks.ports_check, testbed, self.hypervisor.listen_ports(self._plan())
                    ),
                ]
                for check in ctx.preflight.checks:
                    self.observer.check(check)
            yield self.placement.vm_config(
                ctx.image,
                disks["source"],
                ctx.accel,
                ctx.preflight.cpu_model,
                ctx.preflight.machine,
            )
        finally:
            await each(self._teardown(disks, owns_testbed), "ending the run")

    def _teardown(self, disks: dict[str, Path], owns_testbed: bool) -> list[Step]:
        """What ending a run undoes, in order; each step runs whatever the one before did."""

        async def remove_disks() -> None:
            for disk in disks.values():
                disk.unlink(missing_ok=True)

        async def tear_down_testbed() -> None:
            self.observer.stage("tearing the testbed down")
            problems = await asyncio.to_thread(self.ctx.testbed.down)
            if problems:
                raise TestbedError("; ".join(problems))

        sampler, hypervisor, injector = self.sampler, self.hypervisor, self.injector
        steps: list[Step] = []
        if injector is not None:
            steps.append(("undoing the fault", lambda: asyncio.to_thread(injector.close)))
        steps.append(("stopping the probe and the load", self.stop_clients))
        if sampler is not None:
            steps.append(("stopping the resource sampler", lambda: asyncio.to_thread(sampler.stop)))
        if hypervisor is not None:
            steps.append(("stopping the VMs", hypervisor.close))
        steps.append(("removing the run's disks", remove_disks))
        if owns_testbed:
            steps.append(("tearing the testbed down", tear_down_testbed))
        return steps

    async def run(self) -> Result:
        """The experiment: boot, load, baseline, migrate, after window, verify; the result."""
        ctx = self.ctx
        try:
            async with self.session() as config:
                self._stop_on_failed_checks()
                await self._migrate_once(config)
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
        result = analyze(ctx.out_dir, recorded)
        write_result(ctx.out_dir, result)
        render_report(ctx.out_dir, result)
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
            }
        )

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
        check = await estimate_check(self.ctx.scenario, source, self.ctx.testbed)
        self.ctx.preflight.checks.append(check)
        self.observer.check(check)

    def _plan(self) -> MigrationPlan:
        """The scenario's migration as a backend-neutral plan."""
        scenario = self.ctx.scenario
        return plan_for(scenario.migration, copy_storage=scenario.storage.mode == "local")

    def _start_sampler(self) -> None:
        """Sample CPU, memory, disk and network of the source, destination and storage hosts."""
        hosts = [
            WatchedHost(
                role, self.ctx.testbed.hosts[role].netns, self.ctx.testbed.hosts[role].uplink
            )
            for role in ("source", "destination", "storage")
        ]
        interval_s = self.ctx.scenario.measure.resource_interval_ms / 1000
        self.sampler = ResourceSampler(hosts, self.recorder, interval_s)
        self.sampler.start()

    async def start_clients(self) -> None:
        """Start the packet capture that referees the probe, the downtime probe and (for web
        and memory guests) the open-loop HTTP load, from the client host."""
        testbed, scenario = self.ctx.testbed, self.ctx.scenario
        client = testbed.hosts["client"]
        target = Target(
            client.netns, testbed.guest_ip, self.recorder.dir,
            capture_on=(client.interface, testbed.guest_mac) if scenario.measure.capture else None,
        )  # fmt: skip
        self.meters = Meters(
            target,
            on_start=lambda label, pid: testbed.state.add_process(pid, label),
            on_stop=testbed.state.forget_process,
        )
        await self.meters.start(scenario.load, http=scenario.workload.kind != "idle")

    async def stop_clients(self) -> None:
        """Stop the meters; they write their records on the way out."""
        if self.meters is not None:
            await self.meters.stop()

    async def boot_source(self, config: VmConfig) -> Domain:
        """Boot the guest on the source host and wait until its service answers."""
        ctx = self.ctx
        assert self.hypervisor is not None
        self.observer.stage(f"booting the guest on the source ({ctx.accel})")
        ctx.mark("boot_start")
        source = await self.hypervisor.boot(config)
        ctx.versions = await self.hypervisor.versions()
        await wait_for_agent(source)
        ctx.mark("guest_ready")
        ctx.before = await ask_guest(ctx.testbed, with_checksum=True)
        if not ctx.before.service_ok:
            raise GuestError(f"the guest's service does not answer: {ctx.before.error}")
        return source

    async def _migrate_once(self, config: VmConfig) -> None:
        ctx, phases = self.ctx, self.ctx.scenario.phases
        hypervisor = self.hypervisor
        assert hypervisor is not None
        source = await self.boot_source(config)
        await self.start_clients()
        self.observer.stage(f"warming up for {phases.warmup_s:g} s")
        await asyncio.sleep(phases.warmup_s)
        await self._estimate(source)
        ctx.mark("baseline_start")
        self.observer.stage(f"baseline window: {phases.baseline_s:g} s")
        await asyncio.sleep(phases.baseline_s)
        self.observer.stage("preparing the destination")
        plan = self._plan()
        try:
            job = await hypervisor.prepare_migration(source, plan)
        except HypervisorError as exc:  # the destination host refuses the VM: it stays put
            await self._refused(source, exc)
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
        host = testbed.hosts["source"]
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

    async def _refused(self, source: Domain, exc: HypervisorError) -> None:
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
        self.ctx.after = await ask_guest(self.ctx.testbed, with_checksum=True)


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
