"""One scenario on the user's own hosts: an existing libvirt domain, migrated between two hosts
vmigrate did not create, and measured from the machine vmigrate runs on.

No testbed is built and no guest booted. The probe pings `service.address`, the load requests
`service.http_url`. The hosts are measured through libvirt's domain statistics, or with
`hosts.ssh = true` through their /proc over ssh, like testbed hosts (never both: each series
has one source, so QEMU is not counted twice). vmigrate changes
nothing but the migration: the domain is neither defined, started, stopped nor undefined, and
after a completed run it stays running on the destination.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from vmigrate import __version__
from vmigrate.analysis import analyze
from vmigrate.cleanup import Step, each
from vmigrate.config import Scenario
from vmigrate.config_hosts import HostsSpec
from vmigrate.errors import HypervisorError, UsageError, VmigrateError
from vmigrate.experiment import ExperimentObserver, PreflightFailed
from vmigrate.hypervisor.base import RunState
from vmigrate.hypervisor.libvirt_backend import LibvirtHost, LibvirtHypervisor
from vmigrate.hypervisor.libvirt_domain import LibvirtDomain
from vmigrate.measure.domstats import DomainStatsSampler
from vmigrate.measure.meters import Meters, Target
from vmigrate.measure.progress import record_migration
from vmigrate.measure.recorder import Recorder
from vmigrate.measure.remote_proc import RemoteProcSampler, start_remote_samplers
from vmigrate.measure.ssh import uri_host
from vmigrate.migration.orchestrator import MigrationRecord, Outcome, migrate, where_it_runs
from vmigrate.migration.preflight import Preflight
from vmigrate.migration.preflight_hosts import own_hosts_preflight
from vmigrate.migration.strategy import plan_for
from vmigrate.report.html.page import render_report
from vmigrate.report.result import build_result
from vmigrate.result import Result, write_result
from vmigrate.result.document import Environment, Verification
from vmigrate.runlog import run_log

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 3.0
DOMAIN_STATS_MEASURED = (
    "libvirt domain statistics: the domain's QEMU CPU, vCPU time, RSS and disk IO on each host; "
    "host NICs and other processes are not visible through libvirt"
)
Sampler = DomainStatsSampler | RemoteProcSampler


def hypervisor_for(scenario: Scenario, out_dir: Path) -> LibvirtHypervisor:
    """The libvirt backend on the hosts the scenario names."""
    hosts = scenario.hosts
    return LibvirtHypervisor(
        LibvirtHost("source", uri=hosts.source_uri),
        LibvirtHost(
            "destination",
            uri=hosts.destination_uri,
            peer_uri=hosts.destination_peer_uri or hosts.destination_uri,
            migration_uri=hosts.migration_uri or None,
        ),
        log_dir=out_dir,
    )


def peer_hosts(hosts: HostsSpec) -> dict[str, str]:
    """Whom each host's migration traffic goes to, as the hosts name it (their uplink is the
    interface routing there): the source sends to the destination (migration_uri's host when
    set, else the peer URI's, else destination_uri's), the destination hears from the source."""
    to = hosts.migration_uri or hosts.destination_peer_uri or hosts.destination_uri
    return {"source": uri_host(to), "destination": uri_host(hosts.source_uri)}


class OwnHostsExperiment:
    """Runs a scenario with hosts.source_uri / destination_uri / domain."""

    def __init__(
        self,
        scenario: Scenario,
        out_dir: Path,
        observer: ExperimentObserver,
        skip_preflight: bool = False,
        unsafe: bool = False,
        undefine_source: bool = False,
    ) -> None:
        self.scenario = scenario
        self.undefine_source = undefine_source
        self.skip_preflight = skip_preflight
        self.unsafe = unsafe
        self.preflight: Preflight | None = None
        self.out_dir = out_dir
        self.observer = observer
        self.recorder = Recorder(out_dir)
        self.t0_ns = time.monotonic_ns()
        self.started_at = dt.datetime.now(dt.UTC).isoformat()
        self.marks_ns: dict[str, int] = {}
        self.meters = Meters(Target(None, scenario.service.address, self.recorder.dir))
        self.hypervisor = hypervisor_for(scenario, out_dir)
        self.remote: list[RemoteProcSampler] = []

    def mark(self, name: str) -> None:
        self.marks_ns[name] = time.monotonic_ns()

    async def attach(self) -> LibvirtDomain:
        """Connect to both daemons and find the running domain on the source.

        :raise UsageError: a host does not answer, or the domain is not there and running."""
        hosts = self.scenario.hosts
        try:
            await self.hypervisor.connect()
            source = await self.hypervisor.attach(hosts.domain)
        except HypervisorError as exc:
            raise UsageError(str(exc)) from exc
        state = await source.run_state()
        if state != RunState.RUNNING:
            raise UsageError(
                f"domain {hosts.domain!r} is {state.value} on the source ({hosts.source_uri}), "
                "not running: start it there first (virsh start)"
            )
        return source

    async def run(self) -> Result:
        """Probe and load the service, baseline, migrate, after window; the result document."""
        record: MigrationRecord | None = None
        running_on = "none"
        source_state: RunState | None = None
        error: str | None = None
        samplers: list[Sampler] = []
        try:
            source = await self.attach()
            await self._preflight(source)
            samplers = self._samplers()
            await asyncio.to_thread(self._start_samplers, samplers)
            record = await self._measure(source)
            running_on = await where_it_runs(source, record.destination)
            source_state = record.source_state_after
        except VmigrateError as exc:
            if isinstance(exc, UsageError):
                raise
            error = str(exc)
        finally:
            steps: list[Step] = [("stopping the probe and the load", self._stop_clients)]
            steps += [
                ("stopping a resource sampler", functools.partial(asyncio.to_thread, s.stop))
                for s in samplers
            ]
            steps.append(("closing the libvirt connections", self.hypervisor.close))
            await each(steps, "ending the run")
        verification = Verification.model_validate(
            {
                "running_on": running_on,
                "source_state_after": source_state,
                "service_ok_after": await asyncio.to_thread(self._service_answers),
                # Without vmigrate's guest agent nothing inside the guest can be checked.
                "memory_checksum_ok": None,
                "memory_writes_intact": None,
                "working_set_pages_checked": 0,
                "working_set_pages_mismatched": None,
                "disk_checksum_ok": None,
                "disk_blocks_checked": 0,
                "disk_blocks_mismatched": None,
            }
        )
        recorded = build_result(
            scenario=self.scenario,
            record=record,
            started_at=self.started_at,
            t0_ns=self.t0_ns,
            marks_ns=self.marks_ns,
            environment=await self._environment(),
            verification=verification,
            error=error,
            preflight=self.preflight.section() if self.preflight else None,
            files={"vmigrate_log": "vmigrate.log"},
        )
        result = analyze(self.out_dir, recorded)
        write_result(self.out_dir, result)
        render_report(self.out_dir, result)
        return result

    async def _environment(self) -> Environment:
        """The hypervisors' versions and where the resource figures come from."""
        versions = await self.hypervisor.versions()
        return Environment.model_validate(
            {
                "tool_version": __version__,
                "testbed": "",
                "accel": "",
                "accel_reason": "your own hosts: the domain's own accelerator",
                "backend": "libvirt",
                "qemu_version": versions.get("qemu_version", ""),
                **{k: v for k, v in versions.items() if k != "qemu_version"},
                "guest_kernel": "",
                "guest_image_digest": "",
                "source_uri": self.scenario.hosts.source_uri,
                "destination_uri": self.scenario.hosts.destination_uri,
                "resources_measured": self._resources_measured(),
            }
        )

    async def _preflight(self, source: LibvirtDomain) -> None:
        """libvirt's word on CPU, memory and cache mode; a failure stops the run before
        anything moves (unless --skip-preflight)."""
        self.observer.stage("pre-flight checks (through libvirt)")
        self.preflight = await own_hosts_preflight(
            self.scenario, self.hypervisor, source, self.unsafe
        )
        self.preflight.skipped = self.skip_preflight
        for check in self.preflight.checks:
            self.observer.check(check)
        if self.preflight.failures and not self.skip_preflight:
            raise PreflightFailed(
                "pre-flight failed: "
                + "; ".join(f"{c.name}: {c.message} — {c.fix}" for c in self.preflight.failures)
                + " (--skip-preflight goes ahead regardless)"
            )

    def _samplers(self) -> list[Sampler]:
        """With hosts.ssh, each host's /proc over ssh (every process, QEMU's threads, the NIC);
        else libvirt's domain statistics. Not both: libvirt reads the same /proc counters of
        the same QEMU, and the analysis sums a host's `processes` rows, so both would count
        QEMU twice. :raise UsageError: a URI names no host to log in to."""
        hosts = self.scenario.hosts
        interval_s = self.scenario.measure.resource_interval_ms / 1000
        if not hosts.ssh:
            conns = self.hypervisor.conns
            return [DomainStatsSampler(conns, hosts.domain, self.recorder, interval_s)]
        peers = peer_hosts(hosts)
        self.remote = [
            RemoteProcSampler(role, uri, peers[role], self.recorder, interval_s)
            for role, uri in (("source", hosts.source_uri), ("destination", hosts.destination_uri))
        ]
        return list(self.remote)

    def _start_samplers(self, samplers: list[Sampler]) -> None:
        """Start sampling; with ssh, log in to both hosts first (UsageError if one refuses)."""
        if self.remote:
            start_remote_samplers(self.remote)
        for sampler in samplers:
            if isinstance(sampler, DomainStatsSampler):
                sampler.start()

    def _resources_measured(self) -> str:
        """What the `processes`, `threads` and `links` series hold, for result.json."""
        if not self.remote:
            return DOMAIN_STATS_MEASURED
        hosts = []
        for sampler in self.remote:
            scope = sampler.hello.get("scope") == "netns"
            uplink = sampler.uplink or f"none found (no route to {sampler.peer})"
            hosts.append(
                f"{sampler.role} ({sampler.target.display}, {sampler.hello.get('host', '?')}): "
                f"{'the processes of its network namespace' if scope else 'all processes'}, "
                f"uplink {uplink}"
            )
        return (
            "each host's /proc over ssh: every process's CPU, RSS and disk IO, QEMU's threads "
            "by class, the counters of the interface routing to the peer host — " + "; ".join(hosts)
        )

    async def _measure(self, source: LibvirtDomain) -> MigrationRecord:
        scenario, phases = self.scenario, self.scenario.phases
        self.mark("guest_ready")
        await self._start_clients()
        self.observer.stage(f"warming up for {phases.warmup_s:g} s")
        await asyncio.sleep(phases.warmup_s)
        self.mark("baseline_start")
        self.observer.stage(f"baseline window: {phases.baseline_s:g} s")
        await asyncio.sleep(phases.baseline_s)
        plan = plan_for(
            scenario.migration,
            copy_storage=scenario.storage.mode == "local",
            allow_unsafe=self.unsafe,
        ).model_copy(update={"undefine_source": self.undefine_source})
        job = await self.hypervisor.prepare_migration(source, plan)
        self.observer.stage(f"migrating ({scenario.migration.strategy}) through libvirt")
        self.mark("migration_start")
        record = await migrate(
            self.hypervisor,
            source,
            job,
            plan,
            scenario.migration,
            self.observer,
            poll_interval_s=scenario.measure.progress_interval_ms / 1000,
        )
        self.mark("migration_end")
        record_migration(self.recorder, record)
        if record.error:
            self.observer.stage(f"migration {record.outcome}: {record.error}")
        self.observer.stage(f"after window: {phases.after_s:g} s")
        await asyncio.sleep(phases.after_s)
        self.mark("after_end")
        return record

    async def _start_clients(self) -> None:
        """The probe (and the load, with service.http_url) from this machine's namespace."""
        load, service = self.scenario.load, self.scenario.service
        url = urlparse(service.http_url or "")
        target = Target(
            None, service.address, self.recorder.dir, http_host=url.hostname,
            http_port=url.port or 80, http_path=url.path or "/",
        )  # fmt: skip
        self.meters = Meters(target)
        await self.meters.start(load, http=bool(service.http_url))

    async def _stop_clients(self) -> None:
        await self.meters.stop()

    def _service_answers(self) -> bool:
        """The service answers from the same address: an HTTP GET of service.http_url, or
        (without one) an ICMP echo of service.address."""
        service = self.scenario.service
        if service.http_url:
            try:
                with urllib.request.urlopen(service.http_url, timeout=HTTP_TIMEOUT_S) as reply:
                    return 200 <= int(reply.status) < 500
            except OSError as exc:
                log.warning("the service at %s does not answer: %s", service.http_url, exc)
                return False
        ping = ["ping", "-c", "3", "-W", "1", service.address]
        done = subprocess.run(ping, capture_output=True, text=True, check=False)
        return done.returncode == 0


def run_own_hosts(
    scenario: Scenario,
    out_dir: Path,
    observer: ExperimentObserver,
    skip_preflight: bool = False,
    unsafe: bool = False,
    undefine_source: bool = False,
) -> Result:
    """Run a scenario on the user's own hosts to its result document (also in result.json);
    `undefine_source`: a completed migration also removes the domain's definition on the
    source (libvirt's --undefinesource); without it the source keeps it, shut off."""
    with run_log(out_dir):
        experiment = OwnHostsExperiment(
            scenario, out_dir, observer, skip_preflight, unsafe, undefine_source
        )
        result = asyncio.run(experiment.run())
    if result.outcome == Outcome.COMPLETED:
        log.info("the domain runs on the destination now")
    return result
