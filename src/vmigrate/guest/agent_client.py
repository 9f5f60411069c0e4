"""Talking to the guest agent from the client namespace: control lines, HTTP GET /, markers.

Plain synchronous sockets, no third-party libraries; every failure becomes a GuestError that
says which address, port and command failed.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from vmigrate.errors import GuestError

HTTP_PORT = 80
CONTROL_PORT = 7000
ECHO_PORT = 7
#: Console lines (serial, ttyS0) the host watches for.
READY_MARKER = "VMIGRATE-AGENT-READY"
INIT_ERROR_MARKER = "VMIGRATE-INIT-ERROR"
AGENT_EXITED_MARKER = "VMIGRATE-AGENT-EXITED"

_UUID = r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}"
_READY_RE = re.compile(rf"{READY_MARKER} boot_id=({_UUID})")
_DISK_VERIFY_RE = re.compile(r"diskverify blocks=(\d+) mismatches=(\d+)")
_VERIFY_RE = re.compile(r"verify pages=(\d+) mismatches=(\d+)")
_CHECKSUM_RE = re.compile(r"checksum fnv1a64=([0-9a-f]{16}) bytes=(\d+)")
_MAX_LINE = 65536


def parse_ready(console_text: str) -> str | None:
    """The boot_id announced by the agent's READY line in console output, if present."""
    m = _READY_RE.search(console_text)
    return m.group(1) if m else None


def console_failure(console_text: str) -> str | None:
    """The first init/agent failure line in console output, if any (the guest is unusable)."""
    for line in console_text.splitlines():
        if INIT_ERROR_MARKER in line or AGENT_EXITED_MARKER in line:
            return line.strip()
    return None


def _recv_line(sock: socket.socket, what: str) -> str:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise GuestError(f"{what}: connection closed before a full reply line")
        buf += chunk
        if len(buf) > _MAX_LINE:
            raise GuestError(f"{what}: reply line longer than {_MAX_LINE} bytes")
    return buf[: buf.index(b"\n")].decode(errors="replace").rstrip("\r")


def control(ip: str, command: str, port: int = CONTROL_PORT, timeout_s: float = 5) -> str:
    """Send one command line to the agent's control port and return its one reply line."""
    if "\n" in command or "\r" in command:
        raise GuestError(f"control command must be a single line, got {command!r}")
    what = f"agent control {ip}:{port} {command!r}"
    try:
        with socket.create_connection((ip, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(command.encode() + b"\n")
            reply = _recv_line(sock, what)
    except OSError as exc:
        raise GuestError(f"{what}: {exc}") from exc
    if reply.startswith("error"):
        raise GuestError(f"{what}: agent answered {reply!r}")
    return reply


def ping(ip: str, port: int = CONTROL_PORT, timeout_s: float = 5) -> None:
    """Raise GuestError unless the agent answers `pong`."""
    reply = control(ip, "ping", port, timeout_s)
    if reply != "pong":
        raise GuestError(f"agent {ip}:{port} answered {reply!r} to ping")


def checksum(ip: str, port: int = CONTROL_PORT, timeout_s: float = 30) -> str:
    """The integrity region's reply line, e.g. `checksum fnv1a64=<16 hex> bytes=<n>`.

    The guest hashes 32 MiB byte by byte under TCG, hence the longer default timeout.
    """
    reply = control(ip, "checksum", port, timeout_s)
    if not _CHECKSUM_RE.fullmatch(reply):
        raise GuestError(f"agent {ip}:{port} answered {reply!r} to checksum")
    return reply


def verify(ip: str, port: int = CONTROL_PORT, timeout_s: float = 30) -> tuple[int, int]:
    """(pages checked, pages whose content disagrees with the ledger) of the memory workload.

    A mismatch is a write the guest made that did not survive (e.g. lost by a migration).
    """
    reply = control(ip, "verify", port, timeout_s)
    match = _VERIFY_RE.fullmatch(reply)
    if not match:
        raise GuestError(f"agent {ip}:{port} answered {reply!r} to verify")
    return int(match.group(1)), int(match.group(2))


def disk_verify(ip: str, port: int = CONTROL_PORT, timeout_s: float = 60) -> tuple[int, int]:
    """(blocks checked, blocks whose content on the guest's disk is not what it last wrote)."""
    reply = control(ip, "diskverify", port, timeout_s)
    match = _DISK_VERIFY_RE.fullmatch(reply)
    if not match:
        raise GuestError(f"agent {ip}:{port} answered {reply!r} to diskverify")
    return int(match.group(1)), int(match.group(2))


def parse_checksum(reply: str) -> tuple[str, int]:
    """(fnv1a64 hex, bytes) from a checksum reply line."""
    m = _CHECKSUM_RE.fullmatch(reply.strip())
    if not m:
        raise GuestError(f"not a checksum reply: {reply!r}")
    return m.group(1), int(m.group(2))


def status(ip: str, port: int = CONTROL_PORT, timeout_s: float = 5) -> dict[str, Any]:
    """The agent's status JSON (boot_id, workload, dirtied_bytes, ...) as a dict."""
    reply = control(ip, "status", port, timeout_s)
    try:
        data = json.loads(reply)
    except ValueError as exc:
        raise GuestError(f"agent {ip}:{port} status is not JSON: {reply!r}") from exc
    if not isinstance(data, dict):
        raise GuestError(f"agent {ip}:{port} status is not a JSON object: {reply!r}")
    return data


def http_get(ip: str, port: int = HTTP_PORT, timeout_s: float = 5) -> dict[str, Any]:
    """GET / from the guest's web service (Connection: close) and return its JSON body."""
    what = f"HTTP GET http://{ip}:{port}/"
    request = f"GET / HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode()
    raw = bytearray()
    try:
        with socket.create_connection((ip, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(request)
            while chunk := sock.recv(65536):
                raw += chunk
    except OSError as exc:
        raise GuestError(f"{what}: {exc}") from exc
    head, sep, body = bytes(raw).partition(b"\r\n\r\n")
    if not sep:
        raise GuestError(f"{what}: incomplete response ({len(raw)} bytes)")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        raise GuestError(f"{what}: {status_line!r}")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise GuestError(f"{what}: body is not JSON: {body[:200]!r}") from exc
    if not isinstance(data, dict):
        raise GuestError(f"{what}: body is not a JSON object: {body[:200]!r}")
    return data


def udp_echo(ip: str, payload: bytes, port: int = ECHO_PORT, timeout_s: float = 2) -> bytes:
    """Send one datagram to the echo port and return what came back (GuestError on timeout)."""
    what = f"UDP echo {ip}:{port}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect((ip, port))
            sock.send(payload)
            return sock.recv(65536)
    except OSError as exc:
        raise GuestError(f"{what}: {exc}") from exc
