"""One libvirt domain on one host, behind the `Domain` interface.

A handle is a connection plus a domain name, so the destination's handle exists before the
domain does (it appears there when the migration starts). libvirt's states, lifecycle events
and statistics are translated here into the backend-neutral vocabulary. A domain vmigrate did
not create (`owned = False`: a user's VM on a real host) is never destroyed or undefined.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmigrate import libvirt_client
from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import Domain, EventKind, HypervisorEvent, RunState
from vmigrate.hypervisor.guest_ram import guest_ram_data_bytes, guest_ram_resident_bytes

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CALL_TIMEOUT_S = 30.0
DIRTY_RATE_POLL_S = 0.2

LIFECYCLE_NAMES = (
    "defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown",
    "pmsuspended", "crashed",
)  # fmt: skip
LIFECYCLE_KINDS = {3: EventKind.STOPPED, 4: EventKind.RESUMED}  # suspended, resumed


class LibvirtDomain(Domain):
    """A domain called `name` on the host behind `conn` (it may not exist there yet);
    `incoming`: the handle of a migration's target, where a paused domain waits for the
    stream (on the destination host, or on the source host for a hop back)."""

    def __init__(
        self,
        conn: Any,
        name: str,
        host_role: str,
        owned: bool,
        console_log: Path | None = None,
        qemu_pid: Callable[[], int | None] | None = None,
        memory_mib: int = 0,
        incoming: bool = False,
    ) -> None:
        self.conn = conn
        self.name = name
        self.host_role = host_role
        self.owned = owned
        self.incoming = incoming
        self.console_log = console_log
        self.memory_mib = memory_mib
        self._qemu_pid = qemu_pid
        self._lock = threading.Lock()
        self._events: list[HypervisorEvent] = []
        self._callbacks: list[int] = []
        self._released = False
        self._died: str | None = None
        self._listen()

    # -- libvirt calls, off the event loop's thread and bounded --------------------------------

    async def call(
        self, what: str, fn: Callable[[], Any], timeout_s: float = CALL_TIMEOUT_S
    ) -> Any:
        """Run a blocking libvirt call in a thread; HypervisorError says what failed and why."""
        libvirt = libvirt_client.load()
        try:
            return await asyncio.to_thread(libvirt_client.bounded, fn, timeout_s, what)
        except (libvirt.libvirtError, TimeoutError) as exc:
            raise HypervisorError(
                f"libvirt on {self.host_role} failed to {what}: {libvirt_client.error_text(exc)}"
            ) from exc

    def lookup(self) -> Any | None:
        """The virDomain object, or None when the host has no such domain (blocking)."""
        libvirt = libvirt_client.load()
        try:
            return self.conn.lookupByName(self.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    async def virdomain(self) -> Any:
        """The virDomain object. :raise HypervisorError: the host has no such domain."""
        dom = await self.call(f"look up domain {self.name}", self.lookup)
        if dom is None:
            raise HypervisorError(f"there is no domain {self.name!r} on the {self.host_role}")
        return dom

    # -- events ---------------------------------------------------------------------------------

    def _listen(self) -> None:
        libvirt = libvirt_client.load()
        for event_id, callback in (
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
            (libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, self._on_iteration),
            (libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed),
        ):
            self._callbacks.append(self.conn.domainEventRegisterAny(None, event_id, callback, None))

    def _add(self, dom: Any, kind: EventKind, name: str, data: dict[str, Any]) -> None:
        if dom.name() != self.name:
            return
        event = HypervisorEvent(time.monotonic_ns(), self.host_role, kind, name, data)
        with self._lock:
            self._events.append(event)

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        name = LIFECYCLE_NAMES[event] if 0 <= event < len(LIFECYCLE_NAMES) else str(event)
        self._add(dom, LIFECYCLE_KINDS.get(event, EventKind.OTHER), name, {"detail": detail})
        libvirt = libvirt_client.load()
        if event == libvirt.VIR_DOMAIN_EVENT_CRASHED or (
            event == libvirt.VIR_DOMAIN_EVENT_STOPPED
            and detail
            in (libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED)
        ):
            self._died = f"the domain on the {self.host_role} stopped ({name}, detail {detail})"

    def _on_iteration(self, _conn: Any, dom: Any, iteration: int, _opaque: Any) -> None:
        self._add(dom, EventKind.MIGRATION_PASS, "migration-iteration", {"pass": iteration})

    def _on_job_completed(self, _conn: Any, dom: Any, params: dict[str, Any], _o: Any) -> None:
        data = {"status": "completed", "stats": dict(params)}
        self._add(dom, EventKind.MIGRATION_STATUS, "job-completed", data)

    def completed_job_stats(self) -> dict[str, Any] | None:
        """The statistics of the last JOB_COMPLETED event, if one came."""
        with self._lock:
            for event in reversed(self._events):
                if event.name == "job-completed":
                    return dict(event.data["stats"])
        return None

    def drain_events(self) -> list[HypervisorEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    # -- Domain ---------------------------------------------------------------------------------

    async def run_state(self) -> RunState:
        if self._released:
            return RunState.GONE
        dom = await self.call(f"look up domain {self.name}", self.lookup)
        if dom is None:
            return RunState.GONE
        state, reason = await self.call("read the domain state", dom.state)
        return run_state(state, reason, self.incoming)

    @property
    def released(self) -> bool:
        """True once `shutdown` ran (the handle is done with)."""
        return self._released

    async def pause(self) -> None:
        dom = await self.virdomain()
        await self.call("suspend the domain", dom.suspend)

    async def resume(self) -> None:
        dom = await self.virdomain()
        await self.call("resume the domain", dom.resume)

    async def touched_memory_bytes(self) -> int | None:
        """Resident bytes of QEMU's guest-RAM mapping, when QEMU's PID is known (testbed)."""
        pid = self._qemu_pid() if self._qemu_pid is not None else None
        if pid is None:
            return None
        return guest_ram_resident_bytes(pid, self.memory_mib * MIB)

    async def data_memory_bytes(self) -> int | None:
        """The touched memory that holds data, sampled from QEMU's memory when its PID is
        known (testbed)."""
        pid = self._qemu_pid() if self._qemu_pid is not None else None
        if pid is None:
            return None
        return await asyncio.to_thread(guest_ram_data_bytes, pid, self.memory_mib * MIB)

    async def measure_dirty_rate(self, seconds: int) -> float:
        """libvirt's dirty-rate calculation (QEMU's calc-dirty-rate underneath)."""
        libvirt = libvirt_client.load()
        dom = await self.virdomain()
        await self.call(
            "start the dirty-rate calculation", lambda: dom.startDirtyRateCalc(seconds, 0)
        )
        deadline = time.monotonic() + seconds + CALL_TIMEOUT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(DIRTY_RATE_POLL_S)
            stats = await self.call(
                "read the dirty rate",
                lambda: self.conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE),
            )
            values = stats[0][1] if stats else {}
            if values.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
                return float(values.get("dirtyrate.megabytes_per_second", 0.0))
        raise HypervisorError(
            f"libvirt on {self.host_role} did not finish measuring the dirty rate"
        )

    def process_id(self) -> int | None:
        return self._qemu_pid() if self._qemu_pid is not None else None

    def exit_reason(self) -> str | None:
        return self._died

    async def shutdown(self) -> None:
        """Destroy and undefine the domain — only one vmigrate created; stop listening."""
        if self._released:
            return
        self._released = True
        if self.owned:
            await asyncio.to_thread(self._destroy)
        for callback in self._callbacks:
            try:
                self.conn.domainEventDeregisterAny(callback)
            except Exception as exc:
                log.info("deregistering a libvirt event callback: %s", exc)
        self._callbacks.clear()

    def _destroy(self) -> None:
        remove_domain(self.conn, self.name, self.host_role)


def remove_domain(conn: Any, name: str, role: str) -> bool:
    """Destroy and undefine domain `name` on `conn` (blocking); True if there was one. A
    failure is logged (a domain whose job hangs keeps its lock)."""
    libvirt = libvirt_client.load()

    def lookup() -> Any | None:
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    try:
        dom = libvirt_client.bounded(lookup, CALL_TIMEOUT_S, "look up the domain")
        if dom is None:
            return False
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except (libvirt.libvirtError, TimeoutError) as exc:
        log.warning("removing domain %s on the %s: %s", name, role, exc)
    return True


def run_state(state: int, reason: int, incoming: bool) -> RunState:
    """libvirt's (state, reason) as a RunState; a migration's target (`incoming`) paused for
    the migration waits for the stream, a source paused for it is in its stop-and-copy; a
    destination whose post-copy failed is paused (its vCPUs wait for pages that may never come)."""
    libvirt = libvirt_client.load()
    if state == libvirt.VIR_DOMAIN_RUNNING and reason == libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED:
        return RunState.PAUSED
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return RunState.RUNNING
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason in (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP):
            return RunState.INCOMING if incoming else RunState.FINISHING
        if reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY:
            return RunState.MIGRATED
        return RunState.PAUSED
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        if reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED:
            return RunState.MIGRATED
        return RunState.GONE
    return RunState.OTHER
