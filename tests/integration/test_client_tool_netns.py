"""The client tool across namespaces (root): the agent in one throwaway namespace, the probe and
the load generator in another, started the way experiments start them (start_probe/start_load).

Also measures, and prints, what the meters cost: CPU seconds per wall second of the client at
100, 500 and 1000 requests/s and of the probe at 1 kHz, next to the platform's floor (a bare
1 kHz sleep loop), and the achieved against the requested rate.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vmigrate.guest import image
from vmigrate.measure import client
from vmigrate.measure.client import ClientProcess
from vmigrate.measure.client_records import read_probe, read_requests

pytestmark = pytest.mark.timeout(300)

AGENT_SOURCE = Path(image.__file__).with_name("agent.c")
GUEST_IP = "10.97.0.1"
CLIENT_IP = "10.97.0.2"
RUN_S = 4.0

FLOOR_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>
int main(void)
{
    struct timespec d, c0, c1;
    clock_gettime(CLOCK_MONOTONIC, &d);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    for (int i = 0; i < 3000; i++) {
        d.tv_nsec += 1000000;
        if (d.tv_nsec >= 1000000000) { d.tv_sec++; d.tv_nsec -= 1000000000; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &d, NULL);
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    printf("%f\n", (double)(c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) / 1e9);
    return 0;
}
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def netns_pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
    return [int(p) for p in done.stdout.split()]


@dataclass
class Pair:
    guest_ns: str
    client_ns: str


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Two namespaces joined by a veth: 10.97.0.1 (the 'guest') and 10.97.0.2 (the client)."""
    tag = f"vmgc{os.getpid()}"
    p = Pair(f"{tag}-a", f"{tag}-b")
    try:
        ip("netns", "add", p.guest_ns)
        ip("netns", "add", p.client_ns)
        ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for ns, dev, addr in (
            (p.guest_ns, f"{tag}a", GUEST_IP),
            (p.client_ns, f"{tag}b", CLIENT_IP),
        ):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield p
    finally:
        for ns in (p.guest_ns, p.client_ns):  # only our processes live in our namespaces
            for pid in netns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", f"{tag}a")
        for ns in (p.guest_ns, p.client_ns):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", ns)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert tag not in listed


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed: apt-get install gcc libc6-dev")
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMIGRATE_CACHE", str(path))
        client.build_client()
        yield path


