"""What crossed the wire: the first bytes of each TCP connection to the migration ports, read
off a raw socket inside a testbed host's network namespace while a run migrates.

Run as a script inside the namespace (`ip netns exec NS python wire.py OUT PORT...`), it keeps,
for each connection to one of the ports, the first bytes of its first few payloads in each
direction, and writes them to OUT (JSON) when it gets SIGTERM. `Wire` starts and stops it.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
KEEP_PAYLOADS = 12  # per connection and direction
KEEP_BYTES = 16
QEMU_MAGIC = b"QEVM"  # a plaintext migration stream starts with it
MULTIFD_MAGIC = struct.pack(">I", 0x11223344)  # a plaintext multifd channel starts with it
NBD_REQUEST_MAGIC = struct.pack(">I", 0x25609513)  # a plaintext NBD request starts with it


def _capture(out: Path, ports: set[int]) -> None:
    flows: dict[str, list[str]] = {}
    seen: set[tuple[str, int]] = set()

    def save(signum: int, frame: FrameType | None) -> None:
        out.write_text(json.dumps(flows))
        sys.exit(0)

    signal.signal(signal.SIGTERM, save)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    (out.parent / (out.name + ".ready")).touch()
    while True:
        frame = sock.recv(256)
        if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
            continue
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != socket.IPPROTO_TCP or len(ip) < header + 20:
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[header:]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        offset = (tcp[12] >> 4) * 4
        if total - header - offset <= 0 or not {sport, dport} & ports:
            continue
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        key = f"{src}:{sport}>{dst}:{dport}"
        kept = flows.setdefault(key, [])
        if len(kept) >= KEEP_PAYLOADS or (key, seq) in seen:  # or seen on another interface
            continue
        seen.add((key, seq))
        kept.append(tcp[offset : offset + KEEP_BYTES].hex())


@dataclass
class Wire:
    """The capture, running in namespace `netns` while a run migrates."""

    netns: str
    out: Path
    ports: list[int]
    process: subprocess.Popen[bytes] | None = None
    flows: dict[str, list[bytes]] = field(default_factory=dict)

    def __enter__(self) -> Wire:
        ready = self.out.parent / (self.out.name + ".ready")
        argv = ["ip", "netns", "exec", self.netns, sys.executable, __file__, str(self.out)]
        self.process = subprocess.Popen(argv + [str(p) for p in self.ports])
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert self.process.poll() is None, "the capture did not start"
            assert time.monotonic() < deadline, "the capture did not get ready"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
        raw = json.loads(self.out.read_text())
        self.flows = {key: [bytes.fromhex(p) for p in payloads] for key, payloads in raw.items()}

    def to_port(self, *ports: int) -> dict[str, list[bytes]]:
        """The payloads sent to one of `ports` (client to server), by connection."""
        return {
            key: payloads
            for key, payloads in self.flows.items()
            if int(key.rsplit(":", 1)[1]) in ports
        }


def is_tls_record(payload: bytes) -> bool:
    """A TLS record header: content type handshake (22) or application data (23), version
    3.x — what an encrypted connection's client sends first."""
    return len(payload) >= 3 and payload[0] in (22, 23) and payload[1] == 3


def plaintext_marks(payloads: list[bytes]) -> list[bytes]:
    """The payloads that carry a plaintext migration, multifd or NBD request header."""
    return [p for p in payloads if p.startswith((QEMU_MAGIC, MULTIFD_MAGIC, NBD_REQUEST_MAGIC))]


if __name__ == "__main__":
    _capture(Path(sys.argv[1]), {int(p) for p in sys.argv[2:]})
