"""The testbed itself: wiring, shaping, NFS, and teardown — also after vmigrate was SIGKILLed."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import leftovers, processes_in

from vmigrate.testbed.guests import MAX_GUESTS, GuestNic
from vmigrate.testbed.netns import call_in_netns
from vmigrate.testbed.testbed import Testbed


def vmigrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmigrate", *args], capture_output=True, text=True, timeout=120
    )


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def test_hosts_are_wired_and_nothing_touches_the_root_namespace(testbed: Testbed) -> None:
    status = testbed.status()
    assert status["up"] is True
    assert all(h["present"] for h in status["hosts"].values())
    assert not any(name.startswith(testbed.name) for name in root_links())
    # Every host reaches every other through the fabric switch.
    source = testbed.hosts["source"]
    for role, host in testbed.hosts.items():
        if role != "source":
            done = subprocess.run(
                ["ip", "netns", "exec", source.netns, "ping", "-c", "1", "-W", "2", host.ip],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, f"source cannot reach {role}: {done.stdout}"
    # The uplinks are shaped with tbf at the requested rate.
    qdisc = subprocess.run(
        ["tc", "-n", source.netns, "qdisc", "show", "dev", source.uplink],
        capture_output=True,
        text=True,
    ).stdout
    assert "tbf" in qdisc and "1Gbit" in qdisc


def test_the_hosts_stacks_are_tuned_for_live_migration(testbed: Testbed) -> None:
    def sysctl(role: str, key: str) -> str:
        ns = testbed.hosts[role].netns
        argv = ["ip", "netns", "exec", ns, "sysctl", "-n", key]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    for role in testbed.hosts:
        assert sysctl(role, "net.ipv4.tcp_notsent_lowat") == "131072", role
    assert sysctl("client", "net.ipv4.tcp_thin_linear_timeouts") == "1"
    assert sysctl("source", "net.ipv4.tcp_thin_linear_timeouts") == "0"  # the client's alone
    client = testbed.hosts["client"]
    for guest_ip in (testbed.guest_ip, GuestNic(MAX_GUESTS - 1).ip):  # one route for every guest
        route = subprocess.run(["ip", "-n", client.netns, "route", "get", guest_ip],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert re.search(r"rto_min (lock )?5ms", route), route


def test_nfs_export_is_served_to_the_hypervisor_hosts(testbed: Testbed) -> None:
    disk = testbed.export_dir / "probe.qcow2"
    try:
        url = testbed.nfs_url(disk)
        for role in ("source", "destination"):
            ns = testbed.hosts[role].netns
            if role == "source":
                create = ["qemu-img", "create", "-q", "-f", "qcow2", url, "16M"]
                subprocess.run(["ip", "netns", "exec", ns, *create], check=True)
            info = subprocess.run(
                ["ip", "netns", "exec", ns, "qemu-img", "info", "--output=json", url],
                capture_output=True,
                text=True,
                check=True,
            )
            assert json.loads(info.stdout)["virtual-size"] == 16 * 1024 * 1024
        assert disk.exists()
    finally:
        disk.unlink(missing_ok=True)


def test_netns_calls_run_inside_the_namespace(testbed: Testbed) -> None:
    client_ip = testbed.hosts["client"].ip

    def can_bind() -> bool:
        with socket.socket() as sock:
            try:
                sock.bind((client_ip, 0))
            except OSError:
                return False
            return True

    assert call_in_netns(testbed.hosts["client"].netns, can_bind) is True
    assert can_bind() is False


def test_down_after_sigkill_removes_everything() -> None:
    name = "vmigk"
    Testbed(name).down()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmigrate", "testbed", "up", "--testbed", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = Testbed(name).state
    deadline = time.monotonic() + 60
    # Kill it mid-way: once the NFS server's processes are recorded, before it reports success.
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r.kind == "process" for r in state.resources()) if state.path.exists() else False:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pids = processes_in(name)
    assert leftovers(name), "the killed run should have left pieces behind for down to remove"
    done = vmigrate("testbed", "down", "--testbed", name)
    assert done.returncode == 0, done.stderr
    assert leftovers(name, pids) == []
    assert not Testbed(name).dir.exists()


def test_status_of_a_missing_testbed_says_down() -> None:
    done = vmigrate("testbed", "status", "--testbed", "vmignone", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["up"] is False


def test_ctrl_c_during_migration_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT while migrating: the run rolls back, tears down its testbed, exits 130."""
    name = "vmigi"
    Testbed(name).down()
    scenario = tmp_path / "slow.toml"
    scenario.write_text(
        "[vm]\naccel = 'tcg'\n[phases]\nwarmup_s = 0\nbaseline_s = 0\nafter_s = 0\n"
        # Twice the link's rate: pre-copy never ends by itself (a lower rate would also slow
        # the guest's NFS disk, and every check of it before the migration)
        "[network]\nbandwidth_mbit = 200\n"
        "[workload]\nkind = 'memory'\nworking_set_mib = 64\ndirty_rate_mib_s = 50\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmigrate",
            "run",
            str(scenario),
            "--testbed",
            name,
            "--out",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as in a terminal: a suite started in the background has SIGINT ignored, and
        # the child would inherit that (then nothing would interrupt it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    state = Testbed(name).state
    deadline = time.monotonic() + 120
    pids: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        qemus = (
            [r for r in state.resources() if r.name.startswith("qemu")]
            if state.path.exists()
            else []
        )
        if len(qemus) == 2:  # the destination is up: the migration is starting
            time.sleep(1.0)
            pids = processes_in(name)
            break
        time.sleep(0.05)
    assert pids, "the run never reached the migration"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert leftovers(name, pids) == []
