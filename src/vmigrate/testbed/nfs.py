"""The storage host's NFS server: rpcbind + nfs-ganesha (VFS FSAL) inside one network namespace.

There is no kernel NFS server on the machines we target, so the shared storage for a migration is
served by userspace nfs-ganesha. Both daemons run inside the storage host's network namespace and
inside one private mount namespace of their own with a tmpfs on /run: their sockets, lock and pid
files (/run/rpcbind.sock, /run/ganesha, ...) live there, so the machine's own /run and any rpcbind
it runs are never touched. Every process started is returned (and written to work_dir/pids) so a
later process can stop them by PID, even after the starter was killed.

Process tree (``ip netns exec`` and ``unshare`` exec, so they add no process):

    sh (wrapper, reaps both daemons)  ── rpcbind -f
                                      └─ ganesha.nfsd -F
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vmigrate.errors import CommandFailed, TestbedError
from vmigrate.pids import is_same_process, process_start_ticks
from vmigrate.proc import in_netns, run
from vmigrate.testbed.nfs_config import find_plugins_dir, write_config
from vmigrate.testbed.nfs_log import LOG_FILE, WRAPPER_LOG_FILE, diagnostics, fatal_log_lines

#: How long start_nfs_server waits for the server to answer before giving up.
START_TIMEOUT_S = 30.0
#: Poll interval while waiting for the server to come up or for processes to exit.
POLL_INTERVAL_S = 0.1
#: The wrapper script's file name in work_dir; its presence in argv recognises it by PID later.
WRAPPER_NAME = "vmigrate-nfs-wrapper.sh"

PIDS_FILE = "pids"

# Runs as `sh WORK_DIR/vmigrate-nfs-wrapper.sh WORK_DIR GANESHA RPCBIND CONFIG LOG PIDFILE`
# inside the target netns and a fresh private mount namespace. It mounts a tmpfs on /run (mount -n:
# libmount must not create /run/mount/utab in the shared, not yet covered /run), starts rpcbind,
# waits for its socket, starts ganesha, appends every PID to work_dir/pids and then reaps both
# daemons; SIGTERM/SIGINT/SIGHUP to the wrapper are forwarded to them.
WRAPPER_SCRIPT = r"""# vmigrate NFS wrapper (written by vmigrate.testbed.nfs; see there).
set -u
work=$1 ganesha=$2 rpcbind=$3 conf=$4 log=$5 pidfile=$6
r= g= stopping=
echo $$ >> "$work/pids"
trap 'stopping=1; kill -TERM $g $r 2>/dev/null' TERM INT HUP
mount -n -t tmpfs -o mode=0755,size=16m vmigrate-nfs-run /run || exit 90
mkdir -p /run/rpcbind /run/ganesha || exit 91
# Debian's rpcbind drops to user _rpc and keeps its warm-start files in /run/rpcbind.
chown _rpc /run/rpcbind 2>/dev/null || true
"$rpcbind" -f &
r=$!
echo $r >> "$work/pids"
i=0
while [ ! -S /run/rpcbind.sock ]; do
    i=$((i + 1))
    if [ $i -gt 200 ] || ! kill -0 $r 2>/dev/null; then
        echo "rpcbind did not create /run/rpcbind.sock" >&2
        kill -TERM $r 2>/dev/null
        wait
        exit 92
    fi
    sleep 0.05
done
if [ -n "$stopping" ]; then
    wait
    exit 93
fi
"$ganesha" -F -f "$conf" -L "$log" -N NIV_EVENT -p "$pidfile" &
g=$!
echo $g >> "$work/pids"
# A signal that came between starting ganesha and setting $g found no $g to forward to.
[ -z "$stopping" ] || kill -TERM $g $r 2>/dev/null
# `wait` returns >128 when a trapped signal interrupts it and 0 once every child has exited.
while :; do
    wait
    [ $? -gt 128 ] || break
done
"""


@dataclass(frozen=True)
class NfsServer:
    """A running NFS server: the PIDs to stop it by, and where it serves what."""

    pids: list[int]
    address: str
    export_dir: Path
    work_dir: Path
    #: /proc/PID/stat start time (clock ticks since boot) of each PID, to survive PID reuse.
    start_ticks: dict[int, int] = field(default_factory=dict)

    def url_for(self, path: Path) -> str:
        """The nfs:// URL under which QEMU reaches `path` (absolute, inside export_dir)."""
        path = Path(os.path.abspath(path))
        if path != self.export_dir and self.export_dir not in path.parents:
            raise TestbedError(f"{path} is not inside the NFS export {self.export_dir}")
        host = self.address
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
        return f"nfs://{host}{path}"

    @property
    def log_path(self) -> Path:
        """ganesha's log file."""
        return self.work_dir / LOG_FILE


