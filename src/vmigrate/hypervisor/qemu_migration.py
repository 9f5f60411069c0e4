"""A migration between two QEMU processes over QMP: the plan in QMP's terms (capabilities on
both ends, parameters), the disk mirror for storage that is not shared, and the job itself."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from vmigrate.errors import HypervisorError, MigrationError
from vmigrate.hypervisor.base import Migration, MigrationStats, MigrationStatus
from vmigrate.hypervisor.plan import MigrationPlan
from vmigrate.hypervisor.qemu import COMMAND_TIMEOUT_S, DISK_ID, QemuDomain

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# QEMU's default max-bandwidth is 128 MiB/s; "only the link limits" lifts it to this.
UNLIMITED_BYTES_S = 100 * 1024 * MIB
EXPORT_ID = "vmigrate-disk"
MIRROR_TARGET = "vmigrate-mirror-target"
MIRROR_JOB = "vmigrate-mirror"
CANCEL_WAIT_S = 15.0
TLS_CREDS_ID = "vmigrate-tls"


def qmp_settings(
    plan: MigrationPlan, tls_hostname: str = ""
) -> tuple[dict[str, bool], dict[str, Any], dict[str, Any]]:
    """The plan as QMP capabilities (both ends), source parameters, destination parameters.

    Every capability a plan may turn on is named, on or off: a QEMU that took the VM in an
    earlier hop keeps the capabilities that hop set, and both ends must agree on them.
    With TLS both ends name their credentials object (TLS_CREDS_ID); the source checks the
    destination's certificate against `tls_hostname` (the address it connects to)."""
    caps: dict[str, bool] = {
        "events": True,
        "postcopy-ram": False,
        "postcopy-preempt": False,
        "auto-converge": False,
        "xbzrle": False,
        "multifd": False,
    }
    destination: dict[str, Any] = {}
    source: dict[str, Any] = {
        "downtime-limit": plan.downtime_limit_ms,
        "max-bandwidth": plan.max_bandwidth_bytes_s or UNLIMITED_BYTES_S,
    }
    both: dict[str, Any] = {}
    if plan.postcopy:
        caps["postcopy-ram"] = True
        caps["postcopy-preempt"] = plan.postcopy_preempt
    if plan.throttle is not None:
        caps["auto-converge"] = True
        source["cpu-throttle-initial"] = plan.throttle.initial_pct
        source["cpu-throttle-increment"] = plan.throttle.increment_pct
    if plan.xbzrle_cache_bytes is not None:
        caps["xbzrle"] = True
        source["xbzrle-cache-size"] = plan.xbzrle_cache_bytes
    if plan.multifd is not None:
        caps["multifd"] = True
        both["multifd-channels"] = plan.multifd.channels
        both["multifd-compression"] = plan.multifd.compression
    # A QEMU that took the VM over TLS in an earlier hop keeps its credentials named: a plain
    # hop names none ("" turns TLS off).
    source["tls-creds"] = destination["tls-creds"] = TLS_CREDS_ID if plan.tls else ""
    if plan.tls and tls_hostname:
        source["tls-hostname"] = tls_hostname
    return caps, {**source, **both}, {**both, **destination}


def tls_creds_object(directory: Path, endpoint: Literal["server", "client"]) -> dict[str, Any]:
    """object-add's arguments for the x509 credentials in `directory` (QEMU reads them now):
    the destination is the server, the source the client; each verifies the other."""
    return {"qom-type": "tls-creds-x509", "id": TLS_CREDS_ID, "dir": str(directory),
            "endpoint": endpoint, "verify-peer": True}  # fmt: skip


async def add_tls_creds(
    domain: QemuDomain, directory: Path, endpoint: Literal["server", "client"]
) -> None:
    """Give `domain` the run's TLS credentials, unless it has them (a source that migrates a
    second time, after a cancelled first attempt)."""
    objects = await domain.execute("qom-list", {"path": "/objects"})
    if not any(item.get("name") == TLS_CREDS_ID for item in objects):
        await domain.execute("object-add", tls_creds_object(directory, endpoint))


