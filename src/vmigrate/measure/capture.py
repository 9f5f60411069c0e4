"""A packet capture on the client host's interface: the probe's independent referee.

tcpdump, inside the client namespace, writes the probe's datagrams to and from the guest and
every ARP/RARP frame (the guest's announcement once it runs on the destination) to
RUN/series/capture.pcap, with the kernel's nanosecond receive times. `read_capture` reads that
file back (pcap, Ethernet, IPv4 — no library needed) into when each probe reply crossed the
wire, on the monotonic clock every other series uses.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from vmigrate.errors import EnvironmentProblem, VmigrateError
from vmigrate.proc import ReadEnd, in_netns, read_until

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
SNAPLEN = 128  # Ethernet + IPv4 + ICMP/UDP + the probe's 24 bytes, with room
PCAP_NS_MAGIC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
ETH_IPV4, ETH_ARP, ETH_RARP = 0x0800, 0x0806, 0x8035
PROBE_MAGIC = 0x766D6763  # "vmgc": client.c's PROBE_MAGIC
PROBE_FORMAT = "<IIQq"  # client.c's struct probe_msg: magic, nonce, seq, send_ns
PROBE_SIZE = struct.calcsize(PROBE_FORMAT)


CAPTURE_FILE = "capture.pcap"  # in RUN/series/
CAPTURE_META = "capture.json"


class CaptureError(VmigrateError):
    """tcpdump did not start, or its file cannot be read."""


class CaptureMeta(BaseModel):
    """What reading RUN/series/capture.pcap back needs, and what tcpdump said of it."""

    interface: str
    guest_ip: str
    guest_mac: str
    port: int
    #: CLOCK_REALTIME minus CLOCK_MONOTONIC (ns) as it started: pcap times are real time,
    #: every series is monotonic.
    realtime_offset_ns: int
    kernel_dropped: int | None  # packets the kernel dropped (None: tcpdump did not say)

    def save(self, series_dir: Path) -> None:
        (series_dir / CAPTURE_META).write_text(self.model_dump_json(indent=2) + "\n")


def load_meta(series_dir: Path) -> CaptureMeta | None:
    """RUN/series/capture.json (None when the run made no capture, or it cannot be read)."""
    path = series_dir / CAPTURE_META
    if not path.exists() or not (series_dir / CAPTURE_FILE).exists():
        return None
    try:
        return CaptureMeta.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        log.warning("%s: %s", path, exc)
        return None


def tcpdump_binary() -> str:
    """tcpdump's path, or an EnvironmentProblem that says how to get it."""
    found = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise EnvironmentProblem(
            "tcpdump is not installed (it referees the probe): `apt-get install tcpdump`, "
            "or set measure.capture = false"
        )
    return found


def capture_filter(guest_ip: str, port: int) -> str:
    """The probe's traffic with the guest (UDP echo on `port`, or ICMP echo) and every ARP and
    RARP frame."""
    return f"(host {guest_ip} and (udp port {port} or icmp)) or arp or rarp"


