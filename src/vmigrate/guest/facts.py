"""What the testbed's guest says about itself, asked through vmigrate's agent: when it is up
(its serial console), and — from the client host — its identity, its service, the checksum of
its memory and the ledgers of its memory and disk workloads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass

from vmigrate.config import Scenario
from vmigrate.errors import GuestError, VmigrateError
from vmigrate.guest import agent_client
from vmigrate.guest.cmdline import kernel_cmdline
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


@dataclass(frozen=True)
class Integrity:
    """Whether the guest came through a migration whole, judged by what it says now against
    what it said before: the same boot answering its service, the same memory checksum, no
    write of its memory or disk workload lost."""

    same_guest: bool
    memory_checksum_ok: bool
    memory_writes_intact: bool
    disk_checksum_ok: bool

    @property
    def ok(self) -> bool:
        return (
            self.same_guest
            and self.memory_checksum_ok
            and self.memory_writes_intact
            and self.disk_checksum_ok
        )

    def failures(self) -> list[str]:
        """The names of the checks that failed."""
        return [name for name, ok in dataclasses.asdict(self).items() if not ok]


def integrity(before: GuestFacts, after: GuestFacts) -> Integrity:
    """The guest's integrity after a migration (`after`), against its facts from before."""
    return Integrity(
        same_guest=after.service_ok
        and after.boot_id is not None
        and after.boot_id == before.boot_id,
        memory_checksum_ok=before.checksum is not None and before.checksum == after.checksum,
        memory_writes_intact=after.pages_mismatched == 0,
        disk_checksum_ok=after.disk_blocks_checked > 0 and after.disk_blocks_mismatched == 0,
    )


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


async def ask_guest(
    testbed: Testbed, with_checksum: bool, guest_ip: str | None = None
) -> GuestFacts:
    """Ask the guest at `guest_ip` (None: the testbed's guest 0), from the client host, for its
    identity, service answer and checksum."""
    client_ns = testbed.hosts["client"].netns
    address = guest_ip or testbed.guest_ip
    facts = GuestFacts()
    try:
        reply = await asyncio.to_thread(call_in_netns, client_ns, agent_client.http_get, address)
        facts.boot_id = str(reply.get("boot_id"))
        facts.service_ok = True
        if with_checksum:
            facts.checksum = await asyncio.to_thread(
                call_in_netns, client_ns, agent_client.checksum, address
            )
            facts.pages_checked, facts.pages_mismatched = await asyncio.to_thread(
                call_in_netns, client_ns, agent_client.verify, address
            )
            facts.disk_blocks_checked, facts.disk_blocks_mismatched = await asyncio.to_thread(
                call_in_netns, client_ns, agent_client.disk_verify, address
            )
    except VmigrateError as exc:
        facts.error = str(exc)
    return facts