class DiskMirror:
    """Non-shared storage: the destination serves its empty disk over NBD, the source mirrors
    its disk into it and — once in sync — keeps every write going to both (write-blocking),
    so the copy is complete the moment the VM stops (as libvirt's --copy-storage-all does)."""

    def __init__(
        self, source: QemuDomain, destination: QemuDomain, address: str, port: int, tls: bool
    ) -> None:
        self.source = source
        self.destination = destination
        self.address = address
        self.port = port
        self.tls = tls  # both ends have TLS_CREDS_ID: the NBD connection is encrypted too

    async def start(self) -> None:
        """Export the destination's disk, then mirror the source's into it."""
        node = await _disk_node(self.destination)
        server = {"type": "inet", "data": {"host": self.address, "port": str(self.port)}}
        creds = {"tls-creds": TLS_CREDS_ID} if self.tls else {}
        await self.destination.execute("nbd-server-start", {"addr": server, **creds})
        await self.destination.execute(
            "block-export-add",
            {"type": "nbd", "id": EXPORT_ID, "node-name": node, "name": DISK_ID,
             "writable": True},
        )  # fmt: skip
        await self.source.execute(
            "blockdev-add",
            {"driver": "nbd", "node-name": MIRROR_TARGET, "export": DISK_ID,
             "server": {"type": "inet", "host": self.address, "port": str(self.port)},
             **creds},
        )  # fmt: skip
        await self.source.execute(
            "blockdev-mirror",
            {"job-id": MIRROR_JOB, "device": DISK_ID, "target": MIRROR_TARGET,
             "sync": "full", "copy-mode": "write-blocking"},
        )  # fmt: skip

    async def progress(self) -> tuple[bool, int, int]:
        """(ready = copied and now in sync, bytes copied, bytes to copy)."""
        for job in await self.source.execute("query-block-jobs"):
            if job.get("device") == MIRROR_JOB:
                return bool(job.get("ready")), int(job["offset"]), int(job["len"])
        raise HypervisorError(f"QEMU on {self.source.host_role} has no disk mirror job")

    async def finish(self, abort: bool) -> None:
        """End the mirror (cancelling a ready mirror completes it without pivoting: the
        target has it all), then stop the export; idempotent, each step tried regardless."""
        try:
            await self._end_job(abort)
        except HypervisorError as exc:
            log.warning("ending the disk mirror: %s", exc)
        for domain, command, arguments in (
            (self.source, "blockdev-del", {"node-name": MIRROR_TARGET}),
            (self.destination, "block-export-del", {"id": EXPORT_ID}),
            (self.destination, "nbd-server-stop", None),
        ):
            if domain.process.poll() is None and not domain.released:
                try:
                    await domain.execute(command, arguments)
                except HypervisorError as exc:
                    log.info("disk mirror teardown, %s: %s", command, exc)

    async def _end_job(self, abort: bool) -> None:
        if self.source.released:
            return
        if not await self._job_exists():
            return
        await self.source.execute("block-job-cancel", {"device": MIRROR_JOB, "force": abort})
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while time.monotonic() < deadline and await self._job_exists():
            await asyncio.sleep(0.05)

    async def _job_exists(self) -> bool:
        jobs = await self.source.execute("query-block-jobs")
        return any(job.get("device") == MIRROR_JOB for job in jobs)


async def _disk_node(domain: QemuDomain) -> str:
    """The node name of the VM disk's top node (the format node of -drive id=disk0)."""
    for device in await domain.execute("query-block"):
        if device.get("device") == DISK_ID and "inserted" in device:
            return str(device["inserted"]["node-name"])
    raise HypervisorError(f"QEMU on {domain.host_role} has no disk {DISK_ID!r}")


