"""The client tool (measure/client.c + client.py) on loopback, no root: the probe and the load
generator against the guest agent compiled for the host, their failure modes, the CSV readers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from host_agent import free_port, running_agent

from vmigrate.errors import ImageBuildError, VmigrateError
from vmigrate.measure import client
from vmigrate.measure.client import ClientToolError, build_client, start_load, start_probe
from vmigrate.measure.client_records import read_probe, read_requests

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """agent.c compiled for the host (as for the guest image) on loopback, free ports."""
    with running_agent(tmp_path_factory.mktemp("agent"), "--integrity-mib=0") as ports:
        yield ports


# --------------------------------------------------------------------------- build


def test_client_compiles_without_warnings(cache: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        ["gcc", *client.CLIENT_CFLAGS, "-Werror", "-o", str(tmp_path / "c"), client.CLIENT_SOURCE],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_build_is_cached_by_digest(cache: Path) -> None:
    first = build_client()
    assert first == cache / "tools" / client.client_digest() / "vmigrate-client"
    assert os.access(first, os.X_OK)
    mtime = first.stat().st_mtime_ns
    assert build_client() == first and first.stat().st_mtime_ns == mtime  # reused
    assert build_client(force=True) == first
    assert [p.name for p in first.parent.iterdir()] == ["vmigrate-client"]  # no temp left


def test_build_without_gcc_says_fix(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMIGRATE_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(ImageBuildError, match="apt-get install gcc libc6-dev"):
        build_client()


def test_build_failure_is_an_image_build_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "client.c"
    broken.write_text("int main(void) { return nope; }\n")
    monkeypatch.setenv("VMIGRATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(client, "CLIENT_SOURCE", broken)
    with pytest.raises(ImageBuildError, match="nope"):
        build_client()
    assert not list((tmp_path / "cache").rglob("vmigrate-client*"))


# --------------------------------------------------------------------------- probe


def test_probe_against_the_agent(cache: Path, agent: dict[str, int], tmp_path: Path) -> None:
    out = tmp_path / "probe.csv"
    pids: list[int] = []
    before_ns = time.monotonic_ns()
    proc = start_probe(
        None, "127.0.0.1", out, interval_ms=1.0, port=agent["echo"], on_start=pids.append,
        duration_s=0.5,
    )  # fmt: skip
    assert pids == [proc.pid]
    assert proc.wait(10) == out
    after_ns = time.monotonic_ns()
    records = read_probe(out)
    # At most one per ms; a stall of this busy 2-core machine skips slots (seen: 390 of 500
    # at load 2.7), so the floor only says the tool kept sending: the pacing is below.
    assert 250 <= len(records) <= 500
    assert np.array_equal(records.seq, np.arange(len(records)))
    assert not records.lost.any()
    assert (np.diff(records.send_ns) > 0).all()
    # Same clock as Python's time.monotonic_ns(): every time lies inside the run.
    assert before_ns < records.send_ns[0] and records.recv_ns.max() < after_ns
    assert (records.rtt_ns > 0).all() and np.median(records.rtt_ns) < 5e6
    assert (records.recv_ns > records.send_ns).all()
    # Paced on absolute 1 ms deadlines, each probe sent at most one interval late (else its
    # slot is skipped): any 10 consecutive gaps span at least 9 ms, so there is never a burst.
    # A busy machine may still preempt the tool between that check and the send: one more
    # interval of slack (a burst of catch-up sends would span far less).
    assert (records.send_ns[10:] - records.send_ns[:-10]).min() >= 8e6
    assert np.median(np.diff(records.send_ns)) == pytest.approx(1e6, rel=0.02)
    assert "0 lost" in proc.stderr_text()


def test_probe_without_echo_records_losses(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "lost.csv"
    proc = start_probe(None, "127.0.0.1", out, interval_ms=10, port=free_port(socket.SOCK_DGRAM))
    time.sleep(0.3)
    proc.stop()
    records = read_probe(out)
    assert 20 <= len(records) <= 32
    assert records.lost.all() and np.isnan(records.rtt_ns).all()


def test_probe_stops_on_sigterm_with_a_complete_file(
    cache: Path, agent: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "probe.csv"
    proc = start_probe(None, "127.0.0.1", out, interval_ms=2.0, port=agent["echo"])
    time.sleep(0.5)
    assert proc.running and not out.exists()
    stop_ns = time.monotonic_ns()
    assert proc.stop() == out
    assert not proc.running and not (tmp_path / "probe.csv.tmp").exists()
    assert proc.stopped_ns is not None and proc.stopped_ns - stop_ns < 1e9
    records = read_probe(out)
    assert 200 <= len(records) <= 260 and not records.lost.any()
    assert out.read_text().endswith("\n")
    assert proc.cpu_s() >= 0


def test_probe_skips_slots_after_a_stall_instead_of_bursting(
    cache: Path, agent: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "probe.csv"
    proc = start_probe(None, "127.0.0.1", out, interval_ms=1.0, port=agent["echo"])
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGSTOP)  # a 150 ms stall
    time.sleep(0.15)
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(0.2)
    proc.stop()
    records = read_probe(out)
    gaps_ms = np.diff(records.send_ns) / 1e6
    stall = int(np.argmax(gaps_ms))
    assert gaps_ms[stall] > 140
    resumed = records.send_ns[stall + 1]
    after = records.send_ns[(records.send_ns >= resumed) & (records.send_ns < resumed + 20e6)]
    assert len(after) <= 22  # back to one per ms: no burst of the ~150 missed probes
    assert np.array_equal(records.seq, np.arange(len(records)))  # seq counts sent probes only
    span_ms = (records.send_ns[-1] - records.send_ns[0]) / 1e6
    assert len(records) <= span_ms - gaps_ms[stall] + 3  # the stalled slots were not sent


# --------------------------------------------------------------------------- load


def test_load_against_the_agent(cache: Path, agent: dict[str, int], tmp_path: Path) -> None:
    out = tmp_path / "requests.csv"
    before_ns = time.monotonic_ns()
    proc = start_load(None, "127.0.0.1", out, rate_rps=200, port=agent["http"], duration_s=1)
    proc.wait(10)
    after_ns = time.monotonic_ns()
    records = read_requests(out)
    assert len(records) == 200  # exactly rate x duration: the schedule is fixed
    assert records.ok.all() and (records.status == 200).all()
    assert np.allclose(np.diff(records.intended_ns), 5e6, atol=1)
    assert before_ns < records.intended_ns[0] and np.nanmax(records.done_ns) < after_ns
    assert (records.sent_ns >= records.intended_ns).all()
    assert (records.done_ns > records.sent_ns).all()
    assert (records.latency_ns > 0).all() and np.median(records.latency_ns) < 5e6
    assert "200 ok" in proc.stderr_text()


def test_load_catches_up_after_a_stall_and_counts_from_intended_times(
    cache: Path, agent: dict[str, int], tmp_path: Path
) -> None:
    """Open loop: requests intended while the generator was stalled still go out (late), and
    their latency includes the stall: no coordinated omission."""
    out = tmp_path / "requests.csv"
    proc = start_load(None, "127.0.0.1", out, rate_rps=200, port=agent["http"], duration_s=0.6)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(0.15)
    os.kill(proc.pid, signal.SIGCONT)
    proc.wait(10)
    records = read_requests(out)
    assert len(records) == 120 and records.ok.all()  # the whole schedule
    late = records.latency_ns > 50e6
    assert 20 <= late.sum() <= 35  # those intended during the 150 ms stall
    assert records.latency_ns.max() > 100e6


def test_load_against_a_closed_port_records_connect_errors(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "requests.csv"
    port = free_port(socket.SOCK_STREAM)
    start_load(None, "127.0.0.1", out, rate_rps=200, port=port, duration_s=0.3).wait(10)
    records = read_requests(out)
    assert len(records) == 60
    assert (records.error == "connect").all() and (records.status == 0).all()
    assert np.isnan(records.sent_ns).all() and np.isnan(records.done_ns).all()
    assert np.isnan(records.latency_ns).all()


def test_load_timeouts_against_a_silent_server(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "requests.csv"
    with socket.socket() as silent:  # accepts (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)
        proc = start_load(
            None, "127.0.0.1", out, rate_rps=50, timeout_ms=200, port=silent.getsockname()[1],
            duration_s=0.4,
        )  # fmt: skip
        t0 = time.monotonic()
        proc.wait(10)
        assert time.monotonic() - t0 < 2.0  # 0.4 s of load + at most 0.2 s of draining
    records = read_requests(out)
    assert len(records) == 20
    assert (records.error == "timeout").all() and (records.status == 0).all()
    assert not np.isnan(records.sent_ns).any() and np.isnan(records.done_ns).all()


def test_load_io_errors_when_the_server_resets(cache: Path, tmp_path: Path) -> None:
    """A server that answers half a response then closes, or closes without answering."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        n = 0
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                if n % 2:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
                n += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    out = tmp_path / "requests.csv"
    try:
        port = server.getsockname()[1]
        start_load(None, "127.0.0.1", out, rate_rps=50, port=port, duration_s=0.4).wait(10)
    finally:
        stop.set()
        thread.join(5)
        server.close()
    records = read_requests(out)
    assert len(records) == 20
    assert (records.error == "io").all() and np.isnan(records.done_ns).all()


