"""The soak: one guest under load, migrated back and forth between the source and destination
hosts of one testbed many times, with every strategy in turn.

What a single run cannot show, a soak does: a hop that works once but not the tenth time, a
guest that loses a write on the way back, a vmigrate that keeps memory or file descriptors per
migration, a QEMU or namespace left behind. After every hop the guest's integrity is checked
(the same judgement as a run's: same boot, memory checksum, memory and disk writes) and
vmigrate's own RSS and open file descriptors are sampled; at the end the testbed comes down and
whatever it left is listed. Everything goes to OUT/soak.json.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from vmigrate.config import MigrationSpec, Scenario
from vmigrate.errors import HypervisorError, UsageError, VmigrateError
from vmigrate.experiment import Experiment, ExperimentObserver
from vmigrate.guest.facts import GuestFacts, ask_guest, integrity
from vmigrate.hypervisor.base import Domain, other_host
from vmigrate.migration.orchestrator import MigrationRecord, Outcome, migrate, where_it_runs
from vmigrate.migration.strategy import plan_for
from vmigrate.runlog import run_log
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_TESTBED = "vmsoak"
DEFAULT_HOPS = 50
# The live strategies, in turn (cold pauses the guest for the whole copy: not a soak's load).
STRATEGIES = ("precopy", "postcopy", "multifd", "xbzrle", "auto-converge", "hybrid")
_VMRSS = re.compile(r"^VmRSS:\s+(\d+)\s+kB\s*$", re.MULTILINE)


def strategy_for(hop: int, strategies: Sequence[str] = STRATEGIES) -> str:
    """The strategy of hop number `hop` (from 1): each in turn, then from the start again."""
    if hop < 1 or not strategies:
        raise ValueError(f"hop {hop} of strategies {list(strategies)}")
    return strategies[(hop - 1) % len(strategies)]


def parse_rss_bytes(status_text: str) -> int:
    """The resident set size in a /proc/PID/status text (its VmRSS line, in kB), in bytes."""
    match = _VMRSS.search(status_text)
    if match is None:
        raise ValueError("no VmRSS line in the process status")
    return int(match.group(1)) * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SelfSample(_Model):
    """vmigrate's own footprint at one moment: resident memory and open file descriptors."""

    rss_bytes: int
    open_fds: int

    @property
    def rss_mib(self) -> float:
        return self.rss_bytes / MIB


def sample_self(proc: Path = Path("/proc/self")) -> SelfSample:
    """This process's RSS and open file descriptors, from /proc."""
    rss = parse_rss_bytes((proc / "status").read_text())
    return SelfSample(rss_bytes=rss, open_fds=len(os.listdir(proc / "fd")))


class Hop(_Model):
    """One migration of the soak: where it went, with what, how it ended, what it cost, whether
    the guest came through whole, and vmigrate's footprint right after it."""

    index: int
    strategy: str
    from_host: str
    to_host: str
    outcome: Outcome
    running_on: str  # the host that runs the VM afterwards, by the hypervisors' word ("none")
    total_time_s: float | None = None
    downtime_ms: float | None = None
    transferred_bytes: int = 0
    switched_to_postcopy: bool = False
    wall_s: float  # prepare, migrate, release the host it left, check the guest
    integrity_failures: list[str] = Field(default_factory=list)
    error: str | None = None
    footprint: SelfSample

    @property
    def moved(self) -> bool:
        """The migration completed and the VM runs on the host it was sent to."""
        return self.outcome == Outcome.COMPLETED and self.running_on == self.to_host

    @property
    def intact(self) -> bool:
        return not self.integrity_failures