# ---------------------------------------------------------------------------------------------
# Preflight


def _require_binary(name: str, package: str) -> str:
    """The absolute path of `name`, or TestbedError naming the package to install."""
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (p := Path(d, name)).exists()),
        None,
    )
    if found is None:
        raise TestbedError(f"{name} is not installed: apt-get install {package}")
    return found


class _FileHandleHeader(ctypes.Structure):
    """struct file_handle without its payload: enough to ask for the handle's size."""

    _fields_ = (("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int))


def _check_file_handles(directory: Path) -> None:
    """Fail early when `directory`'s filesystem cannot give file handles (ganesha's VFS needs them).

    overlayfs without nfs_export=on is the usual culprit; ganesha would start but refuse to
    export with a CRIT in its log. name_to_handle_at with a zero-size buffer answers EOVERFLOW
    when handles are supported and EOPNOTSUPP when not.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    header = _FileHandleHeader(0, 0)
    mount_id = ctypes.c_int(0)
    at_fdcwd = -100
    rc: int = libc.name_to_handle_at(
        at_fdcwd, os.fsencode(directory), ctypes.byref(header), ctypes.byref(mount_id), 0
    )
    if rc == -1 and ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOTSUP):
        raise TestbedError(
            f"the filesystem of {directory} does not support file handles, which nfs-ganesha's "
            "VFS FSAL needs (overlayfs?): put the export directory on ext4, xfs, btrfs or tmpfs"
        )


def _preflight(netns: str, export_dir: Path, address: str) -> tuple[dict[str, str], Path]:
    """Check everything that can be checked before starting; return binaries and plugins dir."""
    if os.geteuid() != 0:
        raise TestbedError("the NFS server needs root (namespaces, mounts): run as root")
    binaries = {
        "ganesha": _require_binary("ganesha.nfsd", "nfs-ganesha"),
        "rpcbind": _require_binary("rpcbind", "rpcbind"),
        "rpcinfo": _require_binary("rpcinfo", "rpcbind"),
        "unshare": _require_binary("unshare", "util-linux"),
        "ip": _require_binary("ip", "iproute2"),
    }
    plugins_dir = find_plugins_dir()
    if not Path("/run/netns", netns).exists():
        raise TestbedError(f"network namespace {netns!r} does not exist: create it first")
    try:
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise TestbedError(f"NFS server address {address!r} is not an IP address") from exc
    if not export_dir.is_absolute():
        raise TestbedError(f"NFS export dir {export_dir} must be an absolute path")
    if not export_dir.is_dir():
        raise TestbedError(f"NFS export dir {export_dir} does not exist: create it first")
    _check_file_handles(export_dir)
    # rpcbind and ganesha talk over loopback inside the namespace; harmless if already up.
    try:
        run(["ip", "-n", netns, "link", "set", "lo", "up"], timeout_s=10)
        addrs = run(["ip", "-n", netns, "-o", "addr", "show"], timeout_s=10).stdout
    except CommandFailed as exc:
        raise TestbedError(f"cannot use network namespace {netns!r}: {exc}") from exc
    if not any(f" {address}/" in line for line in addrs.splitlines()):
        raise TestbedError(
            f"address {address} is not configured in network namespace {netns!r}: "
            "assign it to an interface there before starting the NFS server"
        )
    return binaries, plugins_dir


# ---------------------------------------------------------------------------------------------
# Process identity (PID reuse safety)


def _cmdline(pid: int) -> list[str]:
    """The process's argv ([] if gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0") if a]


def _role(pid: int) -> str | None:
    """'ganesha', 'rpcbind' or 'wrapper' if `pid` is a process this module starts, else None."""
    argv = _cmdline(pid)
    if not argv:
        return None
    name = os.path.basename(argv[0])
    if name == "ganesha.nfsd":
        return "ganesha"
    if name == "rpcbind":
        return "rpcbind"
    if any(os.path.basename(a) == WRAPPER_NAME for a in argv[1:2]):
        return "wrapper"
    return None


# Popen objects of wrappers started by this process, so that stop_nfs_server can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int, ticks: int | None) -> bool:
    """True if `pid` still runs (not a zombie) and, when `ticks` is known, is the same process."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    return is_same_process(pid, ticks)


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send `sig`, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: dict[int, int | None], timeout_s: float) -> dict[int, int | None]:
    """Wait until the processes are gone; return those still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    left = dict(pids)
    while left:
        left = {p: t for p, t in left.items() if _alive(p, t)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    return left


def read_pids(work_dir: Path) -> list[int]:
    """The PIDs recorded in work_dir/pids (for cleanup by a process other than the starter)."""
    try:
        text = (work_dir / PIDS_FILE).read_text()
    except FileNotFoundError:
        return []
    pids: list[int] = []
    for token in text.split():
        if token.isdigit() and int(token) not in pids:
            pids.append(int(token))
    return pids


# ---------------------------------------------------------------------------------------------
# Stop


def stop_nfs_server(server_or_pids: NfsServer | Iterable[int], timeout_s: float = 10.0) -> None:
    """Stop the server's processes by PID: SIGTERM, wait, SIGKILL. Idempotent.

    Only processes that still look like ours are signalled: with an NfsServer their start time
    must match; with bare PIDs (from a state file) their command must be ganesha.nfsd, rpcbind or
    our wrapper. ganesha goes first so that it can still deregister from rpcbind. Raises
    TestbedError if a process survives SIGKILL.
    """
    if isinstance(server_or_pids, NfsServer):
        known = server_or_pids.start_ticks
        targets: dict[int, int | None] = {p: known.get(p) for p in server_or_pids.pids}
    else:
        targets = {p: None for p in server_or_pids}
    ours: dict[int, int | None] = {}
    roles: dict[int, str] = {}
    for pid, ticks in targets.items():
        role = _role(pid)
        if role is not None and _alive(pid, ticks):
            ours[pid] = ticks if ticks is not None else process_start_ticks(pid)
            roles[pid] = role
        else:
            _reap(pid)
    ganesha = {p: t for p, t in ours.items() if roles[p] == "ganesha"}
    for pid in ganesha:
        _signal(pid, signal.SIGTERM)
    # ganesha's orderly shutdown takes ~2 s (it drains its worker threads).
    left = _wait_gone(ganesha, timeout_s)
    rest = {p: t for p, t in ours.items() if p not in ganesha}
    for pid in rest:
        if _alive(pid, rest[pid]):
            _signal(pid, signal.SIGTERM)
    left.update(_wait_gone(rest, min(timeout_s, 5.0)))
    for pid, ticks in left.items():
        if _alive(pid, ticks):
            _signal(pid, signal.SIGKILL)
    left = _wait_gone(left, 5.0)
    for pid in ours:
        _reap(pid)
    if left:
        raise TestbedError(
            f"NFS server processes {sorted(left)} survived SIGKILL: check `ps -o pid,stat,cmd "
            f"-p {','.join(map(str, sorted(left)))}` (stuck in D state on a dead mount?)"
        )


def _reap(pid: int) -> None:
    """Collect the exit status of a wrapper this process started, so it leaves no zombie."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=2.0)


# ---------------------------------------------------------------------------------------------
# Start


def _serving(netns: str, rpcinfo: str, address: str) -> bool:
    """True once NFSv3 and MOUNTv3 answer a NULL call over TCP at `address` (via rpcbind)."""
    for program in ("nfs", "mountd"):
        try:
            done = run(
                [rpcinfo, "-t", address, program, "3"], netns=netns, check=False, timeout_s=3.0
            )
        except subprocess.TimeoutExpired:
            return False
        if done.returncode != 0:
            return False
    return True


def start_nfs_server(netns: str, export_dir: Path, work_dir: Path, address: str) -> NfsServer:
    """Start rpcbind + ganesha in `netns` exporting `export_dir`; return once it really serves.

    The export's pseudo path is export_dir itself, so `NfsServer.url_for(export_dir / "x")` is
    `nfs://ADDRESS/EXPORT_DIR/x`. Config, log, PIDs and NFSv4 recovery state go to `work_dir`.
    Raises TestbedError (with the fix, and ganesha's log on failure); nothing is left running then.
    """
    export_dir = Path(os.path.abspath(export_dir))
    work_dir = Path(os.path.abspath(work_dir))
    binaries, plugins_dir = _preflight(netns, export_dir, address)
    conf, log = _prepare_work_dir(work_dir, export_dir, plugins_dir)
    argv = in_netns(netns, _wrapper_argv(binaries, work_dir, conf, log))
    started = time.monotonic()
    wrapper = _spawn_wrapper(argv, work_dir)
    try:
        deadline = started + START_TIMEOUT_S
        _wait_until_serving(netns, binaries["rpcinfo"], address, work_dir, wrapper, deadline)
    except TestbedError:
        raise
    except (CommandFailed, OSError) as exc:
        raise _abort_start(netns, work_dir, wrapper, str(exc)) from exc
    except BaseException:
        # KeyboardInterrupt and friends: leave nothing running, then let it propagate.
        _abort_start(netns, work_dir, wrapper, "interrupted")
        raise
    return _record_running(work_dir, export_dir, address)


def _prepare_work_dir(work_dir: Path, export_dir: Path, plugins_dir: Path) -> tuple[Path, Path]:
    """Write ganesha's config and the wrapper, clear the old log and PIDs; (config, log path)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    conf = write_config(work_dir, export_dir, plugins_dir)
    log = work_dir / LOG_FILE
    log.unlink(missing_ok=True)
    (work_dir / PIDS_FILE).write_text("")
    (work_dir / WRAPPER_NAME).write_text(WRAPPER_SCRIPT)
    return conf, log


def _wrapper_argv(binaries: dict[str, str], work_dir: Path, conf: Path, log: Path) -> list[str]:
    """The wrapper's command line, in a private mount namespace (see WRAPPER_SCRIPT)."""
    return [
        binaries["unshare"], "--mount", "--propagation", "private",
        "sh", str(work_dir / WRAPPER_NAME),
        str(work_dir), binaries["ganesha"], binaries["rpcbind"], str(conf), str(log),
        str(work_dir / "ganesha.pid"),
    ]  # fmt: skip


def _spawn_wrapper(argv: list[str], work_dir: Path) -> subprocess.Popen[bytes]:
    """Start the wrapper in its own session, logging to work_dir; remembered for reaping."""
    with (work_dir / WRAPPER_LOG_FILE).open("wb") as wrapper_log:
        # Own session: a Ctrl-C in the caller's terminal must not kill the server behind the
        # back of the orderly teardown.
        wrapper = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=wrapper_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[wrapper.pid] = wrapper
    return wrapper


def _wait_until_serving(
    netns: str,
    rpcinfo: str,
    address: str,
    work_dir: Path,
    wrapper: subprocess.Popen[bytes],
    deadline: float,
) -> None:
    """Poll until the server answers; stop everything and raise TestbedError if it cannot."""
    while True:
        if wrapper.poll() is not None:
            reason = f"its wrapper exited with status {wrapper.returncode}"
            raise _abort_start(netns, work_dir, wrapper, reason)
        pids = read_pids(work_dir)
        if len(pids) >= 3:
            dead = [p for p in pids[1:] if not _alive(p, None)]
            if dead:
                raise _abort_start(netns, work_dir, wrapper, f"process(es) {dead} exited")
            if fatal_log_lines(work_dir):
                raise _abort_start(netns, work_dir, wrapper, "ganesha reported errors")
            if _serving(netns, rpcinfo, address):
                break
        if time.monotonic() >= deadline:
            reason = f"not serving NFSv3 at {address} after {START_TIMEOUT_S:.0f} s"
            raise _abort_start(netns, work_dir, wrapper, reason)
        time.sleep(POLL_INTERVAL_S)
    if fatal_log_lines(work_dir):
        raise _abort_start(netns, work_dir, wrapper, "ganesha reported errors")


def _abort_start(
    netns: str, work_dir: Path, wrapper: subprocess.Popen[bytes], reason: str
) -> TestbedError:
    """Stop whatever was started so far; the error to raise, with ganesha's log."""
    with contextlib.suppress(TestbedError):
        stop_nfs_server([*read_pids(work_dir), wrapper.pid], timeout_s=5.0)
        if wrapper.poll() is None:  # still `ip`/`unshare`, not yet recognisable as ours
            wrapper.terminate()  # the wrapper forwards it to anything it started
            try:
                wrapper.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                wrapper.kill()
                wrapper.wait()
        stop_nfs_server(read_pids(work_dir), timeout_s=5.0)  # recorded meanwhile
    _CHILDREN.pop(wrapper.pid, None)
    return TestbedError(
        f"NFS server in netns {netns!r} failed to start: {reason}.{diagnostics(work_dir)}"
    )


def _record_running(work_dir: Path, export_dir: Path, address: str) -> NfsServer:
    """The started server; its PIDs rewritten in kill order, with their start times."""
    pids = read_pids(work_dir)
    # Kill order: ganesha, rpcbind, wrapper (the file lists wrapper, rpcbind, ganesha).
    ordered = list(reversed(pids))
    (work_dir / PIDS_FILE).write_text("".join(f"{p}\n" for p in ordered))
    ticks = {p: t for p in ordered if (t := process_start_ticks(p)) is not None}
    return NfsServer(
        pids=ordered, address=address, export_dir=export_dir, work_dir=work_dir, start_ticks=ticks
    )
