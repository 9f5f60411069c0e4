"""Encrypted migrations for real (migration.tls = true): the run's certificates on both hosts,
and on the wire, TLS records where a plain run sends QEMU's stream in the clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_migration import PREEMPT_THREAD, assert_moved, run, threads_seen
from wire import Wire, is_tls_record, plaintext_marks

from vmigrate.testbed.testbed import Testbed

QEMU_PORTS = (4444, 10809)  # the migration stream, the NBD disk copy
LIBVIRT_PORTS = tuple(range(49152, 49216))  # libvirt's migration port range (stream and NBD)
WORKLOAD = {"kind": "memory", "working_set_mib": 32, "dirty_rate_mib_s": 10}


def migrate_watched(
    testbed: Testbed, out: Path, ports: tuple[int, ...], **sections: Any
) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """A run with the capture on the destination host; the result and what the source sent to
    `ports`, by connection."""
    netns = testbed.hosts["destination"].netns
    sections = {"workload": WORKLOAD, **sections}
    with Wire(netns, out.parent / f"{out.name}-wire.json", list(ports)) as wire:
        result = run(testbed, out, **sections)
    source = testbed.hosts["source"].ip
    sent = {key: p for key, p in wire.to_port(*ports).items() if key.startswith(f"{source}:")}
    return result, sent


def assert_encrypted(sent: dict[str, list[bytes]], connections: int = 1) -> None:
    """Every connection the source opened carries TLS and no plaintext header; at least
    `connections` of them start with a TLS record (the migration stream's ClientHello; an NBD
    connection negotiates STARTTLS in the clear first)."""
    assert sent, "the capture saw no migration traffic"
    for key, payloads in sent.items():
        assert any(is_tls_record(p) for p in payloads), (key, payloads[:3])
        assert plaintext_marks(payloads) == [], (key, plaintext_marks(payloads))
    starting = [key for key, payloads in sent.items() if is_tls_record(payloads[0])]
    assert len(starting) >= connections, sent


def test_a_plain_migration_is_readable_on_the_wire(testbed: Testbed, tmp_path: Path) -> None:
    """The control: without TLS the capture sees QEMU's stream header, so the checks below
    can fail. Also the plain pre-copy of a guest that dirties its memory meanwhile."""
    result, sent = migrate_watched(testbed, tmp_path / "run", QEMU_PORTS)
    assert_moved(result, tmp_path / "run")
    # Dirtied pages are re-sent: more than one pass over memory.
    assert result["migration"]["iterations"] >= 2
    # Every page of the working set was checked against the agent's ledger after the move.
    ws_pages = WORKLOAD["working_set_mib"] * 1024 * 1024 // 4096
    assert result["verification"]["working_set_pages_checked"] == ws_pages
    assert result["migration"]["tls"] is False
    assert any(payloads[0].startswith(b"QEVM") for payloads in sent.values()), sent
    assert not any(is_tls_record(p) for payloads in sent.values() for p in payloads)


def test_tls_encrypts_every_multifd_channel(testbed: Testbed, tmp_path: Path) -> None:
    """The main channel and two more, each its own TLS session. (Plain pre-copy's one stream
    is encrypted in test_tls_encrypts_the_disk_copy's run, beside its NBD connection.)"""
    result, sent = migrate_watched(
        testbed,
        tmp_path / "run",
        QEMU_PORTS,
        migration={"strategy": "multifd", "multifd_channels": 2, "tls": True},
    )
    assert_moved(result, tmp_path / "run")
    assert result["migration"]["tls"] is True
    assert_encrypted(sent, connections=3)


def test_tls_encrypts_postcopy(testbed: Testbed, tmp_path: Path) -> None:
    """Dirtying faster than the link carries, so the switch to post-copy surely comes: the
    pages then travel on request, over the same encrypted connection. (Also the run of a
    post-copy from the start that completes without a fault.)"""
    result, sent = migrate_watched(
        testbed,
        tmp_path / "run",
        QEMU_PORTS,
        network={"bandwidth_mbit": 200},
        migration={"strategy": "postcopy", "tls": True, "timeout_s": 90},
        workload={"kind": "memory", "working_set_mib": 64, "dirty_rate_mib_s": 50},
    )
    testbed.shape(1000)
    assert_moved(result, tmp_path / "run")
    assert [a["action"] for a in result["migration"]["actions"]] == ["postcopy"]
    # postcopy_preempt is off unless asked (test_migration.py's hybrid run asks)
    assert result["migration"]["postcopy_preempt"] is False
    assert PREEMPT_THREAD not in threads_seen(tmp_path / "run", "destination")
    events = [e["data"].get("status") for e in result["events"] if e["event"] == "migration"]
    assert "postcopy-active" in events
    assert result["data"]["postcopy_bytes"] > 0
    assert_encrypted(sent)


def test_tls_encrypts_the_disk_copy(testbed: Testbed, tmp_path: Path) -> None:
    """Pre-copy with the disk mirrored over NBD: both connections encrypted."""
    result, sent = migrate_watched(
        testbed,
        tmp_path / "run",
        QEMU_PORTS,
        storage={"mode": "local"},
        migration={"tls": True},
    )
    assert_moved(result, tmp_path / "run")
    assert result["migration"]["tls"] is True
    assert result["migration"]["disk_copy_bytes"] > 0
    nbd = {key: p for key, p in sent.items() if key.endswith(":10809")}
    assert nbd, sent  # the mirror's NBD connection was seen, and it is encrypted
    stream = {key: p for key, p in sent.items() if key.endswith(":4444")}
    assert stream, sent  # the pre-copy stream was seen too, and it starts with TLS
    assert_encrypted(sent, connections=1)


def test_tls_through_libvirt(testbed: Testbed, tmp_path: Path) -> None:
    """VIR_MIGRATE_TLS with the run's certificates in each daemon's migrate_tls_x509_cert_dir,
    the disk copied too (libvirt's NBD over TLS). Also the libvirt backend's run with local
    storage: the disk copy libvirt makes (VIR_MIGRATE_NON_SHARED_DISK)."""
    result, sent = migrate_watched(
        testbed,
        tmp_path / "run",
        LIBVIRT_PORTS,
        hosts={"backend": "libvirt"},
        storage={"mode": "local"},
        migration={"tls": True},
    )
    assert_moved(result, tmp_path / "run")
    assert result["environment"]["backend"] == "libvirt"
    assert result["migration"]["tls"] is True
    assert result["migration"]["disk_copy_bytes"] > 0
    assert len(sent) >= 2, sent  # the migration stream and the disk copy
    assert_encrypted(sent, connections=1)
