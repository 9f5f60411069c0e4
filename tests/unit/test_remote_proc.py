"""hosts.ssh without a real host: the libvirt URI → ssh command line, the stream parser, the
remote sh/awk loop run on this machine's own /proc, and the whole sampler through a stand-in
`ssh` (the URI's `command` parameter) that runs the remote command locally."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmigrate.errors import UsageError
from vmigrate.measure.recorder import Recorder, load_series
from vmigrate.measure.remote_proc import (
    MARK,
    SAMPLER_NAME,
    RemoteProcSampler,
    StreamParser,
    remote_command,
    snapshot_rows,
    start_remote_samplers,
)
from vmigrate.measure.ssh import ssh_argv, ssh_target

NET_DEV = [
    "Inter-|   Receive                            |  Transmit",
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets",
    "    lo:     100       2    0    0    0     0          0         0      100       2"
    "    0    0    0     0       0          0",
    "  eth0: 5000000    4000    0    0    0     0          0         0 90000000   60000"
    "    0    0    0     0       0          0",
]
QEMU_STAT = "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 9 0 0 0 250 50 0 0 20 0 5 0"
VCPU_STAT = "4250 (CPU 0/TCG) R 1 4242 4242 0 -1 4194560 9 0 0 0 180 20 0 0 20 0 5 0"
MIG_STAT = "4260 (live_migration) S 1 4242 4242 0 -1 4194560 9 0 0 0 30 10 0 0 20 0 5 0"


def stream() -> list[str]:
    lines = [
        "Welcome to host1",  # a login banner: ignored
        f"{MARK} hello clk_tck=100 page_size=4096 uplink=eth0 scope=all host=host1",
        f"{MARK} begin 1",
        "S 1 1 (init) S 0 1 1 0 -1 4194560 9 0 0 0 7 3 0 0 20 0 1 0",
        "S 4242 " + QEMU_STAT,
        "M 4242 300000 131072 2000 600 0 150000 0",
        "I 4242 read_bytes: 8192",
        "I 4242 write_bytes: 4096",
        "T 4242 " + VCPU_STAT,
        "T 4242 " + MIG_STAT,
        "garbage",
        *[f"N {line}" for line in NET_DEV],
        f"{MARK} end 1",
    ]
    return lines


def test_a_libvirt_ssh_uri_becomes_the_same_login_for_ssh() -> None:
    uri = "qemu+ssh://root@host1:2222/system?keyfile=/k/id&no_verify=1"
    argv = ssh_argv(ssh_target(uri), "true")
    assert argv[0] == "ssh"
    assert argv[-3:] == ["--", "host1", "true"]
    pairs = list(itertools.pairwise(argv))
    assert ("-l", "root") in pairs and ("-i", "/k/id") in pairs and ("-p", "2222") in pairs
    for option in ("BatchMode=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"):
        assert ("-o", option) in pairs
    assert any(a == "-o" and b.startswith("ConnectTimeout=") for a, b in pairs)
    assert ssh_target(uri).display == "root@host1:2222"


def test_verified_logins_and_other_transports() -> None:
    verified = ssh_argv(ssh_target("qemu+ssh://admin@h/system?known_hosts=/kh"), "true")
    assert "StrictHostKeyChecking=no" not in verified
    assert "UserKnownHostsFile=/kh" in verified
    # qemu+tcp lends only its host: ssh logs in as the current user, on ssh's own port.
    tcp = ssh_target("qemu+tcp://host2:16509/system")
    assert (tcp.host, tcp.user, tcp.port, tcp.keyfile, tcp.no_verify) == ("host2", None, None,
                                                                          None, False)  # fmt: skip
    assert "-l" not in ssh_argv(tcp, "true") and "-p" not in ssh_argv(tcp, "true")
    assert ssh_target("qemu+ssh://h/system?command=/opt/ssh").command == "/opt/ssh"
    with pytest.raises(UsageError, match="needs a host name"):
        ssh_target("qemu:///system")


def test_the_stream_parser_frames_snapshots_and_makes_sampler_rows() -> None:
    parser = StreamParser()
    snaps = [snap for line in stream() if (snap := parser.feed(line)) is not None]
    assert parser.hello == {
        "clk_tck": "100", "page_size": "4096", "uplink": "eth0", "scope": "all", "host": "host1"
    }  # fmt: skip
    assert len(snaps) == 1
    rows = snapshot_rows(snaps[0], 7, "source", "eth0", clk_tck=100, page_size=4096)
    assert rows.processes == [
        (7, "source", 1, "init", 0.1, 0, 0, 0),
        (7, "source", 4242, "qemu-system-x86", 3.0, 131072 * 4096, 8192, 4096),
    ]
    assert rows.threads == [
        (7, "source", 4242, 4250, "CPU 0/TCG", "vcpu", 2.0),
        (7, "source", 4242, 4260, "live_migration", "migration", 0.4),
    ]
    assert rows.link == (7, "source", 5_000_000, 90_000_000, 4000, 60000)
    assert rows.malformed == 1  # "garbage" inside the frame
    assert snapshot_rows(snaps[0], 7, "source", "", 100, 4096).link is None


def test_a_truncated_snapshot_is_dropped_and_a_bad_stat_line_is_counted() -> None:
    parser = StreamParser()
    for line in stream()[:6]:  # cut before the end line
        assert parser.feed(line) is None
    assert parser.feed(f"{MARK} begin 2") is None
    assert parser.feed("S 9 9 no parentheses here") is None
    snap = parser.feed(f"{MARK} end 2")
    assert snap is not None and list(snap.stat) == [9]
    assert snapshot_rows(snap, 1, "destination", "eth0", 100, 4096).malformed == 1


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r")), max_size=30))
def test_the_parser_never_raises_on_any_line(lines: list[str]) -> None:
    parser = StreamParser()
    for line in [f"{MARK} begin 1", *lines, f"{MARK} end 1"]:
        snap = parser.feed(line)
        if snap is not None:
            snapshot_rows(snap, 1, "source", "eth0", 100, 4096)


def test_the_remote_loop_reads_this_machines_proc() -> None:
    """The sh/awk loop as a host runs it (here through sh, not ssh), parsed."""
    shell = subprocess.Popen(
        ["sh", "-c", remote_command(0.1, "127.0.0.1")], stdout=subprocess.PIPE, text=True
    )
    parser = StreamParser()
    snaps = []
    try:
        assert shell.stdout is not None
        for line in shell.stdout:
            snap = parser.feed(line.rstrip("\n"))
            if snap is not None:
                snaps.append(snap)
            if len(snaps) == 2:
                break
    finally:
        shell.kill()
        shell.wait()
    assert parser.hello is not None and parser.hello["uplink"] == "lo"
    rows = snapshot_rows(snaps[-1], 1, "source", "lo", 100, os.sysconf("SC_PAGE_SIZE"))
    mine = [row for row in rows.processes if row[2] == os.getpid()]
    assert mine and mine[0][4] > 0 and mine[0][5] > 0  # this process: CPU and RSS
    assert rows.link is not None and rows.malformed == 0


def fake_ssh(tmp_path: Path, body: str, name: str = "fake-ssh") -> str:
    """A stand-in for the ssh binary: `body` runs with the remote command as $REMOTE."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\nfor REMOTE; do :; done\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_the_sampler_writes_the_series_and_stops_its_ssh(tmp_path: Path) -> None:
    ssh = fake_ssh(tmp_path, 'exec sh -c "$REMOTE"')
    recorder = Recorder(tmp_path / "run")
    uri = f"qemu+ssh://root@localhost/system?command={ssh}"
    sampler = RemoteProcSampler("source", uri, "127.0.0.1", recorder, 0.1)
    start_remote_samplers([sampler])
    time.sleep(0.6)
    pid = sampler._proc.pid if sampler._proc else 0
    sampler.stop()
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    assert sampler.snapshots >= 2 and sampler.uplink == "lo"
    processes, text = load_series(tmp_path / "run", "processes")
    assert set(text["host"]) == {"source"} and len(set(processes["t_ns"])) >= 2
    links, _ = load_series(tmp_path / "run", "links")
    assert len(links["tx_bytes"]) >= 2
    time.sleep(0.3)  # the loop dies of SIGPIPE at its next write
    assert SAMPLER_NAME not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                              text=True).stdout  # fmt: skip