class QemuMigration(Migration):
    """One attempt: QEMU on the destination was started with `-incoming defer`; it listens
    only once both ends are configured (multifd and post-copy need that order)."""

    destination: QemuDomain

    def __init__(
        self,
        source: QemuDomain,
        destination: QemuDomain,
        plan: MigrationPlan,
        uri: str,
        mirror: DiskMirror | None,
        tls_hostname: str = "",
        tls_dirs: Mapping[str, Path] | None = None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.plan = plan
        self.uri = uri
        self.mirror = mirror
        self.tls_hostname = tls_hostname
        self.tls_dirs = tls_dirs or {}
        self._actions: list[tuple[int, str]] = []
        self._mirroring = False

    @property
    def postcopy_preempt(self) -> bool:
        return self.plan.postcopy_preempt  # as the plan says: qmp_settings sets it both ends

    async def configure(self) -> None:
        """Set capabilities and parameters on both ends, then let the destination listen."""
        if self.plan.tls:
            await add_tls_creds(self.source, self.tls_dirs["source"], "client")
            await add_tls_creds(self.destination, self.tls_dirs["destination"], "server")
        caps, source_params, destination_params = qmp_settings(self.plan, self.tls_hostname)
        await self.source.set_migration_capabilities(caps)
        await self.destination.set_migration_capabilities(caps)
        await self.source.set_migration_parameters(source_params)
        if destination_params:
            await self.destination.set_migration_parameters(destination_params)
        await self.destination.accept_migration(self.uri)

    async def copy_storage(self, timeout_s: float) -> int:
        """Mirror the disk until it is in sync; the bytes copied.

        :raise MigrationError: not in sync within `timeout_s`."""
        if self.mirror is None:
            return 0
        self._mirroring = True
        await self.mirror.start()
        self._actions.append((time.monotonic_ns(), "disk mirror started"))
        deadline = time.monotonic() + timeout_s
        while True:
            ready, copied, total = await self.mirror.progress()
            if ready:
                self._actions.append((time.monotonic_ns(), "disk mirror ready"))
                return copied
            if time.monotonic() > deadline:
                raise MigrationError(
                    f"the disk copy did not get in sync within {timeout_s:g} s "
                    f"({copied} of {total} bytes copied)"
                )
            await asyncio.sleep(0.1)

    async def start(self) -> None:
        await self.source.start_migration(self.uri)

    async def stats(self) -> MigrationStats:
        return await self.source.migration_stats()

    async def switch_to_postcopy(self) -> None:
        await self.source.start_postcopy()

    async def pause_postcopy(self) -> None:
        """migrate-pause on both ends: each shuts its side of the stream down and goes to
        postcopy-paused (an end already paused refuses, which is fine)."""
        for domain in (self.source, self.destination):
            try:
                await domain.execute("migrate-pause")
            except HypervisorError as exc:
                log.info("migrate-pause: %s", exc)

    async def recover_postcopy(self) -> None:
        """The destination listens again (migrate-recover), then the source reconnects
        (migrate with resume); each end is asked only while it is paused."""
        destination = await self.destination.migration_stats()
        if destination.status == MigrationStatus.POSTCOPY_PAUSED:
            await self.destination.execute("migrate-recover", {"uri": self.uri})
        source = await self.source.migration_stats()
        if source.status == MigrationStatus.POSTCOPY_PAUSED:
            await self.source.execute("migrate", {"uri": self.uri, "resume": True})

    async def set_downtime_limit(self, limit_ms: int) -> None:
        await self.source.set_migration_parameters({"downtime-limit": limit_ms})

    async def cancel(self) -> None:
        await self.source.cancel_migration()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            if (await self.source.migration_stats()).finished:
                return
            await asyncio.sleep(0.05)
        raise HypervisorError(
            f"the migration did not stop within {CANCEL_WAIT_S:g} s of migrate_cancel"
        )

    def drain_actions(self) -> list[tuple[int, str]]:
        actions, self._actions = self._actions, []
        return actions

    async def conclude(self, completed: bool) -> None:
        if self._mirroring and self.mirror is not None:
            self._mirroring = False
            await self.mirror.finish(abort=not completed)
        if not completed:
            await self.destination.shutdown()
