"""What one experiment's VM needs, set up and undone: the guest image and accelerator, the
testbed (brought up, or found up when shared) with the VM's slot on it, the resource sampler, the
disks, the backend, the pre-flight checks, the client's meters, the booted guest; and on the way
out — however the run is left — every client, sampler and VM of the run stopped, its disks
removed, and the testbed taken down when this run brought it up.

A part of `Experiment` (experiment.py), kept apart because it is a concept of its own: the
experiment's phases and its result are there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vmigrate.cleanup import Step, each
from vmigrate.config import Scenario
from vmigrate.errors import EnvironmentProblem, GuestError, TestbedError
from vmigrate.guest.build import build_image
from vmigrate.guest.facts import GuestFacts, ask_guest, wait_for_agent
from vmigrate.guest.image import GuestImage
from vmigrate.hypervisor.accel import resolve_accel
from vmigrate.hypervisor.base import Domain, Hypervisor, VmConfig
from vmigrate.hypervisor.cpu import load_catalog
from vmigrate.hypervisor.plan import MigrationPlan
from vmigrate.measure.meters import Meters, Target
from vmigrate.measure.recorder import Recorder
from vmigrate.measure.resources import ResourceSampler, WatchedHost
from vmigrate.migration import preflight as checks
from vmigrate.migration.faults import FaultInjector
from vmigrate.migration.orchestrator import MigrationObserver, MigrationRecord
from vmigrate.migration.preflight import Check, Preflight
from vmigrate.migration.strategy import plan_for
from vmigrate.placement import Placement
from vmigrate.slot import DEFAULT_SLOT, VmSlot
from vmigrate.testbed.network import Host
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)


class ExperimentObserver(MigrationObserver, Protocol):
    """What a front end is told while an experiment runs."""

    def stage(self, text: str) -> None: ...

    def check(self, check: Check) -> None: ...


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


class ExperimentSession:
    """The setting of one experiment's VM (see the module's docstring).

    `slot`: which guest, on which testbed hosts; `shared`: the testbed is a drain's, up already,
    with other VMs on it: this run neither brings it up nor takes it down, and only a QEMU of
    its own slot left by an earlier run stops it; `sample_hosts`: False when someone else (a
    drain) samples the hosts' resources for it (RUN/series then gets them afterwards);
    `render`: False to leave report.html to whoever completes RUN/series (result.json is
    written either way)."""

    def __init__(
        self,
        scenario: Scenario,
        out_dir: Path,
        testbed: Testbed,
        observer: ExperimentObserver,
        skip_preflight: bool = False,
        unsafe: bool = False,
        slot: VmSlot = DEFAULT_SLOT,
        shared: bool = False,
        sample_hosts: bool = True,
        render: bool = True,
    ) -> None:
        self.ctx = RunContext(scenario=scenario, out_dir=out_dir, testbed=testbed)
        self.observer = observer
        self.skip_preflight = skip_preflight
        self.unsafe = unsafe
        self.slot = slot
        self.shared = shared
        self.sample_hosts = sample_hosts
        self.render = render
        self.owns_testbed = False
        self.hosts: dict[str, Host] = {}  # the testbed's hosts by the roles the VM sees
        self.hypervisor: Hypervisor | None = None
        self.injector: FaultInjector | None = None
        self.placement = Placement(scenario, testbed, out_dir, slot)
        self.recorder = Recorder(out_dir)
        self.sampler: ResourceSampler | None = None
        self.meters: Meters | None = None
        self.disks: dict[str, Path] = {}  # by the VM's host role

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
        disks = self.disks
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
            await self._testbed_for_the_vm()
            if self.sample_hosts:
                self._start_sampler()
            disks.update(self.placement.create_disks())
            self.hypervisor = self.placement.hypervisor(disks)
            if not self.skip_preflight:
                self.observer.stage("pre-flight checks")
                destination = self.hosts["destination"]
                ctx.preflight.checks += [
                    checks.cpu_check(scenario, catalog, ctx.preflight.cpu_model),
                    checks.cache_check(scenario, self.unsafe),
                    checks.postcopy_risk_check(scenario),
                    *await asyncio.to_thread(
                        checks.compatibility_checks, testbed, ctx.accel, scenario, self.hosts
                    ),
                    await asyncio.to_thread(
                        checks.storage_check, scenario, testbed, disks["source"], destination
                    ),
                    checks.memory_check(scenario),
                    await asyncio.to_thread(
                        checks.ports_check,
                        testbed,
                        self.hypervisor.listen_ports(self._plan()),
                        destination,
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
            await each(self._teardown(disks), "ending the run")

    async def _testbed_for_the_vm(self) -> None:
        """The testbed up, with the slot's hosts and its guest's tap, and no QEMU of an earlier
        run in the way. A run alone brings it up (and owns it when it was not up); a shared one
        (a drain's lane) finds it up: the drain owns it.

        :raise TestbedError: a shared testbed is not up, or a VM of an earlier run is in the way.
        :raise UsageError: the testbed lacks the slot's hosts."""
        testbed, scenario, slot = self.ctx.testbed, self.ctx.scenario, self.slot
        if self.shared:
            await asyncio.to_thread(testbed.require_up)
        else:
            self.owns_testbed = not testbed.is_healthy()
            await asyncio.to_thread(
                testbed.up,
                scenario.network.bandwidth_mbit,
                self.observer.stage,
                self.placement.libvirt,
                # a minimum: a testbed with more hypervisor hosts keeps them
                max(scenario.testbed.hypervisors, slot.hypervisors_needed, testbed.hypervisors),
            )
        self.hosts = slot.hosts(testbed)
        if slot.index:
            await asyncio.to_thread(testbed.add_guest_taps, slot.nic)
        testbed.require_no_vm(slot.qemu.labels() if self.shared else None)

    async def bind_destination(self, host: str) -> None:
        """Send the VM to testbed host `host` instead of the slot's destination (a drain's
        lane, told where at its release): the slot, the hosts by role, the destination's disk
        (storage not shared) and the backend's destination follow. Before the migration only.

        :raise UsageError: `host` is the VM's source or not a host of the testbed.
        :raise HypervisorError: the new destination's hypervisor does not answer."""
        if host == self.slot.destination_host:
            return
        slot = dataclasses.replace(self.slot, destination_host=host)
        hosts = slot.hosts(self.ctx.testbed)
        self.slot, self.hosts, self.placement.slot = slot, hosts, slot
        if "destination" in self.disks:
            old = self.disks["destination"]
            self.disks["destination"] = await asyncio.to_thread(self.placement.destination_disk)
            old.unlink(missing_ok=True)
        if self.hypervisor is not None:
            await self.placement.retarget(self.hypervisor)

    def _teardown(self, disks: dict[str, Path]) -> list[Step]:
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
        if self.owns_testbed:
            steps.append(("tearing the testbed down", tear_down_testbed))
        return steps

    def _plan(self) -> MigrationPlan:
        """The scenario's migration as a backend-neutral plan."""
        scenario = self.ctx.scenario
        return plan_for(scenario.migration, copy_storage=scenario.storage.mode == "local")

    def _start_sampler(self) -> None:
        """Sample CPU, memory, disk and network of the source, destination and storage hosts
        (the slot's, recorded by the roles the VM sees them in)."""
        hosts = [
            WatchedHost(role, self.hosts[role].netns, self.hosts[role].uplink)
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
        nic = self.slot.nic
        target = Target(
            client.netns, nic.ip, self.recorder.dir,
            capture_on=(client.interface, nic.mac) if scenario.measure.capture else None,
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
        ctx.before = await ask_guest(ctx.testbed, True, self.slot.nic.ip)
        if not ctx.before.service_ok:
            raise GuestError(f"the guest's service does not answer: {ctx.before.error}")
        return source