def test_a_refused_login_is_one_usage_error_and_leaves_no_ssh(tmp_path: Path) -> None:
    refused = fake_ssh(tmp_path, 'echo "root@h1: Permission denied (publickey)." >&2; exit 255')
    working = fake_ssh(tmp_path, 'exec sh -c "$REMOTE"', "working-ssh")
    ok = RemoteProcSampler(
        "source", f"qemu+ssh://h0/system?command={working}", "127.0.0.1", Recorder(tmp_path), 0.1
    )
    bad = RemoteProcSampler(
        "destination", f"qemu+ssh://root@h1/system?command={refused}", "h0", Recorder(tmp_path),
        0.1,
    )  # fmt: skip
    with pytest.raises(UsageError, match=r"destination's /proc .* root@h1: .*Permission denied"):
        start_remote_samplers([ok, bad])
    for sampler in (ok, bad):
        assert sampler._proc is not None and sampler._proc.returncode is not None
    assert not (tmp_path / "series").exists()  # nothing recorded


def test_a_host_that_drops_out_is_logged_and_the_other_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dropping = fake_ssh(
        tmp_path,
        'timeout 0.5 sh -c "$REMOTE"; echo "Connection to h1 closed by remote host." >&2; exit 255',
        "dropping-ssh",
    )
    steady = fake_ssh(tmp_path, 'exec sh -c "$REMOTE"', "steady-ssh")
    recorder = Recorder(tmp_path / "run")
    samplers = [
        RemoteProcSampler("source", f"qemu+ssh://h0/system?command={steady}", "lo0", recorder, 0.1),
        RemoteProcSampler(
            "destination", f"qemu+ssh://h1/system?command={dropping}", "lo1", recorder, 0.1
        ),
    ]
    start_remote_samplers(samplers)
    try:
        time.sleep(1.2)
        dropped_at = samplers[1].snapshots
        source_at = samplers[0].snapshots
        time.sleep(0.5)
        assert samplers[1].snapshots == dropped_at >= 1
        assert samplers[0].snapshots > source_at  # still sampling
    finally:
        for sampler in samplers:
            sampler.stop()
    assert "destination: the /proc sampler over ssh ended" in caplog.text
    assert "closed by remote host" in caplog.text
