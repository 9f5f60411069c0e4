"""The storage host's NFS server (rpcbind + nfs-ganesha) serving QEMU's own NFS client.

Two throwaway namespaces joined by a veth pair: the server runs in `-st`, qemu-img / qemu-io run
in `-cl` and reach the export at nfs://10.98.0.3/<export dir>/... Everything started is torn down
by fixtures even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmigrate import errors
from vmigrate.proc import run
from vmigrate.testbed.nfs import NfsServer, read_pids, start_nfs_server, stop_nfs_server

pytestmark = pytest.mark.integration

SERVER_IP = "10.98.0.3"
CLIENT_IP = "10.98.0.4"
# What a leaked rpcbind/ganesha/libmount would create in the machine's own /run.
RUN_WATCH = ("/run/rpcbind.sock", "/run/rpcbind.lock", "/run/ganesha", "/run/mount")


def _require_environment() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, mounts)")
    for tool in ("ip", "ganesha.nfsd", "rpcbind", "rpcinfo", "qemu-img", "qemu-io", "unshare"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} is not installed")


@dataclass(frozen=True)
class Hosts:
    """The two namespaces of one test: storage (NFS server) and client (qemu-img)."""

    storage: str
    client: str


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Namespaces vmgn<pid>-st (10.98.0.3) and vmgn<pid>-cl (10.98.0.4) joined by a veth pair."""
    _require_environment()
    tag = f"vmgn{os.getpid()}"
    pair = Hosts(storage=f"{tag}-st", client=f"{tag}-cl")
    created: list[str] = []
    try:
        for ns in (pair.storage, pair.client):
            run(["ip", "netns", "add", ns])
            created.append(ns)
        # Created directly inside the namespaces: nothing ever appears in the root namespace.
        run(["ip", "link", "add", f"{tag}s", "netns", pair.storage, "type", "veth",
             "peer", "name", f"{tag}c", "netns", pair.client])  # fmt: skip
        for ns, dev, ip in (
            (pair.storage, f"{tag}s", SERVER_IP),
            (pair.client, f"{tag}c", CLIENT_IP),
        ):
            run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield pair
    finally:
        for ns in created:
            run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    path = tmp_path / "export"
    path.mkdir()
    return path


@pytest.fixture
def server(hosts: Hosts, export_dir: Path, tmp_path: Path) -> Iterator[NfsServer]:
    """A running NFS server in the storage namespace; stopped afterwards in any case."""
    work_dir = tmp_path / "nfs"
    started = time.monotonic()
    srv = start_nfs_server(hosts.storage, export_dir, work_dir, SERVER_IP)
    print(f"\nNFS server serving after {time.monotonic() - started:.3f} s")
    try:
        yield srv
    finally:
        stop_nfs_server(srv)
        stop_nfs_server(read_pids(work_dir))


def _running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    """True once no process of `pids` exists at all (zombies reaped too), within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{p}").exists() for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _run_state() -> dict[str, bool | list[str]]:
    """What of the machine's own /run a leaking server would change."""
    state: dict[str, bool | list[str]] = {p: os.path.lexists(p) for p in RUN_WATCH}
    rpcbind_dir = Path("/run/rpcbind")
    state["rpcbind dir"] = sorted(os.listdir(rpcbind_dir)) if rpcbind_dir.is_dir() else []
    return state


