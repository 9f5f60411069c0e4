"""Boot the real guest image under QEMU (TCG) in a throwaway namespace and probe its agent.

The namespace `vmgt-<pid>` holds a bridge with 10.99.0.1/24 and the VM's tap; every probe runs
inside it (a child Python via `ip netns exec`), so no traffic leaves it. QEMU is stopped by its
PID and the namespace deleted in the fixture's teardown, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmigrate.guest.agent_client import console_failure, parse_ready
from vmigrate.guest.build import build_image
from vmigrate.guest.cmdline import kernel_cmdline
from vmigrate.guest.image import GuestImage
from vmigrate.proc import in_netns, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

HOST_CIDR = "10.99.0.1/24"
GUEST_IP = "10.99.0.100"
GUEST_MAC = "52:54:00:99:00:64"
READY_TIMEOUT_S = 60.0
WORKING_SET_MIB = 32
DIRTY_RATE_MIB_S = 8
INTEGRITY_MIB = 32


@dataclass(frozen=True)
class BootedGuest:
    """A running guest: its namespace, address, console log and how long READY took."""

    netns: str
    ip: str
    boot_id: str
    ready_s: float
    console: Path


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, tap devices)")
    for tool in ("qemu-system-x86_64", "ip", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def in_guest_netns(netns: str, code: str, timeout_s: float = 60) -> Any:
    """Run Python `code` inside the namespace; it must print one JSON value, returned here."""
    done = run([sys.executable, "-c", textwrap.dedent(code)], netns=netns, timeout_s=timeout_s)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    """The guest image (built on first use, cached afterwards)."""
    _skip_unless_possible()
    return build_image(progress=lambda m: print(f"[image] {m}"))


@pytest.fixture(scope="module")
def guest(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedGuest]:
    """Boot the guest with the memory workload; tear everything down afterwards."""
    netns = f"vmgt-{os.getpid()}"
    console = tmp_path_factory.mktemp("guest") / "console.log"
    qemu_err = console.with_name("qemu.stderr")
    qemu: subprocess.Popen[bytes] | None = None
    try:
        run(["ip", "netns", "add", netns])
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "br0", "type", "bridge"],
            ["ip", "addr", "add", HOST_CIDR, "dev", "br0"],
            ["ip", "link", "set", "br0", "up"],
            ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["ip", "link", "set", "tap0", "master", "br0", "up"],
        ):
            run(argv, netns=netns)
        append = kernel_cmdline(
            f"{GUEST_IP}/24",
            workload="memory",
            working_set_mib=WORKING_SET_MIB,
            dirty_rate_mib_s=DIRTY_RATE_MIB_S,
            integrity_mib=INTEGRITY_MIB,
        )
        qemu_argv = [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-m", "512",
            "-smp", "1",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display", "none",
            "-kernel", str(image.kernel),
            "-initrd", str(image.initrd),
            "-append", append,
            "-serial", f"file:{console}",
            "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}",
        ]  # fmt: skip
        started = time.monotonic()
        with qemu_err.open("wb") as err:
            # `ip netns exec` execs QEMU in place, so this PID is QEMU's own.
            qemu = subprocess.Popen(
                in_netns(netns, qemu_argv), stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        boot_id = None
        while time.monotonic() - started < READY_TIMEOUT_S:
            text = console.read_text(errors="replace") if console.exists() else ""
            boot_id = parse_ready(text)
            if boot_id:
                break
            failure = console_failure(text)
            if failure:
                pytest.fail(f"guest failed to start: {failure}\n{text[-3000:]}")
            if qemu.poll() is not None:
                pytest.fail(
                    f"QEMU exited with {qemu.returncode}: {qemu_err.read_text()}\n{text[-3000:]}"
                )
            time.sleep(0.1)
        ready_s = time.monotonic() - started
        if not boot_id:
            text = console.read_text(errors="replace") if console.exists() else ""
            pytest.fail(f"no READY line within {READY_TIMEOUT_S:.0f} s; console:\n{text[-3000:]}")
        print(f"[guest] READY after {ready_s:.2f} s, boot_id {boot_id}")
        yield BootedGuest(netns, GUEST_IP, boot_id, ready_s, console)
    finally:
        if qemu is not None and qemu.poll() is None:
            qemu.terminate()
            try:
                qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait(timeout=10)
        run(["ip", "netns", "del", netns], check=False)


def test_ready_line_within_bound(guest: BootedGuest) -> None:
    """The agent announces itself with the kernel's boot_id, well within the bound."""
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", guest.boot_id
    )
    assert guest.ready_s < READY_TIMEOUT_S
    assert guest.console.read_text(errors="replace").count("VMIGRATE-AGENT-READY") == 1


