"""A migration through libvirt's own API: the plan as migration flags and typed parameters,
and the job — peer-to-peer, so the source daemon talks to the destination daemon itself and
the destination daemon starts the incoming QEMU.

`virDomainMigrateToURI3` blocks until the migration ends, so it runs in a thread; meanwhile
`jobStats` gives the counters, `migrateStartPostCopy`, `migrateSetMaxDowntime` and `abortJob`
steer it. Counters libvirt does not report (pre-copy/downtime/post-copy bytes) stay None.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from vmigrate import libvirt_client
from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import Migration, MigrationStats, MigrationStatus
from vmigrate.hypervisor.libvirt_domain import LibvirtDomain
from vmigrate.hypervisor.plan import MigrationPlan

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CANCEL_WAIT_S = 30.0
COMPLETED_STATS_WAIT_S = 2.0
ENDING_WAIT_S = 10.0


def libvirt_settings(plan: MigrationPlan, migration_uri: str | None) -> tuple[int, dict[str, Any]]:
    """The plan as virDomainMigrateToURI3 flags and typed parameters."""
    libvirt = libvirt_client.load()
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
    params: dict[str, Any] = {}
    if migration_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri
    if plan.live:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if plan.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if plan.throttle is not None:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = plan.throttle.initial_pct
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = plan.throttle.increment_pct
    if plan.xbzrle_cache_bytes is not None:
        flags |= libvirt.VIR_MIGRATE_COMPRESSED
        params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = "xbzrle"
        params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION_XBZRLE_CACHE] = plan.xbzrle_cache_bytes
    if plan.multifd is not None:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = plan.multifd.channels
        if plan.multifd.compression != "none":
            flags |= libvirt.VIR_MIGRATE_COMPRESSED
            params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = plan.multifd.compression
    if plan.max_bandwidth_bytes_s is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = max(1, plan.max_bandwidth_bytes_s // MIB)
    if plan.copy_storage:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    if plan.tls:  # the TLS set-up of each host's libvirt: qemu.conf migrate_tls_x509_cert_dir
        flags |= libvirt.VIR_MIGRATE_TLS
    if plan.allow_unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if plan.undefine_source:
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    return flags, params


# libvirt's job statistics and their units (libvirt's docs: virDomainGetJobStats).
JOB_STAT_UNITS = {
    "time_elapsed": "ms", "time_elapsed_net": "ms", "time_remaining": "ms", "downtime": "ms",
    "downtime_net": "ms", "setup_time": "ms",
    "data_total": "bytes", "data_processed": "bytes", "data_remaining": "bytes",
    "memory_total": "bytes", "memory_processed": "bytes", "memory_remaining": "bytes",
    "memory_normal_bytes": "", "memory_page_size": "bytes", "memory_constant": "pages",
    "memory_normal": "pages", "memory_bps": "bytes_s", "memory_dirty_rate": "pages_s",
    "memory_iteration": "count", "memory_postcopy_requests": "count",
    "disk_total": "bytes", "disk_processed": "bytes", "disk_remaining": "bytes",
    "disk_bps": "bytes_s", "disk_temp_used": "bytes", "disk_temp_total": "bytes",
    "compression_cache": "bytes", "compression_bytes": "", "compression_pages": "",
    "compression_cache_misses": "count", "compression_overflow": "count",
    "auto_converge_throttle": "pct",
}  # fmt: skip


def job_report(job: dict[str, Any]) -> dict[str, Any]:
    """libvirt's job statistics as figures named with their units (memory_bps ->
    memory_bytes_s, time_elapsed -> time_elapsed_ms); other keys (type, operation) as they
    are."""
    report: dict[str, Any] = {}
    for key, value in job.items():
        unit = JOB_STAT_UNITS.get(key)
        if unit is None:
            report[key] = value
        elif key.endswith("_bps"):
            report[key.removesuffix("_bps") + "_bytes_s"] = value
        elif key.endswith("_rate"):
            report[key.removesuffix("_rate") + "_rate_" + unit] = value
        else:
            report[f"{key}_{unit}" if unit else key] = value
    return report


def stats_from_job(job: dict[str, Any], status: MigrationStatus) -> MigrationStats:
    """libvirt's job statistics (jobStats / JOB_COMPLETED) as MigrationStats. While a job runs
    libvirt's `downtime` is the configured limit, not a measurement: only a completed job's
    counts."""

    def number(key: str) -> int:
        return int(job.get(key, 0) or 0)

    def optional(key: str) -> float | None:
        value = job.get(key)
        return float(value) if value is not None else None

    return MigrationStats(
        status=status,
        total_time_ms=optional("time_elapsed"),
        setup_time_ms=optional("setup_time"),
        downtime_ms=optional("downtime") if status == MigrationStatus.COMPLETED else None,
        transferred_bytes=number("memory_processed"),
        remaining_bytes=number("memory_remaining"),
        total_bytes=number("memory_total"),
        zero_pages=number("memory_constant"),
        normal_pages=number("memory_normal"),
        normal_bytes=number("memory_normal_bytes"),
        dirty_pages_rate=number("memory_dirty_rate"),
        page_size_bytes=number("memory_page_size") or 4096,
        throughput_mbit_s=number("memory_bps") * 8 / 1e6,
        iterations=number("memory_iteration"),
        cpu_throttle_pct=number("auto_converge_throttle"),
        disk_transferred_bytes=number("disk_processed"),
        disk_total_bytes=number("disk_total"),
        error=job.get("errmsg"),
        raw=dict(job),
        report=job_report(job),
    )


class LibvirtMigration(Migration):
    """One attempt at `source.name` → the destination daemon (`peer_uri`, as the source daemon
    reaches it); `migration_uri` is where the destination QEMU listens (None: libvirt picks)."""

    source: LibvirtDomain
    destination: LibvirtDomain
    # libvirt 11.3's post-copy resume (POSTCOPY_RESUME after abortJob with the POSTCOPY flag)
    # crashes the destination daemon on these hosts (segfault in libvirt_driver_qemu.so): a
    # stalled post-copy waits for TCP instead, which keeps the VM alive through short cuts.
    recovers_postcopy = False

    def __init__(
        self,
        source: LibvirtDomain,
        destination: LibvirtDomain,
        plan: MigrationPlan,
        peer_uri: str,
        migration_uri: str | None,
        destination_xml: str | None = None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.plan = plan
        self.peer_uri = peer_uri
        self.migration_uri = migration_uri
        self.destination_xml = destination_xml
        self._task: asyncio.Task[None] | None = None
        self._aborted = False
        self._switched = False
        self._pausing = False  # post-copy pause asked for; libvirt's call has yet to return
        self._final: MigrationStats | None = None
        self._actions: list[tuple[int, str]] = []

    @property
    def postcopy_preempt(self) -> bool:
        # libvirt 11.3 turns postcopy-preempt on with every post-copy where both QEMUs have it
        # (an optional capability of VIR_MIGRATE_POSTCOPY; no flag turns it off); QEMU 10 has.
        return self.plan.postcopy

    async def copy_storage(self, timeout_s: float) -> int:
        return 0  # libvirt copies a non-shared disk inside the migration (NON_SHARED_DISK)

    async def start(self) -> None:
        dom = await self._migrate(resume=False)
        self._actions.append((time.monotonic_ns(), "libvirt migration started"))
        if self.plan.postcopy and not self.plan.postcopy_preempt:
            unasked = "libvirt turned postcopy-preempt on (it does with every post-copy)"
            log.warning("%s: migration.postcopy_preempt = false is not honoured", unasked)
            self._actions.append((time.monotonic_ns(), unasked))
        await self._apply_downtime_limit(dom)

    async def _migrate(self, resume: bool) -> Any:
        """Run migrateToURI3 in a thread (`resume`: reconnect a paused post-copy)."""
        libvirt = libvirt_client.load()
        flags, params = libvirt_settings(self.plan, self.migration_uri)
        if resume:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY_RESUME
        if self.destination_xml is not None and not resume:
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = self.destination_xml
        dom = await self.source.virdomain()
        self._task = asyncio.create_task(
            asyncio.to_thread(dom.migrateToURI3, self.peer_uri, params, flags)
        )
        return dom

    async def _apply_downtime_limit(self, dom: Any) -> None:
        """libvirt takes the downtime limit only once the job exists: wait for it (briefly)."""
        libvirt = libvirt_client.load()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not self._ended():
            try:
                await self.source.call(
                    "set the downtime limit",
                    lambda: dom.migrateSetMaxDowntime(self.plan.downtime_limit_ms, 0),
                )
                return
            except HypervisorError as exc:
                cause = exc.__cause__
                if not (
                    isinstance(cause, libvirt.libvirtError)
                    and cause.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
                ):
                    raise
            await asyncio.sleep(0.02)

    def _ended(self) -> bool:
        return self._task is not None and self._task.done()

    async def stats(self) -> MigrationStats:
        if self._final is not None:
            return self._final
        if self._task is None:
            return MigrationStats(status=MigrationStatus.NONE)
        if self._task.done():
            if await self._postcopy_paused():
                return MigrationStats(status=MigrationStatus.POSTCOPY_PAUSED)
            self._final = await self._outcome()
            return self._final
        libvirt = libvirt_client.load()
        try:
            dom = await self.source.virdomain()
            job = await self.source.call("read the job statistics", dom.jobStats)
        except HypervisorError:
            # The source stops being a running domain as the migration ends: libvirt's call
            # is about to return, and its answer is the one that counts.
            await asyncio.wait({self._task}, timeout=ENDING_WAIT_S)
            if not self._task.done():
                raise
            self._final = await self._outcome()
            return self._final
        if self._pausing:
            status = MigrationStatus.POSTCOPY_PAUSED
        elif job.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            status = MigrationStatus.SETUP
        else:
            status = MigrationStatus.POSTCOPY if self._switched else MigrationStatus.ACTIVE
        return stats_from_job(job, status)

    async def _postcopy_paused(self) -> bool:
        """The call failed after the switch and the source waits, paused, to be resumed."""
        assert self._task is not None
        if not self._switched or self._aborted or self._task.exception() is None:
            return False
        libvirt = libvirt_client.load()
        try:
            dom = await self.source.virdomain()
            state, reason = await self.source.call("read the domain state", dom.state)
        except HypervisorError as exc:
            log.info("is post-copy paused? %s", exc)
            return False
        return bool(
            state == libvirt.VIR_DOMAIN_PAUSED
            and reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED
        )

    async def pause_postcopy(self) -> None:
        """abortJob with the post-copy flag: libvirt pauses the migration instead of ending it."""
        libvirt = libvirt_client.load()
        dom = await self.source.virdomain()
        flags = libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY
        await self.source.call("pause post-copy", lambda: dom.abortJobFlags(flags))
        self._pausing = True

    async def recover_postcopy(self) -> None:
        """migrateToURI3 again, with POSTCOPY_RESUME (once the failed call has returned)."""
        if self._task is not None and not self._task.done():
            return
        if self._task is not None and self._task.exception() is not None:
            log.info("libvirt's post-copy call ended with: %s", self._task.exception())
        self._pausing = False
        await self._migrate(resume=True)

    async def _outcome(self) -> MigrationStats:
        """The ended job: completed with libvirt's final statistics, or failed/cancelled with
        libvirt's error in one line."""
        assert self._task is not None
        error = self._task.exception()
        if error is None:
            return stats_from_job(await self._completed_stats(), MigrationStatus.COMPLETED)
        status = MigrationStatus.CANCELLED if self._aborted else MigrationStatus.FAILED
        text = libvirt_client.error_text(error)
        return MigrationStats(status=status, error=f"libvirt on the source: {text}")

    async def _completed_stats(self) -> dict[str, Any]:
        """The completed job's statistics: from the JOB_COMPLETED event (a transient source
        loses them on the way out), else from the source domain, else none."""
        libvirt = libvirt_client.load()
        deadline = time.monotonic() + COMPLETED_STATS_WAIT_S
        while time.monotonic() < deadline:
            stats = self.source.completed_job_stats()
            if stats is not None:
                return stats
            await asyncio.sleep(0.05)
        try:
            dom = await self.source.virdomain()
            flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED
            return dict(
                await self.source.call("read the completed job", lambda: dom.jobStats(flags))
            )
        except HypervisorError as exc:
            log.warning("no statistics of the completed migration: %s", exc)
            return {}

    async def switch_to_postcopy(self) -> None:
        dom = await self.source.virdomain()
        await self.source.call("switch to post-copy", lambda: dom.migrateStartPostCopy(0))
        self._switched = True

    async def set_downtime_limit(self, limit_ms: int) -> None:
        dom = await self.source.virdomain()
        await self.source.call(
            "set the downtime limit", lambda: dom.migrateSetMaxDowntime(limit_ms, 0)
        )

    async def cancel(self) -> None:
        """abortJob, then wait for libvirt's migration call to return."""
        if self._task is None or self._task.done():
            return
        self._aborted = True
        dom = await self.source.virdomain()
        try:
            await self.source.call("abort the migration", dom.abortJob)
        except HypervisorError as exc:
            if self._task.done():  # it ended by itself meanwhile
                return
            raise exc
        try:
            await asyncio.wait_for(asyncio.shield(self._task), CANCEL_WAIT_S)
        except TimeoutError as exc:
            raise HypervisorError(
                f"libvirt's migration did not stop within {CANCEL_WAIT_S:g} s of abortJob"
            ) from exc
        except Exception as exc:  # the aborted call raises; stats() reports it
            log.info("libvirt's migration call after abortJob: %s", exc)

    def drain_actions(self) -> list[tuple[int, str]]:
        actions, self._actions = self._actions, []
        return actions

    async def conclude(self, completed: bool) -> None:
        """libvirt tidies both ends itself; wait for its call to return so nothing of this
        attempt runs on when the next begins."""
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), CANCEL_WAIT_S)
            except Exception as exc:
                log.info("libvirt's migration call ended with: %s", exc)
