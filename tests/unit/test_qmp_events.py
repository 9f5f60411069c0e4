"""QMP events are stamped when QEMU emitted them, not when our event loop got round to them;
QEMU's switch-over checkpoints come from its log; a QMP command never swallows a Ctrl-C."""

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vmigrate.errors import HypervisorError
from vmigrate.hypervisor import qemu as qemu_module
from vmigrate.hypervisor.base import EventKind, RunState
from vmigrate.hypervisor.qemu import QemuDomain
from vmigrate.hypervisor.qemu_checkpoints import read_checkpoints
from vmigrate.hypervisor.qmp_vocabulary import event_from_qmp

OFFSET_NS = 1_700_000_000_000_000_000  # wall clock minus monotonic clock


def qmp_event(name: str, wall_us: int) -> dict[str, object]:
    return {
        "event": name,
        "data": {},
        "timestamp": {"seconds": wall_us // 1_000_000, "microseconds": wall_us % 1_000_000},
    }


def test_an_event_read_late_keeps_the_moment_qemu_emitted_it() -> None:
    emitted_ns = 5_000_000_000
    received_ns = emitted_ns + 8_000_000  # the loop read it 8 ms late
    event = event_from_qmp(
        "source", received_ns, qmp_event("STOP", (emitted_ns + OFFSET_NS) // 1000), OFFSET_NS
    )
    assert event.kind is EventKind.STOPPED
    assert event.t_ns == emitted_ns


def test_a_stamp_that_cannot_be_true_leaves_the_receipt_time() -> None:
    received_ns = 5_000_000_000
    future = event_from_qmp(
        "source",
        received_ns,
        qmp_event("RESUME", (received_ns + 10**6 + OFFSET_NS) // 1000),
        OFFSET_NS,
    )
    stepped = event_from_qmp(
        "source",
        received_ns,
        qmp_event("RESUME", (received_ns - 2 * 10**9 + OFFSET_NS) // 1000),
        OFFSET_NS,
    )
    unstamped = event_from_qmp("source", received_ns, {"event": "RESUME"}, OFFSET_NS)
    assert future.t_ns == stepped.t_ns == unstamped.t_ns == received_ns


def test_checkpoints_are_read_from_the_lines_of_this_qemu_only(tmp_path: Path) -> None:
    log = tmp_path / "qemu-source.log"
    earlier = (
        b"$ ip netns exec vmx-source qemu-system-x86_64 ...\n"
        b"111@1796257820.103643:vmstate_downtime_checkpoint src-vm-stopped\n"
    )
    log.write_bytes(
        earlier
        + b"$ ip netns exec vmx-source qemu-system-x86_64 ...\n"
        + b"222@1796257821.000100:migrate_set_state new state device\n"
        + b"223@1796257821.000200:vmstate_downtime_checkpoint src-vm-stopped\n"
        + b"qemu-system-x86_64: a warning\n"
        + b"223@1796257821.047821:vmstate_downtime_checkpoint src-iterable-saved\n"
        + b"$ ip netns exec vmx-source qemu-system-x86_64 ...\n"  # a later QEMU
        + b"333@1796257830.000001:vmstate_downtime_checkpoint src-vm-stopped\n"
    )
    assert read_checkpoints(log, len(earlier)) == [
        (1796257821_000200_000, "src-vm-stopped"),
        (1796257821_047821_000, "src-iterable-saved"),
    ]
    assert read_checkpoints(tmp_path / "missing.log", 0) == []


def test_a_dead_qemu_is_reported_by_its_signal_and_its_own_messages(tmp_path: Path) -> None:
    earlier = b"$ qemu-system-x86_64 (an earlier QEMU)\nqemu-system-x86_64: not this one\n"
    (tmp_path / "qemu-source.log").write_bytes(
        earlier
        + b"$ ip netns exec vmx-source qemu-system-x86_64 ...\n"
        + b"qemu-system-x86_64: a warning\n"
        + b"223@1796257821.047821:vmstate_downtime_checkpoint src-iterable-saved\n"
    )
    process = subprocess.Popen(["sleep", "60"])
    process.kill()
    process.wait()
    qemu = QemuDomain(
        "source", process, tmp_path, tmp_path / "qmp.sock", lambda _: None,
        log_offset=len(earlier),
    )  # fmt: skip
    assert qemu.exit_reason() == (
        "QEMU on source was killed by signal 9 (Killed): qemu-system-x86_64: a warning "
        f"(see {tmp_path / 'qemu-source.log'})"
    )


class ReplyOnCue:
    """A QMP client whose reply comes when the test says."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[dict[str, object]] | None = None

    async def execute(self, command: str, arguments: object = None) -> dict[str, object]:
        self.reply = asyncio.get_running_loop().create_future()
        return await self.reply


def test_a_ctrl_c_landing_with_a_qmp_reply_still_stops_the_run(tmp_path: Path) -> None:
    """asyncio.wait_for on Python 3.11 returned the reply and dropped the cancellation: the run
    went on migrating after Ctrl-C (test_ctrl_c_during_migration_leaves_nothing hung)."""

    async def scenario() -> str:
        domain = QemuDomain("source", None, tmp_path, tmp_path / "qmp.sock", lambda pid: None)  # type: ignore[arg-type]
        client = ReplyOnCue()
        domain._client = client  # type: ignore[assignment]

        async def poll() -> str:
            await domain.execute("query-migrate")
            await asyncio.sleep(0.05)  # as the orchestrator's loop goes on
            return "went on"

        task = asyncio.create_task(poll())
        while client.reply is None:
            await asyncio.sleep(0)
        client.reply.set_result({"status": "active"})  # the reply arrives...
        task.cancel()  # ...and Ctrl-C cancels the run in the same turn of the loop
        try:
            return await task
        except asyncio.CancelledError:
            return "stopped"

    assert asyncio.run(scenario()) == "stopped"


def sleeper(tmp_path: Path) -> tuple[subprocess.Popen[bytes], QemuDomain]:
    """A QemuDomain whose process is a `sleep` (never connected to a QMP socket)."""
    process = subprocess.Popen(["sleep", "60"])
    return process, QemuDomain("destination", process, tmp_path, tmp_path / "qmp.sock", print)


def test_a_qemu_killed_as_its_state_is_asked_is_gone_not_an_error(tmp_path: Path) -> None:
    process, qemu = sleeper(tmp_path)

    async def disconnected(command: str, arguments: dict[str, Any] | None = None) -> Any:
        process.kill()  # its QMP socket closes before the process is reaped
        raise HypervisorError(f"QMP {command} on destination failed: Disconnected")

    qemu.execute = disconnected  # type: ignore[method-assign]
    assert asyncio.run(qemu.run_state()) == RunState.GONE


def test_a_broken_connection_to_a_living_qemu_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    process, qemu = sleeper(tmp_path)
    monkeypatch.setattr(qemu_module, "EXIT_GRACE_S", 0.1)

    async def disconnected(command: str, arguments: dict[str, Any] | None = None) -> Any:
        raise HypervisorError(f"QMP {command} on destination failed: Disconnected")

    qemu.execute = disconnected  # type: ignore[method-assign]
    try:
        with pytest.raises(HypervisorError, match="Disconnected"):
            asyncio.run(qemu.run_state())
    finally:
        process.kill()
        process.wait()


def test_a_ctrl_c_while_shutdown_waits_for_the_event_stream_is_not_swallowed(
    tmp_path: Path,
) -> None:
    process, qemu = sleeper(tmp_path)
    process.kill()
    process.wait()

    async def stubborn_stream() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # ends slowly once told to

    async def interrupted_shutdown() -> bool:
        qemu._event_task = asyncio.create_task(stubborn_stream())
        shutdown = asyncio.create_task(qemu.shutdown())
        await asyncio.sleep(0.1)
        shutdown.cancel()  # what asyncio.run does to the run's task on Ctrl-C
        try:
            await shutdown
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(interrupted_shutdown())


def test_the_cleanup_after_a_ctrl_c_shuts_qemu_down_whole(tmp_path: Path) -> None:
    process, qemu = sleeper(tmp_path)
    process.kill()
    process.wait()

    async def run_then_clean_up() -> bool:
        try:
            await asyncio.sleep(60)  # the run, when Ctrl-C cancels it
        except asyncio.CancelledError:
            qemu._event_task = asyncio.create_task(asyncio.sleep(60))
            await qemu.shutdown()  # the cleanup: the task is still "cancelling" here
            return qemu.process_id() is None and qemu._released
        return False

    async def main() -> bool:
        run = asyncio.create_task(run_then_clean_up())
        await asyncio.sleep(0.05)
        run.cancel()
        return await run

    assert asyncio.run(main())