def test_qemu_reads_and_writes_through_nfs(hosts: Hosts, export_dir: Path, tmp_path: Path) -> None:
    run_before = _run_state()
    work_dir = tmp_path / "nfs"
    started = time.monotonic()
    srv = start_nfs_server(hosts.storage, export_dir, work_dir, SERVER_IP)
    try:
        print(f"\nNFS server serving after {time.monotonic() - started:.3f} s")
        assert read_pids(work_dir) == srv.pids
        assert len(srv.pids) == 3
        assert all(_running(p) for p in srv.pids)
        assert _run_state() == run_before, "the server touched the machine's own /run"
        rpc = run(["rpcinfo", "-p", SERVER_IP], netns=hosts.client).stdout
        assert " nfs" in rpc and " mountd" in rpc

        disk = export_dir / "disk.qcow2"
        url = srv.url_for(disk)
        assert url == f"nfs://{SERVER_IP}{disk}"
        run(["qemu-img", "create", "-f", "qcow2", url, "64M"], netns=hosts.client)
        assert disk.is_file()
        info = json.loads(
            run(["qemu-img", "info", "--output=json", url], netns=hosts.client).stdout
        )
        assert info["format"] == "qcow2"
        assert info["virtual-size"] == 64 * 1024 * 1024

        out = run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", url], netns=hosts.client
        ).stdout
        assert "wrote 1048576/1048576 bytes" in out
        # Read back locally, bypassing NFS: the bytes really landed in the export dir.
        local = run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0xab 0 1M", str(disk)])
        assert "read 1048576/1048576 bytes" in local.stdout
        assert "verification failed" not in local.stdout + local.stderr
        # And the NFS view equals the local one.
        same = run(
            ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", url, str(disk)],
            netns=hosts.client,
        )
        assert "identical" in same.stdout
    finally:
        # As a later process would: by the PIDs recorded in work_dir/pids.
        stop_nfs_server(read_pids(work_dir))
    assert not any(_running(p) for p in srv.pids)
    assert _gone(srv.pids), "zombies left behind"
    stop_nfs_server(srv)  # idempotent
    assert _run_state() == run_before


def test_failed_start_leaves_nothing_running(
    server: NfsServer, hosts: Hosts, export_dir: Path, tmp_path: Path
) -> None:
    """A second server in the same namespace cannot bind: clear error, its processes are gone."""
    work_dir = tmp_path / "second"
    with pytest.raises(errors.TestbedError) as caught:
        start_nfs_server(hosts.storage, export_dir, work_dir, SERVER_IP)
    message = str(caught.value)
    assert "already runs in this namespace" in message
    assert "ganesha.log" in message
    second = read_pids(work_dir)
    assert second, "the failed start recorded no PIDs"
    assert _gone(second)
    assert all(_running(p) for p in server.pids), "the first server was harmed"


def test_preflight_errors_name_the_fix(hosts: Hosts, tmp_path: Path) -> None:
    with pytest.raises(errors.TestbedError, match="does not exist: create it first"):
        start_nfs_server(hosts.storage, tmp_path / "missing", tmp_path / "w", SERVER_IP)
    with pytest.raises(errors.TestbedError, match="is not configured in network namespace"):
        start_nfs_server(hosts.storage, tmp_path, tmp_path / "w", "10.98.0.77")
    with pytest.raises(errors.TestbedError, match="network namespace 'vmgn-nope' does not exist"):
        start_nfs_server("vmgn-nope", tmp_path, tmp_path / "w", SERVER_IP)
    assert not (tmp_path / "w" / "pids").exists()


def test_stop_after_starter_was_killed(hosts: Hosts, export_dir: Path, tmp_path: Path) -> None:
    """A process that only has work_dir/pids can stop a server whose starter got SIGKILLed."""
    work_dir = tmp_path / "nfs"
    code = (
        "import sys, time; from pathlib import Path;"
        "from vmigrate.testbed.nfs import start_nfs_server;"
        f"start_nfs_server({hosts.storage!r}, Path({str(export_dir)!r}),"
        f" Path({str(work_dir)!r}), {SERVER_IP!r});"
        "print('ready', flush=True); time.sleep(120)"
    )
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        assert starter.stdout.readline().strip() == "ready"
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    pids = read_pids(work_dir)
    try:
        assert len(pids) == 3
        assert all(_running(p) for p in pids)
    finally:
        stop_nfs_server(pids)
    assert not any(_running(p) for p in pids)
    assert _gone(pids), "orphans not reaped"
