"""The packet capture that referees the probe: the pcap reader on frames built here, and for
real — tcpdump on loopback beside the probe and the guest agent's echo, the same echoes timed
by both."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from host_agent import running_agent

from vmigrate.analysis.referee import referee_section
from vmigrate.analysis.windows import Windows
from vmigrate.measure.capture import (
    CAPTURE_FILE,
    PROBE_FORMAT,
    PROBE_MAGIC,
    CaptureError,
    CaptureMeta,
    read_capture,
    start_capture,
)
from vmigrate.measure.client import start_probe
from vmigrate.measure.client_records import read_probe
from vmigrate.result.outage import Capture

pytestmark = pytest.mark.timeout(120)
GUEST, CLIENT = "10.241.0.100", "10.241.0.4"
GUEST_MAC = "52:54:00:f1:00:64"


def ip(addr: str) -> bytes:
    return bytes(int(p) for p in addr.split("."))


def udp_frame(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    payload = struct.pack(PROBE_FORMAT, PROBE_MAGIC, 7, seq, 123)
    ip_header = bytes([0x45, 0]) + struct.pack("!H", 20 + 8 + len(payload)) + bytes(5) + b"\x11"
    ip_header += bytes(2) + ip(src) + ip(dst)
    return bytes(12) + b"\x08\x00" + ip_header + struct.pack("!HHHH", sport, dport, 0, 0) + payload


def rarp_frame(mac: str) -> bytes:
    return b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) + b"\x80\x35" + bytes(28)


def pcap(path: Path, frames: list[tuple[int, bytes]]) -> None:
    data = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
    for t_ns, frame in frames:
        data += struct.pack("<IIII", t_ns // 10**9, t_ns % 10**9, len(frame), len(frame)) + frame
    path.write_bytes(data)


def test_the_reader_finds_echoes_requests_and_announcements(tmp_path: Path) -> None:
    offset = 1_700_000_000 * 10**9  # real time minus monotonic time
    pcap(tmp_path / "c.pcap", [
        (offset + 5_000, udp_frame(CLIENT, GUEST, 40000, 7, 0)),
        (offset + 9_000, udp_frame(GUEST, CLIENT, 7, 40000, 0)),
        (offset + 20_000, rarp_frame(GUEST_MAC)),
        (offset + 30_000, udp_frame("10.241.0.9", CLIENT, 7, 40000, 1)),  # not the guest
        (offset + 40_000, udp_frame(GUEST, CLIENT, 7, 40000, 1)),
    ])  # fmt: skip
    wire = read_capture(tmp_path / "c.pcap", GUEST, offset)
    assert wire.request_seq.tolist() == [0] and wire.request_ns.tolist() == [5_000]
    assert wire.reply_seq.tolist() == [0, 1] and wire.reply_ns.tolist() == [9_000, 40_000]
    assert wire.announce_ns.tolist() == [20_000] and wire.announce_mac == [GUEST_MAC]


def test_a_file_that_is_no_pcap_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.pcap").write_bytes(b"not a capture at all, not at all")
    with pytest.raises(CaptureError, match="not a nanosecond pcap"):
        read_capture(tmp_path / "c.pcap", GUEST, 0)


def test_the_referee_measures_the_outage_on_the_wire(tmp_path: Path) -> None:
    """Probes every ms from 0 to 1 s; echoes lost from 400 to 500 ms; the probe's receive
    times 30 µs after the wire's."""
    ms = 10**6
    send = np.arange(0, 1000 * ms, ms, dtype=np.float64)
    on_wire = send + 0.2 * ms
    lost = (send >= 400 * ms) & (send < 500 * ms)
    frames = [(int(t), udp_frame(GUEST, CLIENT, 7, 40000, i))
              for i, t in enumerate(on_wire) if not lost[i]]  # fmt: skip
    frames.insert(500, (int(480 * ms), rarp_frame(GUEST_MAC)))
    series = tmp_path / "series"
    series.mkdir()
    pcap(series / CAPTURE_FILE, sorted(frames))
    CaptureMeta(interface="x", guest_ip=GUEST, guest_mac=GUEST_MAC, port=7,
                realtime_offset_ns=0, kernel_dropped=0).save(series)  # fmt: skip
    recv = np.where(lost, np.nan, on_wire + 30_000)
    probe = {"seq": np.arange(len(send), dtype=np.float64), "send_ns": send, "recv_ns": recv}
    windows = Windows.from_marks(0, {"baseline_start": 0.0, "migration_start": 0.1,
                                     "migration_end": 0.9, "after_end": 1.0})  # fmt: skip
    ref = referee_section(series, probe, windows, stop_s=0.4)
    assert isinstance(ref, Capture)
    assert ref.network_outage_ms == pytest.approx(101.0)
    assert ref.probe_minus_capture_ms == pytest.approx(0.0, abs=1e-6)
    assert ref.receive_offset_us.model_dump() == {"median": 30.0, "max_abs": 30.0}
    assert ref.replies_on_wire == 900 and ref.replies_probe_missed == 0
    assert ref.guest_announce_s == pytest.approx(0.48)


def test_tcpdump_and_the_probe_time_the_same_echoes_alike(cache: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("tcpdump") is None:
        pytest.skip("needs root and tcpdump")
    series = tmp_path / "series"
    with running_agent(tmp_path, "--integrity-mib=0") as ports:
        capture = start_capture(None, "lo", "127.0.0.1", GUEST_MAC, series, port=ports["echo"])
        try:
            probe = start_probe(
                None, "127.0.0.1", series / "probe.csv", interval_ms=1.0, port=ports["echo"],
                duration_s=0.5,
            )  # fmt: skip
            probe.wait(10)
        finally:
            meta = capture.stop()
    assert meta.kernel_dropped == 0
    records = read_probe(series / "probe.csv")
    wire = read_capture(series / CAPTURE_FILE, "127.0.0.1", meta.realtime_offset_ns, meta.port)
    assert len(wire.reply_seq) == len(records) and len(wire.request_seq) == len(records)
    by_seq = dict(zip(wire.reply_seq.tolist(), wire.reply_ns.tolist(), strict=True))
    offsets = np.array([records.recv_ns[i] - by_seq[i] for i in range(len(records))])
    # The same kernel receive time, moved to the monotonic clock by each on its own.
    assert np.max(np.abs(offsets)) < 50_000, offsets
