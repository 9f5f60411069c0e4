"""After vmigrate itself died mid-migration (SIGKILL, OOM, a lost terminal): find the VM on the
testbed, let the hypervisor finish what it was doing, settle the VM on exactly one host, stop
the stale copy and the dead run's clients, and say where the VM runs and whether it is intact.

QEMU keeps migrating without us: a pre-copy converges or not, a post-copy pulls its pages. So
recovery first waits (`wait_s`) for the job to end on its own; a pre-copy still running then is
cancelled (the VM stays on the source). libvirt's daemons finish or roll back the job
themselves; recovery waits for that and removes a leftover copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from vmigrate import libvirt_client
from vmigrate.errors import GuestError
from vmigrate.guest import agent_client
from vmigrate.pids import is_same_process, terminate
from vmigrate.testbed.netns import call_in_netns
from vmigrate.testbed.state import Resource
from vmigrate.testbed.testbed import Testbed

log = logging.getLogger(__name__)

ROLES = ("source", "destination")
MOVING = {"setup", "active", "device", "pre-switchover", "wait-unplug", "cancelling"}
POSTCOPY = {"postcopy-active", "postcopy-paused", "postcopy-recover-setup", "postcopy-recover"}
CLIENT_LABELS = ("probe", "load", "capture")


@dataclass
class Recovery:
    """What recovery found and did."""

    vm_on: str = "none"  # "source", "destination" or "none"
    actions: list[str] = field(default_factory=list)
    service_ok: bool = False
    pages_checked: int = 0
    pages_mismatched: int | None = None
    disk_blocks_checked: int = 0
    disk_blocks_mismatched: int | None = None

    @property
    def intact(self) -> bool:
        return (
            self.service_ok
            and self.pages_mismatched == 0
            and self.disk_blocks_checked > 0
            and self.disk_blocks_mismatched == 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm_on": self.vm_on,
            "actions": self.actions,
            "service_ok": self.service_ok,
            "working_set_pages_checked": self.pages_checked,
            "working_set_pages_mismatched": self.pages_mismatched,
            "disk_blocks_checked": self.disk_blocks_checked,
            "disk_blocks_mismatched": self.disk_blocks_mismatched,
            "intact": self.intact,
        }


class _Qemu:
    """One QEMU of the testbed, reached over its QMP socket (the dead run's connection is gone,
    so the socket takes a new client)."""

    def __init__(self, role: str, pid: int, start_ticks: int | None, socket: Path) -> None:
        self.role, self.pid, self.start_ticks, self.socket = role, pid, start_ticks, socket
        self.client = QMPClient(f"vmigrate-recover-{role}")

    async def ask(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        async with asyncio.timeout(10.0):  # not wait_for: see QemuDomain.execute
            return await self.client.execute(command, arguments)

    async def status(self) -> tuple[str, str]:
        """(run state, migration status)."""
        run_state = (await self.ask("query-status"))["status"]
        migration = (await self.ask("query-migrate")).get("status", "none")
        return str(run_state), str(migration)

    async def quit(self, testbed: Testbed) -> None:
        with contextlib.suppress(QMPError, OSError, TimeoutError, EOFError):
            await self.ask("quit")
        await asyncio.to_thread(terminate, self.pid, self.start_ticks, 5.0)
        testbed.state.forget_process(self.pid)


def _recorded_qemus(testbed: Testbed) -> list[tuple[str, Resource]]:
    """The QEMU processes the dead run started (QEMU backend), still alive."""
    return [
        (res.name.removeprefix("qemu-"), res)
        for res in testbed.state.resources()
        if res.kind == "process"
        and res.name.removeprefix("qemu-") in ROLES
        and is_same_process(res.pid, res.start_ticks)
    ]


async def _attach_qemus(testbed: Testbed) -> dict[str, _Qemu]:
    found: dict[str, _Qemu] = {}
    for role, res in _recorded_qemus(testbed):
        qemu = _Qemu(role, res.pid, res.start_ticks, testbed.dir / "run" / f"qmp-{role}.sock")
        try:
            async with asyncio.timeout(10.0):
                await qemu.client.connect(str(qemu.socket))
        except (QMPError, OSError, TimeoutError) as exc:
            log.warning("QEMU on the %s (pid %d) does not answer: %s", role, res.pid, exc)
            continue
        found[role] = qemu
    return found


async def _loaded(destination: _Qemu, source_done: bool, timeout_s: float = 15.0) -> str:
    """The destination's run state once it has loaded what the source sent (the source says
    completed a moment before the destination runs); a loaded but paused one is started."""
    deadline = time.monotonic() + timeout_s
    state = (await destination.status())[0]
    while source_done and state == "inmigrate" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        state = (await destination.status())[0]
    if source_done and state == "paused":
        await destination.ask("cont")
        state = (await destination.status())[0]
    return state


async def _settle_qemu(testbed: Testbed, wait_s: float, out: Recovery) -> None:
    qemus = await _attach_qemus(testbed)
    source, destination = qemus.get("source"), qemus.get("destination")
    try:
        migration = "none"
        if source is not None:
            deadline = time.monotonic() + wait_s
            _, migration = await source.status()
            while (migration in MOVING or migration in POSTCOPY) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                _, migration = await source.status()
            if migration in MOVING:
                await source.ask("migrate_cancel")
                out.actions.append(f"cancelled the pre-copy still running after {wait_s:g} s")
                while migration in MOVING:
                    await asyncio.sleep(0.1)
                    _, migration = await source.status()
        target_state = "gone"
        if destination is not None:
            target_state = await _loaded(destination, migration == "completed")
        source_state = (await source.status())[0] if source is not None else "gone"
        out.actions.append(
            f"found: migration {migration}, source {source_state}, destination {target_state}"
        )
        if migration == "completed" and target_state == "running":
            out.vm_on = "destination"
            if source is not None:
                await source.quit(testbed)
                out.actions.append(f"stopped the source's stale copy (pid {source.pid})")
        elif source is not None and migration not in POSTCOPY:
            if destination is not None:
                await destination.quit(testbed)
                out.actions.append(f"stopped the destination's partial copy ({destination.pid})")
            if (await source.status())[0] != "running":
                await source.ask("cont")
                out.actions.append("resumed the VM on the source")
            out.vm_on = "source"
        else:
            out.actions.append(
                f"the VM runs on neither host (migration {migration}, destination {target_state})"
            )
    finally:
        for qemu in qemus.values():
            with contextlib.suppress(Exception):
                await qemu.client.disconnect()


async def _settle_libvirt(testbed: Testbed, wait_s: float, out: Recovery) -> None:
    libvirt = libvirt_client.load()
    conns = {role: await asyncio.to_thread(libvirt_client.connect, testbed.libvirt_uri(role))
             for role in ROLES}  # fmt: skip
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            busy = [
                dom.name()
                for conn in conns.values()
                for dom in conn.listAllDomains()
                if dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
            ]
            if not busy:
                break
            await asyncio.sleep(0.2)
        for role in ("destination", "source"):
            for dom in conns[role].listAllDomains():
                state = dom.state()[0]
                if state == libvirt.VIR_DOMAIN_RUNNING and out.vm_on == "none":
                    out.vm_on = role
                elif dom.isActive():
                    dom.destroy()
                    out.actions.append(f"stopped the {role}'s leftover copy ({dom.name()})")
        if out.vm_on == "none":
            out.actions.append("the VM runs on neither host")
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                conn.close()


def _stop_dead_clients(testbed: Testbed, out: Recovery) -> None:
    for res in testbed.state.resources():
        if res.kind == "process" and res.name in CLIENT_LABELS:
            terminate(res.pid, res.start_ticks, 2.0)
            testbed.state.forget(res)
            out.actions.append(f"stopped the dead run's {res.name} client (pid {res.pid})")


def _check_guest(testbed: Testbed, out: Recovery) -> None:
    """Ask the guest (from the client host) whether it serves and its memory and disk
    workloads find every write they made."""
    client_ns, ip = testbed.hosts["client"].netns, testbed.guest_ip
    try:
        call_in_netns(client_ns, agent_client.http_get, ip)
        out.service_ok = True
        out.pages_checked, out.pages_mismatched = call_in_netns(client_ns, agent_client.verify, ip)
        out.disk_blocks_checked, out.disk_blocks_mismatched = call_in_netns(
            client_ns, agent_client.disk_verify, ip
        )
    except (GuestError, OSError) as exc:
        out.actions.append(f"the guest did not answer: {exc}")


async def recover(testbed: Testbed, wait_s: float = 60.0) -> Recovery:
    """Settle the testbed's VM after its run died; see the module's docstring."""
    testbed.require_up()
    out = Recovery()
    _stop_dead_clients(testbed, out)
    if _recorded_qemus(testbed):
        await _settle_qemu(testbed, wait_s, out)
    elif testbed.has_libvirt():
        await _settle_libvirt(testbed, wait_s, out)
    else:
        out.actions.append("no VM found: no QEMU of a run and no libvirt daemons on the testbed")
    if out.vm_on != "none":
        await asyncio.to_thread(_check_guest, testbed, out)
    return out
