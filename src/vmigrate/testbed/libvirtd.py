"""libvirtd on the testbed's hypervisor hosts: one daemon per host, each in its own namespaces.

Two libvirtd side by side on one machine only migrate between each other when each believes it
is alone on its host. So every daemon runs in its host's network namespace (it listens on the
host's address; QEMU processes it starts live there too, next to the host's tap) and in a
private mount namespace of its own, where a tmpfs covers /run (its sockets and pid file) and
per-host directories are bind-mounted on /etc/libvirt, /var/lib/libvirt, /var/log/libvirt and
/var/cache/libvirt. Each has its own host UUID (libvirt refuses to migrate to "the same host"),
runs QEMU as root without security driver, cgroups or namespaces (none of them would work, or
be needed, on a testbed), and writes QEMU's output to files (no virtlogd).

Process tree (``ip netns exec``, ``unshare`` and the wrapper exec, so they add no process):

    libvirtd --listen -f WORK_DIR/etc/libvirtd.conf   (PID = the PID Popen returned)

From the root namespace a daemon is reached over its unix socket through its own root:
``qemu+unix:///system?socket=/proc/PID/root/run/libvirt/libvirt-sock``; a peer daemon (the
source, for peer-to-peer migration) reaches it over TCP at ``qemu+tcp://HOST_IP/system``.

libvirtd probes QEMU's capabilities when it starts (~8 s under TCG on 2 cores); the probe's
result is kept in a cache shared by all daemons (`cache_dir()/libvirt/qemu-capabilities`),
which libvirt re-validates itself (QEMU binary, libvirt version, kernel, host CPU), so later
daemons start in about a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from vmigrate import libvirt_client
from vmigrate.errors import EnvironmentProblem, TestbedError
from vmigrate.libvirt_client import bounded, version_string
from vmigrate.paths import cache_dir
from vmigrate.pids import is_same_process, process_start_ticks, terminate
from vmigrate.proc import in_netns
from vmigrate.testbed.libvirtd_config import (
    MIGRATE_TLS_DIR as MIGRATE_TLS_DIR,
)
from vmigrate.testbed.libvirtd_config import (
    TCP_PORT as TCP_PORT,
)
from vmigrate.testbed.libvirtd_config import (
    libvirtd_conf,
    qemu_conf,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long start_daemons waits for every daemon to answer (the first QEMU probe takes ~8 s).
START_TIMEOUT_S = 60.0
#: How long a daemon may take to answer a connection or a call during teardown.
CALL_TIMEOUT_S = 10.0
#: SIGTERM → SIGKILL grace when stopping a daemon.
STOP_GRACE_S = 10.0
#: ... one found hung (a job that will not end): it waits for that job on SIGTERM, in vain.
HUNG_STOP_GRACE_S = 1.0
POLL_INTERVAL_S = 0.1
#: Process labels in the testbed's state file: "libvirtd-source", "libvirtd-destination".
LABEL_PREFIX = "libvirtd-"

WRAPPER_NAME = "vmigrate-libvirtd-wrapper.sh"
LOG_FILE = "libvirtd.log"
#: Per-host directories (under the daemon's work dir) and where they are mounted.
BIND_MOUNTS: tuple[tuple[str, str], ...] = (
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)
#: Local disks, as seen from inside a daemon's mount namespace (the "lib" bind mount).
IMAGES_DIR = "/var/lib/libvirt/images"
#: The daemon's unix socket, as seen from inside its mount namespace.
SOCKET_PATH = "/run/libvirt/libvirt-sock"
#: Where its QEMUs find the certificates of an encrypted migration (the "etc" bind mount).

# Runs as `sh WORK_DIR/vmigrate-libvirtd-wrapper.sh WORK_DIR LIBVIRTD [ARGS...]` inside the
# host's netns and a fresh private mount namespace (mount -n: no /run/mount/utab in the shared
# /run). The mount points exist on the host (setup-host.sh; mkdir -p for safety), the mounts
# themselves only in this namespace, and die with it.
WRAPPER_SCRIPT = r"""# vmigrate libvirtd wrapper (written by vmigrate.testbed.libvirtd; see there).
set -u
work=$1 libvirtd=$2
shift 2
mount -n -t tmpfs -o mode=0755,size=64m vmigrate-libvirt-run /run || exit 90
mkdir -p /run/libvirt /run/lock || exit 90
for pair in etc:/etc/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt; do
    src=$work/${pair%%:*} dst=${pair#*:}
    if ! mkdir -p "$dst" || ! mount -n --bind "$src" "$dst"; then
        echo "vmigrate: cannot bind-mount $src on $dst" >&2
        exit 91
    fi
done
exec "$libvirtd" "$@" -f "$work/etc/libvirtd.conf"
"""


def root_of(pid: int) -> Path:
    """The daemon's view of the filesystem (its mount namespace), from the root namespace."""
    return Path(f"/proc/{pid}/root")


def unix_uri(pid: int) -> str:
    """The URI through which the root namespace reaches the daemon `pid` (its unix socket)."""
    return f"qemu+unix:///system?socket={root_of(pid)}{SOCKET_PATH}"


def tcp_uri(address: str) -> str:
    """The URI through which a peer daemon (in the testbed) reaches the daemon at `address`."""
    return f"qemu+tcp://{address}/system"


def migration_uri(address: str) -> str:
    """Where QEMU on the host at `address` listens for an incoming migration stream."""
    return f"tcp://{address}"


# ---------------------------------------------------------------------------------------------
# libvirt-python, bounded


def open_connection(uri: str, timeout_s: float = CALL_TIMEOUT_S) -> Any:
    """A libvirt connection to `uri` (raises libvirt.libvirtError or TimeoutError)."""
    libvirt = libvirt_client.load()
    return bounded(lambda: libvirt.open(uri), timeout_s, f"connect to {uri}")


def capabilities_uuid(conn: Any) -> str:
    """The host UUID a connection's daemon reports."""
    text = conn.getCapabilities()
    return str(ET.fromstring(text).findtext("host/uuid") or "")


# ---------------------------------------------------------------------------------------------
# Start


@dataclass(frozen=True)
class DaemonSpec:
    """What to start: where (netns; None = a fresh, empty one), listening on `address`."""

    label: str
    work_dir: Path
    netns: str | None
    address: str | None
    host_uuid: str

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_FILE


@dataclass(frozen=True)
class Daemon:
    """A started libvirtd: its PID (and start time, to survive PID reuse)."""

    spec: DaemonSpec
    pid: int
    start_ticks: int | None

    @property
    def uri(self) -> str:
        return unix_uri(self.pid)

    def alive(self) -> bool:
        return is_same_process(self.pid, self.start_ticks)


# Popen objects of daemons started by this process, reaped when they are stopped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def libvirtd_binary(search: tuple[str, ...] = ("/usr/sbin", "/sbin")) -> str:
    """The absolute path of libvirtd (on PATH or in `search`).

    :raise EnvironmentProblem: not installed (bad input: exit 2), naming the package."""
    found = shutil.which("libvirtd") or next(
        (str(p) for d in search if (p := Path(d, "libvirtd")).exists()), None
    )
    if found is None:
        raise EnvironmentProblem(
            "libvirtd is not installed: run `make setup` (apt-get install libvirt-daemon "
            "libvirt-daemon-driver-qemu, from bookworm-backports on Debian 12)"
        )
    return found


def capabilities_cache() -> Path:
    """QEMU capabilities probed by any testbed daemon, reused by the next (libvirt re-validates)."""
    return cache_dir() / "libvirt" / "qemu-capabilities"


def _own_capabilities(work_dir: Path) -> Path:
    return work_dir / "cache" / "qemu" / "capabilities"


def _copy_xml(src: Path, dst: Path) -> None:
    """Copy every *.xml of `src` into `dst` (atomically per file); never raises."""
    try:
        dst.mkdir(parents=True, exist_ok=True)
        for item in src.glob("*.xml"):
            target = dst / item.name
            with contextlib.suppress(OSError):
                if target.exists() and target.read_bytes() == item.read_bytes():
                    continue
            tmp = dst / f".{item.name}.{os.getpid()}.tmp"
            shutil.copyfile(item, tmp)
            os.replace(tmp, target)
    except OSError as exc:
        log.debug("capabilities cache %s -> %s: %s", src, dst, exc)


def prepare(spec: DaemonSpec) -> None:
    """Write the daemon's directories, config files and wrapper (seeding its QEMU cache)."""
    for sub, _ in BIND_MOUNTS:
        (spec.work_dir / sub).mkdir(parents=True, exist_ok=True)
    (spec.work_dir / "log" / "qemu").mkdir(parents=True, exist_ok=True)
    # libvirtd refuses to start when migrate_tls_x509_cert_dir does not exist.
    (spec.work_dir / "etc" / MIGRATE_TLS_DIR).mkdir(parents=True, exist_ok=True)
    (spec.work_dir / "etc" / "libvirtd.conf").write_text(
        libvirtd_conf(spec.address, spec.host_uuid)
    )
    (spec.work_dir / "etc" / "qemu.conf").write_text(qemu_conf(spec.address))
    (spec.work_dir / WRAPPER_NAME).write_text(WRAPPER_SCRIPT)
    _copy_xml(capabilities_cache(), _own_capabilities(spec.work_dir))


def launch(spec: DaemonSpec) -> Daemon:
    """Start the daemon (not waiting for it to answer); the caller records its PID at once."""
    libvirtd = libvirtd_binary()
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    if spec.netns is not None and not Path("/run/netns", spec.netns).exists():
        raise TestbedError(f"network namespace {spec.netns!r} does not exist: create it first")
    prepare(spec)
    namespaces = ["--mount"] if spec.netns is not None else ["--mount", "--net"]
    argv = in_netns(
        spec.netns,
        [
            unshare, *namespaces, "--propagation", "private",
            "sh", str(spec.work_dir / WRAPPER_NAME), str(spec.work_dir), libvirtd,
            *(["--listen"] if spec.address is not None else []),
        ],
    )  # fmt: skip
    with spec.log_path.open("ab") as out:
        # Own session: a Ctrl-C in the caller's terminal must not kill the daemon behind the
        # back of the orderly teardown (which first destroys its domains).
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[child.pid] = child
    return Daemon(spec, child.pid, process_start_ticks(child.pid))


# Log lines every testbed daemon writes, harmless: no SMBIOS here (dmidecode cannot read
# /dev/mem), and the security driver "none" we ask for.
_EXPECTED = re.compile(r"dmidecode|/dev/mem|security driver \"none\"|^\s*$")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    text = [line for line in text if not _EXPECTED.search(line)][-lines:]
    return "\n  ".join(text) if text else "(empty)"


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def is_isolated_daemon(pid: int) -> bool:
    """True when `pid` is a libvirtd in a mount namespace other than ours (one of the testbed's).

    Guards teardown: through /proc/PID/root, a libvirtd sharing our mounts would be the
    machine's own daemon, whose domains are none of our business.
    """
    if os.path.basename(_exe(pid)) != "libvirtd":
        return False
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return False


def wait_ready(daemon: Daemon, deadline: float) -> float:
    """Wait until `daemon` answers on its unix socket as itself; seconds waited.

    Before the exec chain reaches libvirtd the PID is still `ip`/`unshare`/`sh`, whose root
    is the machine's own: only a PID that is libvirtd is asked, and the answer must carry
    the daemon's own host UUID (not that of a libvirtd the machine itself may run).
    """
    started = time.monotonic()
    spec = daemon.spec
    last_error = "no answer yet"
    while True:
        child = _CHILDREN.get(daemon.pid)
        exited = child is not None and child.poll() is not None
        if exited or not daemon.alive():
            if child is not None and not exited:  # it ended between poll() and alive(): reap it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=1.0)
            status = child.returncode if child is not None else None
            raise _failure(
                daemon, "it exited" + (f" with status {status}" if status is not None else "")
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(daemon, f"no answer after {deadline - started:.0f} s ({last_error})")
        if os.path.basename(_exe(daemon.pid)) == "libvirtd":
            try:
                conn = open_connection(daemon.uri, remaining)
                try:
                    found = bounded(partial(capabilities_uuid, conn), remaining, "capabilities")
                finally:
                    with contextlib.suppress(Exception):
                        conn.close()
                if found == spec.host_uuid:
                    _copy_xml(_own_capabilities(spec.work_dir), capabilities_cache())
                    return time.monotonic() - started
                last_error = f"the socket answers with host UUID {found!r}, not ours"
            except TimeoutError as exc:
                last_error = str(exc)
            except Exception as exc:  # libvirt.libvirtError: socket not there yet
                last_error = str(exc).strip() or type(exc).__name__
        time.sleep(POLL_INTERVAL_S)


def _failure(daemon: Daemon, reason: str) -> TestbedError:
    where = f"in netns {daemon.spec.netns!r}" if daemon.spec.netns else "in a private netns"
    return TestbedError(
        f"libvirtd ({daemon.spec.label}) {where} failed to start: {reason}. "
        f"Last lines of {daemon.spec.log_path}:\n  {_tail(daemon.spec.log_path)}"
    )


def start_daemons(
    specs: Iterable[DaemonSpec],
    record: Callable[[Daemon], None],
    timeout_s: float = START_TIMEOUT_S,
) -> list[Daemon]:
    """Start every daemon at once, `record` each right away, return once all of them answer.

    On failure (or Ctrl-C) every daemon started here is stopped before the error propagates;
    records made meanwhile stay for the caller to forget (they name dead processes).
    """
    daemons: list[Daemon] = []
    deadline = time.monotonic() + timeout_s

    def start(group: list[DaemonSpec]) -> None:
        started = []
        for spec in group:
            daemon = launch(spec)
            daemons.append(daemon)
            started.append(daemon)
            record(daemon)
        for daemon in started:
            waited = wait_ready(daemon, deadline)
            log.info("libvirtd %s (pid %d) answered after %.1f s", daemon.spec.label,
                     daemon.pid, waited)  # fmt: skip

    pending = list(specs)
    try:
        if pending and not any(capabilities_cache().glob("*.xml")):
            # Nothing cached: one daemon probes QEMU (~8 s) while the others would only compete
            # for the same cores doing the same; they start from its cache instead.
            start(pending[:1])
            pending = pending[1:]
        start(pending)
    except BaseException:
        for daemon in daemons:
            stop(daemon.pid, daemon.start_ticks, grace_s=5.0)
        raise
    return daemons


# ---------------------------------------------------------------------------------------------
# Stop


def stop(pid: int, start_ticks: int | None, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the daemon, SIGKILL it after `grace_s`; reap it if this process started it."""
    terminate(pid, start_ticks, grace_s=grace_s)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=2.0)


def release(pid: int) -> None:
    """Forget (and reap) a daemon this process started, once someone else stopped it."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=2.0)


# ---------------------------------------------------------------------------------------------
# Versions and the doctor's probe


def library_version() -> str:
    """The libvirt library's version as libvirt-python sees it."""
    libvirt = libvirt_client.load()
    return version_string(int(libvirt.getVersion()))


def daemon_version() -> str:
    """`libvirtd --version`'s number ("11.3.0")."""
    done = subprocess.run(
        [libvirtd_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    words = done.stdout.split()
    return words[-1] if done.returncode == 0 and words else "unknown"


def probe(timeout_s: float = 45.0) -> str:
    """Start a throwaway libvirtd (private mount and network namespaces), ask it, stop it.

    Returns what it said (its version, the QEMU its driver found, the start time); raises
    TestbedError with its log when it does not start. Nothing is left behind.
    """
    with tempfile.TemporaryDirectory(prefix="vmigrate-libvirtd-probe-") as tmp:
        spec = DaemonSpec(
            label="probe",
            work_dir=Path(tmp),
            netns=None,
            address=None,
            host_uuid=str(uuid.uuid4()),
        )
        started = time.monotonic()
        daemon = launch(spec)
        try:
            wait_ready(daemon, started + timeout_s)
            conn = open_connection(daemon.uri, 10.0)
            try:
                daemon_lib = version_string(int(bounded(conn.getLibVersion, 10.0, "version")))
                hypervisor = version_string(int(bounded(conn.getVersion, 10.0, "qemu version")))
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
            took = time.monotonic() - started
        finally:
            stop(daemon.pid, daemon.start_ticks, grace_s=5.0)
    return f"libvirtd {daemon_lib} started in {took:.1f} s; its QEMU driver found QEMU {hypervisor}"
