"""QEMU behind the `Domain` interface: one qemu-system process per host, driven over QMP.

The process runs inside its host's network namespace (`ip netns exec`, which execs, so the PID
we get is QEMU's own), in its own session so a Ctrl-C reaches vmigrate, not QEMU: vmigrate
decides what happens to the VM. The QMP socket is a path in the run directory, reachable from
the root namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from vmigrate.errors import HypervisorError
from vmigrate.hypervisor.base import (
    Domain,
    EventKind,
    HypervisorEvent,
    MigrationStats,
    RunState,
    VmConfig,
)
from vmigrate.hypervisor.cpu import load_catalog, missing
from vmigrate.hypervisor.guest_ram import guest_ram_data_bytes, guest_ram_resident_bytes
from vmigrate.hypervisor.introspect import QEMU_BINARY
from vmigrate.hypervisor.qemu_checkpoints import ARGS as CHECKPOINT_ARGS
from vmigrate.hypervisor.qemu_checkpoints import is_checkpoint, read_checkpoints
from vmigrate.hypervisor.qmp_vocabulary import RUN_STATES, event_from_qmp, stats_from_query
from vmigrate.pids import terminate
from vmigrate.proc import in_netns, run

MIB = 1024 * 1024
CONNECT_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 30.0
#: How long a QEMU whose QMP connection broke may take to be seen ended (killed, not yet reaped).
EXIT_GRACE_S = 1.0
log = logging.getLogger(__name__)
DISK_ID = "disk0"
#: Pages calc-dirty-rate samples per GiB of guest RAM (QEMU allows 128 to 16384; 1/32 of them).
DIRTY_RATE_SAMPLE_PAGES = 8192


# QEMU < 9.0 under TCG loses guest writes during live migration: the 64-pages-at-a-time fast
# path of cpu_physical_memory_sync_dirty_bitmap() clears dirty bits without re-arming the TCG
# TLB's not-dirty trap, so later stores through cached TLB entries are never marked dirty and
# the destination resumes with stale pages (guest oopses; upstream fix "physmem: Fix
# migration dirty bitmap coherency with TCG memory access", QEMU 9.0, Feb 2024). `make setup`
# installs a fixed QEMU; on an older one the fast path is avoided: it is taken only for RAM
# blocks whose size is a multiple of 64 pages, so the guest gets 8 KiB more RAM than asked,
# which sends every sync through the correct (but slow: it stalls the guest) per-page path.
TCG_RAM_PAD_KIB = 8
FIXED_TCG_DIRTY_TRACKING = (9, 0)


@functools.cache
def qemu_version() -> tuple[int, int, int]:
    """The installed QEMU's version, from `qemu-system-x86_64 --version`."""
    text = run([QEMU_BINARY, "--version"]).stdout
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise HypervisorError(f"cannot read the QEMU version from {text.splitlines()[:1]}")
    major, minor, micro = (int(part) for part in match.groups())
    return major, minor, micro


def ram_size_arg(config: VmConfig) -> str:
    """The -m value: the requested size, padded for TCG on a QEMU older than 9.0."""
    if config.accel == "tcg" and qemu_version()[:2] < FIXED_TCG_DIRTY_TRACKING:
        return f"{config.memory_mib * 1024 + TCG_RAM_PAD_KIB}k"
    return f"{config.memory_mib}M"