def test_load_queues_beyond_max_conns(cache: Path, tmp_path: Path) -> None:
    """With one connection to a silent server, later requests wait in the queue: they are sent
    only when the connection frees up, and time out counted from their intended time."""
    out = tmp_path / "requests.csv"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)
        start_load(
            None, "127.0.0.1", out, rate_rps=20, timeout_ms=300, port=silent.getsockname()[1],
            duration_s=0.5, max_conns=1,
        ).wait(10)  # fmt: skip
    records = read_requests(out)
    assert len(records) == 10 and (records.error == "timeout").all()
    # Request k waits for request k-1 to time out (and its connection to be closed).
    waited = records.sent_ns[1:] - (records.intended_ns[:-1] + 300e6)
    assert (waited >= 0).all() and (waited < 50e6).all()
    assert records.sent_ns[0] - records.intended_ns[0] < 50e6


def test_load_stops_on_sigterm_with_a_complete_file(
    cache: Path, agent: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "requests.csv"
    proc = start_load(None, "127.0.0.1", out, rate_rps=200, port=agent["http"])
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C would send, if it reached it
    assert proc.wait(10) == out  # (a second signal would cut the wait for answers short)
    records = read_requests(out)
    assert 90 <= len(records) <= 130
    assert records.ok.all()  # answers in flight at the stop were waited for
    assert not (tmp_path / "requests.csv.tmp").exists()


def test_start_failure_says_why(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ClientToolError, match="expected an IP address") as info:
        start_load(None, "not-an-address", tmp_path / "x.csv", rate_rps=10)
    assert isinstance(info.value, VmigrateError)
    with pytest.raises(ClientToolError, match="exited before it was ready"):
        start_probe("vmigrate-no-such-netns", "127.0.0.1", tmp_path / "y.csv")
    assert not (tmp_path / "x.csv").exists()
    (tmp_path / "z.csv.tmp").mkdir()  # where it would write: fails before READY, says why
    with pytest.raises(ClientToolError, match=r"cannot write .*z\.csv\.tmp"):
        start_probe(None, "127.0.0.1", tmp_path / "z.csv")


def test_binary_usage_errors(cache: Path, tmp_path: Path) -> None:
    binary = str(build_client())
    for argv in (
        [],
        ["fly"],
        ["probe", "--target", "127.0.0.1"],
        ["load", "--target", "127.0.0.1", "--out", str(tmp_path / "o")],
        ["probe", "--target", "127.0.0.1", "--out", "o", "--interval-us", "0"],
    ):
        done = subprocess.run([binary, *argv], capture_output=True, text=True, timeout=10)
        assert done.returncode == 2 and done.stderr, argv


# --------------------------------------------------------------------------- readers


def test_read_probe_empty_cells_and_exact_rtt(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    big = 9_007_199_254_740_993  # 2**53 + 1: not representable as float64
    path.write_text(
        f"seq,send_ns,recv_ns\n0,{big},{big + 1}\n1,{big + 10},\n2,{big + 20},{big + 29}"
    )
    records = read_probe(path)
    assert records.seq.tolist() == [0, 1, 2] and records.send_ns.dtype == np.int64
    assert records.send_ns[0] == big
    assert records.lost.tolist() == [False, True, False]
    assert records.rtt_ns[0] == 1 and np.isnan(records.rtt_ns[1]) and records.rtt_ns[2] == 9


def test_read_requests_every_error_kind(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "intended_ns,sent_ns,done_ns,status,error\n"
        "100,110,150,200,\n"
        "200,,,0,connect\n"
        "300,305,,0,timeout\n"
        "400,401,,0,io\n"
        "500,502,600,503,\n"
    )
    records = read_requests(path)
    assert records.error.tolist() == ["", "connect", "timeout", "io", ""]
    assert records.status.tolist() == [200, 0, 0, 0, 503]
    assert records.ok.tolist() == [True, False, False, False, True]
    assert np.isnan(records.sent_ns[1]) and records.sent_ns[2] == 305
    assert records.latency_ns[0] == 50 and records.latency_ns[4] == 100
    assert np.isnan(records.latency_ns[1:4]).all()


def test_readers_on_header_only_and_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "e.csv"
    empty.write_text("seq,send_ns,recv_ns\n")
    assert len(read_probe(empty)) == 0
    empty.write_text("intended_ns,sent_ns,done_ns,status,error\n")
    assert len(read_requests(empty)) == 0
    bad = tmp_path / "b.csv"
    bad.write_text("t_ns,x\n1,2\n")
    with pytest.raises(ClientToolError, match="header"):
        read_probe(bad)
    bad.write_text("intended_ns,sent_ns,done_ns,status,error\n1,2,3,200,exploded\n")
    with pytest.raises(ClientToolError):
        read_requests(bad)
    with pytest.raises(ClientToolError, match="cannot read"):
        read_probe(tmp_path / "missing.csv")
