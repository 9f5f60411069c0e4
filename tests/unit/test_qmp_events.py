"""QMP events are stamped when QEMU emitted them, not when our event loop got round to them."""

from vmigrate.hypervisor.base import EventKind
from vmigrate.hypervisor.qemu import event_from_qmp

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