class SoakReport(_Model):
    """The whole soak: every hop, vmigrate's footprint, and what the testbed left behind."""

    testbed: str
    scenario: str
    hops_planned: int
    strategies: list[str]
    hops: list[Hop] = Field(default_factory=list)
    start: SelfSample | None = None  # before the first hop (guest booted, clients running)
    after_teardown: SelfSample | None = None
    leftovers: list[str] = Field(default_factory=list)
    error: str | None = None

    @property
    def hops_moved(self) -> int:
        return sum(hop.moved for hop in self.hops)

    @property
    def failures(self) -> int:
        """Hops that did not move the VM where it was sent, and hops never made."""
        return self.hops_planned - self.hops_moved

    @property
    def integrity_failures(self) -> int:
        return sum(not hop.intact for hop in self.hops)

    @property
    def end(self) -> SelfSample | None:
        """The footprint after the last hop."""
        return self.hops[-1].footprint if self.hops else None

    @property
    def rss_growth_mib(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end.rss_mib - self.start.rss_mib

    @property
    def ok(self) -> bool:
        """Every hop moved the VM, the guest came through each whole, nothing was left."""
        return (
            self.error is None
            and self.failures == 0
            and self.integrity_failures == 0
            and not self.leftovers
        )


class SoakObserver(ExperimentObserver, Protocol):
    """What a front end is told while a soak runs: the experiment's stages, and each hop."""

    def hop(self, hop: Hop, planned: int) -> None: ...


class Soak:
    """Runs a soak of `hops` migrations of `scenario`'s guest on `testbed`, which the soak
    brings up and takes down itself (a testbed already up is refused: it is someone's)."""

    def __init__(
        self,
        scenario: Scenario,
        out_dir: Path,
        testbed: Testbed,
        observer: SoakObserver,
        hops: int = DEFAULT_HOPS,
        strategies: Sequence[str] = STRATEGIES,
        pause_s: float = 1.0,
    ) -> None:
        self.scenario = scenario
        self.out_dir = out_dir
        self.testbed = testbed
        self.observer = observer
        self.pause_s = pause_s
        # No packet capture: nothing of a soak reads it, and at 2,000 packets/s for the whole
        # soak it would only fill the disk.
        quiet = scenario.model_copy(
            update={"measure": scenario.measure.model_copy(update={"capture": False})}
        )
        self.experiment = Experiment(quiet, out_dir, testbed, observer, skip_preflight=True)
        self.report = SoakReport(
            testbed=testbed.name,
            scenario=scenario.name,
            hops_planned=hops,
            strategies=list(strategies),
        )
        self._pids: set[int] = set()

    async def run(self) -> SoakReport:
        """The soak, then the leftovers check; the report is also written to OUT/soak.json.

        :raise UsageError: the testbed is already up."""
        report = self.report
        if self.testbed.is_healthy():
            raise UsageError(
                f"testbed {self.testbed.name!r} is up: a soak builds its own testbed and removes "
                "it at the end; pass another --testbed, or `vmigrate testbed down` it first"
            )
        try:
            async with self.experiment.session() as config:
                vm = await self.experiment.boot_source(config)
                await self.experiment.start_clients()
                warmup_s = self.scenario.phases.warmup_s
                self.observer.stage(f"warming up for {warmup_s:g} s")
                await asyncio.sleep(warmup_s)
                await self._hops(vm)
        except VmigrateError as exc:
            if isinstance(exc, UsageError):
                raise
            report.error = str(exc)
        report.after_teardown = sample_self()
        self.observer.stage("looking for leftovers of the testbed")
        report.leftovers = await asyncio.to_thread(self.testbed.leftovers, self._pids)
        (self.out_dir / "soak.json").write_text(report.model_dump_json(indent=2))
        return report

    async def _hops(self, vm: Domain) -> None:
        """Every hop in turn, from wherever the VM runs to the other host; stops early only
        when the VM runs nowhere any more."""
        report = self.report
        self.observer.stage(
            f"{report.hops_planned} hops between source and destination: "
            + ", ".join(report.strategies)
        )
        report.start = sample_self()
        for index in range(1, report.hops_planned + 1):
            self._pids.update(self.testbed.processes())
            hop, running = await self._hop(vm, index)
            report.hops.append(hop)
            self.observer.hop(hop, report.hops_planned)
            if running is None:
                report.error = f"after hop {index} the VM runs nowhere: {hop.error}"
                return
            vm = running
            await asyncio.sleep(self.pause_s)
        self._pids.update(self.testbed.processes())

    async def _hop(self, vm: Domain, index: int) -> tuple[Hop, Domain | None]:
        """One migration of `vm` to the other host, with the hop's strategy; then the host it
        left is released and the guest checked. The hop, and the VM where it runs now."""
        hypervisor = self.experiment.hypervisor
        assert hypervisor is not None
        leg = _Leg(index, strategy_for(index, self.report.strategies), vm, time.monotonic())
        spec: MigrationSpec = self.scenario.migration.model_copy(update={"strategy": leg.strategy})
        plan = plan_for(spec, copy_storage=self.scenario.storage.mode == "local")
        try:
            job = await hypervisor.prepare_migration(vm, plan)
        except HypervisorError as exc:  # the other host refuses: the VM stays where it is
            running = vm if await where_it_runs(vm, None) == "source" else None
            return await self._finish(leg, Outcome.FAILED, running, str(exc))
        record = await migrate(
            hypervisor,
            vm,
            job,
            plan,
            spec,
            self.observer,
            poll_interval_s=self.scenario.measure.progress_interval_ms / 1000,
        )
        arrived = record.destination or job.destination
        where = await where_it_runs(vm, arrived)
        if record.outcome == Outcome.COMPLETED:
            await vm.shutdown()  # the host it left: its tap serves the VM's next return
        running = {"destination": arrived, "source": vm}.get(where)
        return await self._finish(leg, record.outcome, running, record.error, record)

    async def _finish(
        self,
        leg: _Leg,
        outcome: Outcome,
        running: Domain | None,
        error: str | None,
        record: MigrationRecord | None = None,
    ) -> tuple[Hop, Domain | None]:
        """Ask the guest how it came through, sample vmigrate's footprint: the hop's record
        (with the migration's figures, when it started), and the VM where it runs now."""
        after = await ask_guest(self.testbed, with_checksum=True)
        failures = integrity(self.experiment.ctx.before, after).failures()
        if failures:
            log.warning("hop %d: integrity failed (%s): %s", leg.index, failures, after.error)
        hop = Hop(
            index=leg.index,
            strategy=leg.strategy,
            from_host=leg.vm.host_role,
            to_host=other_host(leg.vm.host_role),
            outcome=outcome,
            running_on=running.host_role if running is not None else "none",
            total_time_s=record.total_time_s if record else None,
            downtime_ms=record.downtime_reported_ms if record else None,
            transferred_bytes=record.transferred_bytes if record else 0,
            switched_to_postcopy=record.switched_to_postcopy if record else False,
            wall_s=time.monotonic() - leg.started_s,
            integrity_failures=failures,
            error=error or _guest_error(failures, after),
            footprint=sample_self(),
        )
        return hop, running


@dataclass(frozen=True)
class _Leg:
    """A hop under way: its number and strategy, the VM it moves, when it began."""

    index: int
    strategy: str
    vm: Domain
    started_s: float


def _guest_error(failures: list[str], after: GuestFacts) -> str | None:
    """What went wrong with the guest, when the migration itself did not say."""
    if not failures:
        return None
    return after.error or "the guest failed " + ", ".join(failures)


def run_soak(
    scenario: Scenario,
    out_dir: Path,
    testbed: Testbed,
    observer: SoakObserver,
    hops: int = DEFAULT_HOPS,
    pause_s: float = 1.0,
) -> SoakReport:
    """Run a soak to its report (also written to out_dir/soak.json, its log to vmigrate.log)."""
    soak = Soak(scenario, out_dir, testbed, observer, hops, pause_s=pause_s)
    with run_log(out_dir):
        return asyncio.run(soak.run())