def test_http_get(guest: BootedGuest) -> None:
    """GET / answers JSON with the same boot_id; keep-alive, pipelining, 404, close work."""
    result = in_guest_netns(
        guest.netns,
        f"""
        import json, re, socket
        from vmigrate.guest.agent_client import http_get
        first = http_get({guest.ip!r})
        second = http_get({guest.ip!r})
        s = socket.create_connection(({guest.ip!r}, 80), timeout=10)
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: g\\r\\n\\r\\n"
                  b"GET /missing HTTP/1.1\\r\\nHost: g\\r\\n\\r\\n"
                  b"GET / HTTP/1.1\\r\\nHost: g\\r\\nConnection: close\\r\\n\\r\\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
        statuses = [m.decode() for m in re.findall(rb"HTTP/1\\.1 (\\d{{3}}) ", raw)]
        print(json.dumps({{"first": first, "second": second, "statuses": statuses,
                           "json_type": b"Content-Type: application/json" in raw}}))
        """,
    )
    first, second = result["first"], result["second"]
    assert first["boot_id"] == guest.boot_id
    assert second["requests"] > first["requests"] >= 1
    assert second["uptime_ms"] >= first["uptime_ms"] > 0
    assert result["statuses"] == ["200", "404", "200"]
    assert result["json_type"]


def test_udp_echo(guest: BootedGuest) -> None:
    """Every datagram comes back unchanged, including binary and empty-ish payloads."""
    result = in_guest_netns(
        guest.netns,
        f"""
        import json, os
        from vmigrate.guest.agent_client import udp_echo
        payloads = [os.urandom(n) for n in (1, 8, 64, 1400)] + [bytes(range(256))]
        ok = [udp_echo({guest.ip!r}, p) == p for p in payloads]
        print(json.dumps(ok))
        """,
    )
    assert result == [True] * 5


def test_control_protocol(guest: BootedGuest) -> None:
    """ping/unknown/several commands on one connection, each with one reply line."""
    result = in_guest_netns(
        guest.netns,
        f"""
        import json, socket
        from vmigrate.errors import GuestError
        from vmigrate.guest.agent_client import control
        pong = control({guest.ip!r}, "ping")
        try:
            control({guest.ip!r}, "frobnicate")
            unknown = "no error"
        except GuestError as exc:
            unknown = str(exc)
        s = socket.create_connection(({guest.ip!r}, 7000), timeout=30)
        s.sendall(b"ping\\nbogus\\r\\nping\\n")
        f = s.makefile("rb")
        lines = [f.readline().decode().rstrip() for _ in range(3)]
        print(json.dumps({{"pong": pong, "unknown": unknown, "lines": lines}}))
        """,
    )
    assert result["pong"] == "pong"
    assert "error unknown command" in result["unknown"]
    assert result["lines"] == ["pong", "error unknown command", "pong"]


def test_checksum_stable(guest: BootedGuest) -> None:
    """The integrity region hashes the same twice (it is never written after start)."""
    result = in_guest_netns(
        guest.netns,
        f"""
        import json, time
        from vmigrate.guest.agent_client import checksum
        t = time.monotonic()
        a = checksum({guest.ip!r})
        took = time.monotonic() - t
        b = checksum({guest.ip!r})
        print(json.dumps({{"a": a, "b": b, "took_s": took}}))
        """,
    )
    print(f"[guest] checksum took {result['took_s']:.2f} s under TCG")
    assert result["a"] == result["b"]
    assert re.fullmatch(
        rf"checksum fnv1a64=[0-9a-f]{{16}} bytes={INTEGRITY_MIB * 1024 * 1024}", result["a"]
    )


def test_status_memory_workload(guest: BootedGuest) -> None:
    """status reports the memory workload and dirtied_bytes grows at roughly the set rate."""
    result = in_guest_netns(
        guest.netns,
        f"""
        import json, time
        from vmigrate.guest.agent_client import status
        deadline = time.monotonic() + 30
        while status({guest.ip!r})["dirtied_bytes"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        t0 = time.monotonic(); a = status({guest.ip!r})
        time.sleep(2)
        t1 = time.monotonic(); b = status({guest.ip!r})
        print(json.dumps({{"a": a, "b": b, "dt": t1 - t0}}))
        """,
    )
    a, b = result["a"], result["b"]
    assert a["boot_id"] == b["boot_id"] == guest.boot_id
    assert a["workload"] == "memory"
    assert a["working_set_mib"] == WORKING_SET_MIB
    assert a["dirty_rate_mib_s"] == DIRTY_RATE_MIB_S
    assert a["integrity_mib"] == INTEGRITY_MIB
    assert b["dirtied_bytes"] > a["dirtied_bytes"] > 0
    assert a["dirtied_bytes"] % 4096 == 0
    rate_mib_s = (b["dirtied_bytes"] - a["dirtied_bytes"]) / result["dt"] / 2**20
    print(f"[guest] dirty rate measured {rate_mib_s:.2f} MiB/s (set {DIRTY_RATE_MIB_S})")
    assert 0.3 * DIRTY_RATE_MIB_S < rate_mib_s < 1.5 * DIRTY_RATE_MIB_S