@dataclass
class Capture:
    """A running tcpdump; `stop()` ends it and writes capture.json beside its file."""

    popen: subprocess.Popen[bytes]
    out: Path
    meta: CaptureMeta
    said: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> CaptureMeta:
        """SIGINT tcpdump (it flushes and reports), SIGKILL after STOP_TIMEOUT_S; record how
        many packets the kernel dropped."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("tcpdump (pid %d) ignored SIGINT: killed", self.pid)
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_S)
        assert self.popen.stderr is not None
        self.said.append(self.popen.stderr.read().decode(errors="replace"))
        self.popen.stderr.close()
        found = re.search(r"(\d+) packets? dropped by kernel", "".join(self.said))
        self.meta.kernel_dropped = int(found.group(1)) if found else None
        self.meta.save(self.out.parent)
        return self.meta


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC right now (ns), from a monotonic reading either side."""
    before = time.monotonic_ns()
    real = time.time_ns()
    after = time.monotonic_ns()
    return real - (before + (after - before) // 2)


def start_capture(
    netns: str | None,
    interface: str,
    guest_ip: str,
    guest_mac: str,
    series_dir: Path,
    port: int = 7,
    on_start: Callable[[int], None] | None = None,
) -> Capture:
    """Start tcpdump on `interface` (in `netns`) into SERIES_DIR/capture.pcap; return once it
    listens. Immediate mode: each packet reaches the file as it comes (buffered, the packets
    of the ring's last block were lost when tcpdump stopped)."""
    series_dir.mkdir(parents=True, exist_ok=True)
    out = series_dir / CAPTURE_FILE
    argv = in_netns(
        netns,
        [tcpdump_binary(), "-i", interface, "-w", str(out), "-U", "--immediate-mode", "-n", "-p",
         "-s", str(SNAPLEN), "--time-stamp-precision=nano", capture_filter(guest_ip, port)],
    )  # fmt: skip
    try:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        raise CaptureError(f"cannot run {argv[0]}: {exc}") from exc
    meta = CaptureMeta(
        interface=interface, guest_ip=guest_ip, guest_mac=guest_mac, port=port,
        realtime_offset_ns=realtime_offset_ns(), kernel_dropped=None,
    )  # fmt: skip
    capture = Capture(popen, out, meta)
    try:
        if on_start is not None:
            on_start(popen.pid)
        _wait_listening(capture)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    return capture


def _wait_listening(capture: Capture) -> None:
    """Block until tcpdump says "listening on" (its capture runs from then on)."""
    stderr = capture.popen.stderr
    assert stderr is not None
    seen, end = read_until(stderr.fileno(), lambda seen: b"listening on" in seen, READY_TIMEOUT_S)
    if end is ReadEnd.TIMED_OUT:
        raise CaptureError(f"tcpdump did not start within {READY_TIMEOUT_S:g} s")
    if end is ReadEnd.CLOSED:
        capture.popen.wait()
        raise CaptureError(f"tcpdump failed: {seen.decode(errors='replace').strip()}")
    capture.said.append(seen.decode(errors="replace"))


# --------------------------------------------------------------------------- reading


I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Captured:
    """What the wire saw, monotonic ns: probe echoes from the guest (`reply_seq`, `reply_ns`),
    probes to it (`request_seq`, `request_ns`), and ARP/RARP frames (`announce_ns`, with
    `announce_mac` the sender's hardware address)."""

    reply_seq: I64
    reply_ns: I64
    request_seq: I64
    request_ns: I64
    announce_ns: I64
    announce_mac: list[str]


def _probe_in(packet: bytes, guest: bytes, port: int) -> tuple[int, bool] | None:
    """(seq, is it the echo?) of a probe datagram to or from the guest in an Ethernet frame:
    a UDP datagram from `port` or an ICMP echo reply is the echo (None for other frames)."""
    if len(packet) < 14 + 20 or struct.unpack_from("!H", packet, 12)[0] != ETH_IPV4:
        return None
    ihl = (packet[14] & 0x0F) * 4
    proto, src, dst = packet[14 + 9], packet[14 + 12 : 14 + 16], packet[14 + 16 : 14 + 20]
    at = 14 + ihl + 8  # UDP header and ICMP echo header are both 8 bytes
    if guest not in (src, dst) or proto not in (1, 17) or len(packet) < at + PROBE_SIZE:
        return None
    if proto == 1:
        kind = packet[14 + ihl]
        if kind not in (0, 8):  # echo reply, echo request
            return None
        echo = kind == 0
    else:
        echo = struct.unpack_from("!H", packet, 14 + ihl)[0] == port
    magic, _nonce, seq, _sent = struct.unpack_from(PROBE_FORMAT, packet, at)
    return (int(seq), echo) if magic == PROBE_MAGIC else None


def read_capture(path: Path, guest_ip: str, realtime_offset: int, port: int = 7) -> Captured:
    """Parse tcpdump's nanosecond pcap file at `path` (`realtime_offset`: Capture's)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaptureError(f"cannot read the capture {path}: {exc}") from exc
    if len(data) < 24 or struct.unpack_from("<I", data, 0)[0] != PCAP_NS_MAGIC:
        raise CaptureError(f"{path} is not a nanosecond pcap file written on this machine")
    if struct.unpack_from("<I", data, 20)[0] != LINKTYPE_ETHERNET:
        raise CaptureError(f"{path}: not an Ethernet capture")
    guest = bytes(int(part) for part in guest_ip.split("."))
    replies: list[tuple[int, int]] = []
    requests: list[tuple[int, int]] = []
    announces: list[tuple[int, str]] = []
    at = 24
    while at + 16 <= len(data):
        seconds, nanos, caplen, _ = struct.unpack_from("<IIII", data, at)
        packet = data[at + 16 : at + 16 + caplen]
        at += 16 + caplen
        t_ns = seconds * 1_000_000_000 + nanos - realtime_offset
        if len(packet) >= 14 and struct.unpack_from("!H", packet, 12)[0] in (ETH_ARP, ETH_RARP):
            announces.append((t_ns, packet[6:12].hex(":")))
            continue
        probe = _probe_in(packet, guest, port)
        if probe is not None:
            (replies if probe[1] else requests).append((probe[0], t_ns))

    def columns(rows: list[tuple[int, int]]) -> tuple[I64, I64]:
        table = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return table[:, 0], table[:, 1]

    reply_seq, reply_ns = columns(replies)
    request_seq, request_ns = columns(requests)
    return Captured(
        reply_seq, reply_ns, request_seq, request_ns,
        np.array([t for t, _ in announces], dtype=np.int64), [mac for _, mac in announces],
    )  # fmt: skip
