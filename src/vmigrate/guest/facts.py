"""What the testbed's guest says about itself, asked through vmigrate's agent: when it is up
(its serial console), and — from the client host — its identity, its service, the checksum of
its memory and the ledgers of its memory and disk workloads."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from vmigrate.config import Scenario
from vmigrate.errors import GuestError, VmigrateError
from vmigrate.guest import agent_client
from vmigrate.guest.image import kernel_cmdline
from vmigrate.hypervisor.base import Domain
from vmigrate.testbed.netns import call_in_netns
from vmigrate.testbed.testbed import Testbed

BOOT_TIMEOUT_S = 120.0


@dataclass
class GuestFacts:
    """What the guest said about itself at one moment: identity, service, memory checksum."""

    boot_id: str | None = None
    service_ok: bool = False
    checksum: str | None = None
    pages_checked: int = 0
    pages_mismatched: int | None = None
    disk_blocks_checked: int = 0
    disk_blocks_mismatched: int | None = None
    error: str | None = None


def guest_cmdline(scenario: Scenario, guest_ip: str) -> str:
    """The guest's kernel command line: console, address and workload for its agent."""
    wl = scenario.workload
    return kernel_cmdline(
        f"{guest_ip}/24",
        workload=wl.kind,
        working_set_mib=wl.working_set_mib,
        dirty_rate_mib_s=wl.dirty_rate_mib_s if wl.kind == "memory" else 0,
        extra=("quiet", "panic=-1"),
    )


async def wait_for_agent(domain: Domain, timeout_s: float = BOOT_TIMEOUT_S) -> None:
    """Wait until the guest agent announces itself on the serial console (or fails)."""
    console_log = domain.console_log
    if console_log is None:
        raise GuestError(f"the VM on {domain.host_role} has no serial console to watch")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            console = console_log.read_text(errors="replace")
            if agent_client.parse_ready(console):
                return
            failure = agent_client.console_failure(console)
            if failure:
                raise GuestError(f"the guest failed to start: {failure} (see {console_log})")
        exited = domain.exit_reason()
        if exited is not None:
            raise GuestError(f"the VM stopped while the guest booted: {exited}")
        await asyncio.sleep(0.1)
    raise GuestError(f"the guest did not report ready within {timeout_s:.0f} s; see {console_log}")


async def ask_guest(testbed: Testbed, with_checksum: bool) -> GuestFacts:
    """Ask the guest, from the client host, for its identity, service answer and checksum."""
    client_ns = testbed.hosts["client"].netns
    facts = GuestFacts()
    try:
        reply = await asyncio.to_thread(
            call_in_netns, client_ns, agent_client.http_get, testbed.guest_ip
        )
        facts.boot_id = str(reply.get("boot_id"))
        facts.service_ok = True
        if with_checksum:
            facts.checksum = await asyncio.to_thread(
                call_in_netns, client_ns, agent_client.checksum, testbed.guest_ip
            )
            facts.pages_checked, facts.pages_mismatched = await asyncio.to_thread(
                call_in_netns, client_ns, agent_client.verify, testbed.guest_ip
            )
            facts.disk_blocks_checked, facts.disk_blocks_mismatched = await asyncio.to_thread(
                call_in_netns, client_ns, agent_client.disk_verify, testbed.guest_ip
            )
    except VmigrateError as exc:
        facts.error = str(exc)
    return facts