@pytest.fixture(scope="module")
def agent(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The guest agent, compiled for the host, serving on 10.97.0.1 (ports 80 and 7)."""
    binary = tmp_path_factory.mktemp("agent") / "agent"
    subprocess.run(
        ["gcc", *image.AGENT_CFLAGS, "-o", str(binary), str(AGENT_SOURCE)],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pair.guest_ns, str(binary), "--integrity-mib=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(10), "the agent did not start"
        line = proc.stdout.readline().decode()
        assert line.startswith("VMIGRATE-AGENT-READY"), line
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run_for(proc: ClientProcess, seconds: float) -> tuple[float, float]:
    """Let the client run; return (CPU seconds per wall second while running, wall seconds)."""
    assert proc.ready_ns is not None
    time.sleep(seconds)
    cpu_s = proc.cpu_s()  # /proc/PID/stat, before it stops: the steady state only
    wall_s = (time.monotonic_ns() - proc.ready_ns) / 1e9
    proc.stop()
    return cpu_s / wall_s, wall_s


def platform_floor(tmp_path: Path) -> float:
    """CPU per wall second of a bare loop sleeping to 1 ms deadlines (no work at all)."""
    src = tmp_path / "floor.c"
    src.write_text(FLOOR_C)
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "floor"), str(src)], check=True)
    done = subprocess.run([str(tmp_path / "floor")], capture_output=True, text=True, check=True)
    return float(done.stdout) / 3.0


def test_client_runs_in_its_namespace(cache: Path, pair: Pair, agent: int, tmp_path: Path) -> None:
    started: list[int] = []
    out = tmp_path / "probe.csv"
    proc = client.start_probe(pair.client_ns, GUEST_IP, out, on_start=started.append)
    try:
        assert started == [proc.pid]
        # ip netns exec execs: the PID is the client itself, inside the client namespace.
        assert os.readlink(f"/proc/{proc.pid}/exe") == str(client.build_client())
        assert (
            os.stat(f"/proc/{proc.pid}/ns/net").st_ino
            == os.stat(f"/run/netns/{pair.client_ns}").st_ino
        )
        assert os.getsid(proc.pid) == proc.pid  # its own session: the terminal's ^C is not its
    finally:
        proc.stop()
    assert not read_probe(out).lost.any()


def test_probe_at_1khz(cache: Path, pair: Pair, agent: int, tmp_path: Path) -> None:
    out = tmp_path / "probe.csv"
    proc = client.start_probe(pair.client_ns, GUEST_IP, out, interval_ms=1.0)
    cpu, wall_s = run_for(proc, RUN_S)
    records = read_probe(out)
    floor = platform_floor(tmp_path)
    rtt_us = records.rtt_ns / 1e3
    print(
        f"\nprobe 1 kHz: {len(records)} probes in {wall_s:.2f} s, lost {int(records.lost.sum())}, "
        f"rtt p50 {np.nanmedian(rtt_us):.0f} us p99 {np.nanpercentile(rtt_us, 99):.0f} us; "
        f"CPU {cpu * 100:.2f} % of a core (a bare 1 kHz sleep loop here: {floor * 100:.2f} %)"
    )
    # A stall of this busy 2-core machine skips slots (never sends a burst): most, not all.
    assert 0.9 * wall_s * 1000 <= len(records) <= wall_s * 1000 + 2
    assert not records.lost.any()
    # One wake-up per probe: the bare sleep loop's cost, plus sending through the veth pair.
    assert cpu < max(0.02, 2 * floor + 0.01)


def test_icmp_probe_is_answered_by_the_peer_kernel(cache: Path, pair: Pair, tmp_path: Path) -> None:
    """No agent needed: ICMP echo is answered by the other namespace's kernel."""
    out = tmp_path / "icmp.csv"
    proc = client.start_probe(pair.client_ns, GUEST_IP, out, interval_ms=1.0, icmp=True)
    run_for(proc, 1.0)
    records = read_probe(out)
    assert len(records) >= 900
    assert not records.lost.any()
    assert np.all(records.recv_ns > records.send_ns)


@pytest.mark.parametrize("rate", [100, 500, 1000])
def test_load_rate_and_cost(cache: Path, pair: Pair, agent: int, tmp_path: Path, rate: int) -> None:
    out = tmp_path / "requests.csv"
    proc = client.start_load(pair.client_ns, GUEST_IP, out, rate_rps=rate)
    cpu, wall_s = run_for(proc, RUN_S)
    records = read_requests(out)
    assert records.ok.all() and (records.status == 200).all()
    span_s = (records.intended_ns[-1] - records.intended_ns[0]) / 1e9
    sent_rate = (len(records) - 1) / ((records.sent_ns[-1] - records.sent_ns[0]) / 1e9)
    done_rate = (len(records) - 1) / ((records.done_ns[-1] - records.done_ns[0]) / 1e9)
    lat_ms = records.latency_ns / 1e6
    print(
        f"\nload {rate} req/s: {len(records)} requests in {wall_s:.2f} s "
        f"(scheduled {(len(records) - 1) / span_s:.1f}/s, sent {sent_rate:.1f}/s, "
        f"answered {done_rate:.1f}/s); latency p50 {np.median(lat_ms):.3f} ms "
        f"p99 {np.percentile(lat_ms, 99):.3f} ms max {lat_ms.max():.3f} ms; "
        f"send delay p50 {np.median(records.sent_ns - records.intended_ns) / 1e3:.0f} us; "
        f"CPU {cpu * 100:.2f} % of a core"
    )
    assert len(records) == pytest.approx(wall_s * rate, rel=0.02, abs=2)
    assert done_rate == pytest.approx(rate, rel=0.01)
    assert sent_rate == pytest.approx(rate, rel=0.01)
    if rate == 100:
        assert cpu < 0.05