def qemu_argv(
    config: VmConfig, tap: str, qmp_socket: Path, serial_log: Path, incoming: str | None
) -> list[str]:
    """The QEMU command line; identical on both hosts except for `-incoming`."""
    argv = [
        QEMU_BINARY,
        "-name", f"{config.name},debug-threads=on",
        "-machine", config.machine,
        "-accel", config.accel,
        "-cpu", config.cpu_model,
        "-m", ram_size_arg(config),
        "-smp", str(config.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(config.kernel),
        "-initrd", str(config.initrd),
        "-append", config.kernel_cmdline,
        "-serial", f"file:{serial_log}",
        "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={config.mac},romfile=",
        "-drive",
        f"file={config.disk_url},format=qcow2,cache={config.disk_cache},if=none,id={DISK_ID}",
        "-device", f"virtio-blk-pci,drive={DISK_ID}",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        *CHECKPOINT_ARGS,
    ]  # fmt: skip
    if incoming:
        argv += ["-incoming", incoming]
    return argv


def _refuse_beyond_ceiling(
    host_role: str, config: VmConfig, cpu_ceiling: str, log_dir: Path
) -> None:
    """Refuse (HypervisorError, logged) a VM whose CPU wants more than `cpu_ceiling`, as KVM."""
    catalog = load_catalog(config.accel)
    lacking = missing(
        catalog.requested(config.cpu_model),
        catalog.offered(cpu_ceiling, f"hosts.{host_role}_cpu"),
    )
    if lacking:
        refusal = (
            f"the {host_role} host (CPU {cpu_ceiling}) refuses the VM: host doesn't "
            f"support requested features: {', '.join(lacking)}"
        )
        with open(log_dir / f"qemu-{host_role}.log", "a") as log:
            log.write(f"refused to start -cpu {config.cpu_model}: {refusal}\n")
        raise HypervisorError(refusal)


def _spawn_logged(argv: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv` in its own session, logging to `log_path`; the process, its log's offset."""
    with open(log_path, "ab") as log:
        log_offset = log.tell()
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log_offset


class QemuDomain(Domain):
    """A QEMU process on one host. Create with `await QemuDomain.launch(...)`."""

    def __init__(
        self,
        host_role: str,
        process: subprocess.Popen[bytes],
        log_dir: Path,
        qmp_socket: Path,
        on_exit: Callable[[int], None],
        memory_mib: int = 0,
        log_offset: int = 0,
    ) -> None:
        self.host_role = host_role
        self.process = process
        self.memory_mib = memory_mib
        self.qmp_socket = qmp_socket
        self.serial_log = log_dir / f"serial-{host_role}.log"
        self.console_log: Path | None = self.serial_log
        self.qemu_log = log_dir / f"qemu-{host_role}.log"
        self._on_exit = on_exit
        self._client = QMPClient(f"vmigrate-{host_role}")
        self._events: list[HypervisorEvent] = []
        self.log_offset = log_offset  # where this QEMU's lines begin in its host's log
        self._checkpoints_seen = 0
        self._event_task: asyncio.Task[None] | None = None
        self._released = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def released(self) -> bool:
        """True once `shutdown` ran: the process is gone and the QMP connection closed."""
        return self._released

    @classmethod
    async def launch(
        cls,
        *,
        host_role: str,
        netns: str,
        tap: str,
        config: VmConfig,
        log_dir: Path,
        qmp_socket: Path,
        incoming: str | None,
        on_start: Callable[[int], None],
        on_exit: Callable[[int], None],
        cpu_ceiling: str = "",
    ) -> QemuDomain:
        """Start QEMU on a host and connect to its QMP socket; `on_start` gets the PID at once.

        Logs and the serial console go to `log_dir`; the QMP socket is `qmp_socket` (keep it
        short: a unix socket path has at most 107 bytes). A host with a `cpu_ceiling` (a CPU model)
        refuses a VM whose CPU asks for more, as KVM on such a host does.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        if cpu_ceiling:
            _refuse_beyond_ceiling(host_role, config, cpu_ceiling, log_dir)
        qmp_socket.parent.mkdir(parents=True, exist_ok=True)
        sock = qmp_socket
        sock.unlink(missing_ok=True)
        serial = log_dir / f"serial-{host_role}.log"
        serial.unlink(missing_ok=True)
        log_path = log_dir / f"qemu-{host_role}.log"
        argv = in_netns(netns, qemu_argv(config, tap, sock, serial, incoming))
        process, log_offset = _spawn_logged(argv, log_path)
        on_start(process.pid)
        domain = cls(host_role, process, log_dir, sock, on_exit, config.memory_mib, log_offset)
        try:
            await domain._connect()
        except BaseException:
            await domain.shutdown()
            raise
        return domain

    def log_tail(self, lines: int = 3) -> str:
        """The last lines this QEMU printed for a person (for error messages): its log from
        its own command line on, without the checkpoints it traced."""
        try:
            with open(self.qemu_log, "rb") as file:
                file.seek(self.log_offset)
                text = file.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        said = [line for line in text if not line.startswith("$ ") and not is_checkpoint(line)]
        return " | ".join(said[-lines:])

    async def _connect(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise HypervisorError(self._ended())
            if self.qmp_socket.exists():
                try:
                    await self._client.connect(str(self.qmp_socket))
                    break
                except (QMPError, OSError):
                    pass
            if time.monotonic() > deadline:
                raise HypervisorError(
                    f"QEMU on {self.host_role} did not open its QMP socket within "
                    f"{CONNECT_TIMEOUT_S:.0f} s (see {self.qemu_log})"
                )
            await asyncio.sleep(0.05)
        self._event_task = asyncio.create_task(self._collect_events())

    async def _collect_events(self) -> None:
        async for event in self._client.events:
            received_ns = time.monotonic_ns()
            offset_ns = time.time_ns() - time.monotonic_ns()
            self._events.append(event_from_qmp(self.host_role, received_ns, dict(event), offset_ns))

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command; HypervisorError says which command failed and why."""
        if self._released:
            raise HypervisorError(f"QEMU on {self.host_role} is already stopped ({command})")
        try:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation (Ctrl-C) that
            # lands just as the reply does, and the run went on migrating as if none came.
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                return await self._client.execute(command, arguments)
        except ExecuteError as exc:
            raise HypervisorError(f"QEMU on {self.host_role} refused {command}: {exc}") from exc
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            tail = self.log_tail()
            raise HypervisorError(
                f"QMP {command} on {self.host_role} failed: {exc!r}"
                + (f"; QEMU said: {tail}" if tail else "")
            ) from exc

    async def run_state(self) -> RunState:
        if self._released or self.process.poll() is not None:
            return RunState.GONE
        try:
            reply = await self.execute("query-status")
        except HypervisorError:
            # Killed as it was asked: its socket closed before the process was reaped.
            if await self._exits_within(EXIT_GRACE_S):
                return RunState.GONE
            raise
        return RUN_STATES.get(str(reply["status"]), RunState.OTHER)

    async def _exits_within(self, seconds: float) -> bool:
        """Whether the process has ended, or ends within `seconds`."""
        try:
            await asyncio.to_thread(self.process.wait, seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def process_id(self) -> int | None:
        return None if self._released or self.process.poll() is not None else self.process.pid

    def exit_reason(self) -> str | None:
        if self.process.poll() is None:
            return None
        return self._ended()

    def _ended(self) -> str:
        """How the process ended, and the last it said (for a process that has ended)."""
        code = self.process.returncode
        how = f"exited with {code}"
        if code < 0:
            how = f"was killed by signal {-code} ({signal.strsignal(-code)})"
        said = self.log_tail() or "no output"
        return f"QEMU on {self.host_role} {how}: {said} (see {self.qemu_log})"

    async def version(self) -> str:
        """QEMU's version as major.minor.micro (query-version)."""
        reply = await self.execute("query-version")
        return "{major}.{minor}.{micro}".format(**reply["qemu"])

    async def pause(self) -> None:
        await self.execute("stop")

    async def resume(self) -> None:
        await self.execute("cont")

    async def set_migration_capabilities(self, capabilities: dict[str, bool]) -> None:
        """Turn migration features on or off (both ends must agree on some)."""
        caps = [{"capability": k, "state": v} for k, v in capabilities.items()]
        await self.execute("migrate-set-capabilities", {"capabilities": caps})

    async def set_migration_parameters(self, parameters: dict[str, Any]) -> None:
        """Tune the migration (bandwidth, downtime limit, ...)."""
        await self.execute("migrate-set-parameters", parameters)

    async def accept_migration(self, uri: str) -> None:
        """Destination: start listening on `uri` (after capabilities and parameters are set)."""
        await self.execute("migrate-incoming", {"uri": uri})

    async def start_postcopy(self) -> None:
        """Source: switch a running pre-copy migration to post-copy."""
        await self.execute("migrate-start-postcopy")

    async def start_migration(self, uri: str) -> None:
        """Source: begin sending the VM to `uri`."""
        await self.execute("migrate", {"uri": uri})

    async def migration_stats(self) -> MigrationStats:
        """Source: query-migrate, normalised."""
        reply = await self.execute("query-migrate")
        return stats_from_query(dict(reply))

    async def cancel_migration(self) -> None:
        """Source: ask QEMU to abort the migration (it stops asynchronously)."""
        await self.execute("migrate_cancel")

    async def touched_memory_bytes(self) -> int | None:
        """Resident bytes of the guest-RAM mapping in QEMU's address space (/proc/PID/smaps):
        pages the guest never touched are not resident, and pre-copy sends them as zero pages
        at next to no cost."""
        return guest_ram_resident_bytes(self.pid, self.memory_mib * MIB)

    async def data_memory_bytes(self) -> int | None:
        """The touched memory that holds data (not all zeros), sampled from QEMU's memory."""
        return await asyncio.to_thread(guest_ram_data_bytes, self.pid, self.memory_mib * MIB)

    async def measure_dirty_rate(self, seconds: int) -> float:
        """QEMU's calc-dirty-rate by page sampling (hashes of sampled pages, no dirty logging),
        with DIRTY_RATE_SAMPLE_PAGES per GiB, not its default 512: at 512 each sampled page
        stands for 2 MiB/s, and a guest dirtying 10 MiB/s read anywhere from 2 to 24. Its
        dirty-bitmap mode says 0 MiB/s under TCG even of a guest writing 20 MiB/s; sampling
        misses a guest whose writes are few and scattered (0 MiB/s of a web guest that dirtied
        ~14): the calibrated model's dirty-rate floor covers that."""
        args = {"calc-time": seconds, "sample-pages": DIRTY_RATE_SAMPLE_PAGES}
        await self.execute("calc-dirty-rate", args)
        deadline = time.monotonic() + seconds + COMMAND_TIMEOUT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            reply = await self.execute("query-dirty-rate")
            if reply.get("status") == "measured":
                return float(reply.get("dirty-rate", 0.0))
        raise HypervisorError(f"QEMU on {self.host_role} did not finish measuring the dirty rate")

    def drain_events(self) -> list[HypervisorEvent]:
        """The events since the last drain: QMP's, then QEMU's switch-over checkpoints."""
        events, self._events = self._events, []
        return events + self._new_checkpoints()

    def _new_checkpoints(self) -> list[HypervisorEvent]:
        """The checkpoints QEMU logged since the last drain, as events on our clock."""
        found = read_checkpoints(self.qemu_log, self.log_offset)
        fresh, self._checkpoints_seen = found[self._checkpoints_seen :], len(found)
        offset_ns = time.time_ns() - time.monotonic_ns()
        return [
            HypervisorEvent(
                t_ns=wall_ns - offset_ns,
                host=self.host_role,
                kind=EventKind.CHECKPOINT,
                name="vmstate_downtime_checkpoint",
                data={"checkpoint": name},
            )
            for wall_ns, name in fresh
        ]

    async def shutdown(self) -> None:
        """Ask QEMU to quit; kill it if it does not; forget it in the testbed state."""
        if self._released:
            return
        if self.process.poll() is None and self._client.runstate.name == "RUNNING":
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await self._client.execute("quit")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3.0):
                await self._client.disconnect()
        if self._event_task is not None:
            self._event_task.cancel()
            # asyncio.wait, not await: the task's own cancellation stays in it, while a Ctrl-C
            # of this run (even during the cleanup after an earlier one) still goes through.
            await asyncio.wait([self._event_task])
            if not self._event_task.cancelled() and (exc := self._event_task.exception()):
                log.debug("QEMU on %s: event stream: %r", self.host_role, exc)
        try:
            await asyncio.to_thread(self.process.wait, 5.0)
        except subprocess.TimeoutExpired:
            await asyncio.to_thread(terminate, self.process.pid, None, 3.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(2.0)
        self._released = True
        self._on_exit(self.process.pid)
