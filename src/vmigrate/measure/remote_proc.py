"""Host resources over ssh: the /proc sampler of resources.py for a host vmigrate reaches only
by logging in (your own hosts with `hosts.ssh = true`).

One long-lived `ssh` per host runs a small POSIX sh + awk loop there (no Python assumed on the
host) that prints, every interval, one framed snapshot of the raw /proc texts: each process's
stat, statm and io lines, the task stats of QEMU processes, and /proc/net/dev. Here the stream
is parsed, each snapshot stamped on time.monotonic_ns() when its end line arrives, and turned
into `processes`, `threads` and `links` rows by the very functions ResourceSampler uses — so
the analysis bills a real host exactly like a testbed host.

The uplink is the interface of the host's route to its peer (`ip route get PEER`, once at the
start): the interface that carries the migration stream (for a bridged NIC, the bridge, which
counts the host's own traffic). A host whose sshd sets VMIGRATE_HOST_SCOPE=netns (sshd_config
`SetEnv`) is a network namespace, like a testbed host: only the processes of the sshd's network
namespace are its processes. Otherwise every process of the machine is.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, NoReturn

from vmigrate.errors import UsageError
from vmigrate.measure.recorder import Recorder, Row, SeriesWriter
from vmigrate.measure.resources import (
    LINK_COLUMNS,
    PROCESS_COLUMNS,
    THREAD_COLUMNS,
    parse_net_dev,
    process_row,
    thread_row,
)
from vmigrate.measure.ssh import CONNECT_TIMEOUT_S, SshTarget, ssh_argv, ssh_target

log = logging.getLogger(__name__)

MARK = "@@vmigrate"
SAMPLER_NAME = "vmigrate-proc-sampler"  # $0 of the remote loop: how `ps` on the host shows it
LOGIN_TIMEOUT_S = CONNECT_TIMEOUT_S + 20
STOP_TIMEOUT_S = 5.0

# One snapshot. grep reads the /proc files (a process gone meanwhile, or an io file that needs
# more privilege, is skipped: mawk's getline would die on such a read error) and prefixes each
# line with its path; awk keeps the host's processes, tags the lines for the parser and lists
# the threads of QEMU processes. No single quotes in here.
SNAPSHOT_AWK = r"""
BEGIN {
    if (scope == "netns") {
        cmd = "ls -l /proc/[0-9]*/ns/net 2>/dev/null"
        while ((cmd | getline line) > 0) {
            n = split(line, f, " "); p = f[n - 2]
            sub(/^\/proc\//, "", p); sub(/\/ns\/net$/, "", p); ns[p] = f[n]
        }
        close(cmd)
    }
}
{
    c = index($0, ":"); split(substr($0, 1, c - 1), path, "/"); text = substr($0, c + 1)
    pid = path[3]; kind = path[4]
    if (scope == "netns" && ns[pid] != own) next
    if (kind == "stat") {
        print "S " pid " " text
        if (text ~ /^[0-9]+ \(qemu-system/) qemu[pid] = 1
    } else if (kind == "statm") print "M " pid " " text
    else if (kind == "io") print "I " pid " " text
}
END {
    for (pid in qemu) {
        cmd = "grep -s -h ^ /proc/" pid "/task/[0-9]*/stat"
        while ((cmd | getline line) > 0) print "T " pid " " line
        close(cmd)
    }
    while ((getline line < "/proc/net/dev") > 0) print "N " line
    close("/proc/net/dev")
}
"""

# $1 interval in seconds, $2 the peer host (address or name). The loop ends by SIGPIPE at the
# first write after the ssh connection is gone.
REMOTE_SCRIPT = f"""
interval=$1 peer=$2
PATH=$PATH:/usr/sbin:/sbin
command -v awk >/dev/null 2>&1 || {{ echo "{SAMPLER_NAME}: no awk on this host" >&2; exit 3; }}
[ -r /proc/net/dev ] || {{ echo "{SAMPLER_NAME}: no /proc/net/dev on this host" >&2; exit 3; }}
prog='{SNAPSHOT_AWK}'
scope=${{VMIGRATE_HOST_SCOPE:-all}} own=
[ "$scope" = netns ] && own=$(readlink /proc/self/ns/net)
route() {{
    ip -o route get "$1" 2>/dev/null |
        awk '{{for (i = 1; i < NF; i++) if ($i == "dev") {{print $(i + 1); exit}}}}'
}}
uplink=$(route "$peer")
if [ -z "$uplink" ]; then
    addr=$(getent ahosts "$peer" 2>/dev/null | awk 'NR == 1 {{print $1}}')
    [ -n "$addr" ] && uplink=$(route "$addr")
fi
clk=$(getconf CLK_TCK 2>/dev/null || echo 100)
page=$(getconf PAGESIZE 2>/dev/null || echo 4096)
name=$(cat /proc/sys/kernel/hostname 2>/dev/null)
echo "{MARK} hello clk_tck=$clk page_size=$page uplink=$uplink scope=$scope host=$name"
n=0
while :; do
    n=$((n + 1))
    echo "{MARK} begin $n"
    {{ grep -s -H ^ /proc/[0-9]*/stat /proc/[0-9]*/statm
       grep -s -H -E "^(read|write)_bytes: " /proc/[0-9]*/io; }} |
        awk -v scope="$scope" -v own="$own" "$prog"
    echo "{MARK} end $n"
    sleep "$interval" 2>/dev/null || sleep 1
done
"""


def remote_command(interval_s: float, peer: str) -> str:
    """The command line ssh runs on the host (through the login shell, hence one string)."""
    args = [REMOTE_SCRIPT, SAMPLER_NAME, f"{interval_s:g}", peer]
    return "exec sh -c " + " ".join(shlex.quote(arg) for arg in args)


@dataclass
class Snapshot:
    """The raw /proc texts of one snapshot: by pid, stat / statm / io lines; QEMU task stats
    as (pid, stat); the lines of /proc/net/dev."""

    stat: dict[int, str] = field(default_factory=dict)
    statm: dict[int, str] = field(default_factory=dict)
    io: dict[int, list[str]] = field(default_factory=dict)
    tasks: list[tuple[int, str]] = field(default_factory=list)
    net_dev: list[str] = field(default_factory=list)
    malformed: int = 0


class StreamParser:
    """Turns the remote loop's output, line by line, into its hello fields and snapshots."""

    def __init__(self) -> None:
        self.hello: dict[str, str] | None = None
        self._current: Snapshot | None = None

    def feed(self, line: str) -> Snapshot | None:
        """Take one line (without its newline); a complete snapshot when it ends one."""
        if line.startswith(MARK + " "):
            words = line.split()
            if words[1] == "hello":
                self.hello = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            elif words[1] == "begin":
                self._current = Snapshot()
            elif words[1] == "end" and self._current is not None:
                done, self._current = self._current, None
                return done
            return None
        snap = self._current
        if snap is None:  # outside a frame (a login banner, a shell's chatter)
            return None
        kind, _, rest = line.partition(" ")
        if kind == "N":
            snap.net_dev.append(rest)
            return None
        pid_text, _, text = rest.partition(" ")
        if kind not in ("S", "M", "I", "T") or not pid_text.isdigit() or not text:
            snap.malformed += 1
            return None
        pid = int(pid_text)
        if kind == "S":
            snap.stat[pid] = text
        elif kind == "M":
            snap.statm[pid] = text
        elif kind == "I":
            snap.io.setdefault(pid, []).append(text)
        else:
            snap.tasks.append((pid, text))
        return None


@dataclass(frozen=True)
class Rows:
    """One snapshot as rows of the `processes`, `threads` and `links` series."""

    processes: list[Row]
    threads: list[Row]
    link: Row | None
    malformed: int


def snapshot_rows(
    snap: Snapshot, t_ns: int, role: str, uplink: str, clk_tck: int, page_size: int
) -> Rows:
    """The rows of one snapshot of host `role`, all stamped `t_ns`."""
    processes: list[Row] = []
    threads: list[Row] = []
    malformed = snap.malformed
    for pid, stat in snap.stat.items():
        texts = (stat, snap.statm.get(pid, ""), "\n".join(snap.io.get(pid, [])))
        try:
            processes.append(process_row(t_ns, role, pid, texts, clk_tck, page_size))
        except (ValueError, IndexError):
            malformed += 1
    for pid, stat in snap.tasks:
        try:
            threads.append(thread_row(t_ns, role, pid, stat, clk_tck))
        except (ValueError, IndexError):
            malformed += 1
    counters = parse_net_dev("\n".join(snap.net_dev), uplink) if uplink else None
    link = (t_ns, role, *counters) if counters is not None else None
    return Rows(processes, threads, link, malformed)


class RemoteProcSampler:
    """Samples one host's /proc over ssh in a background thread: launch(), wait_ready(),
    begin(), ..., stop(). `start_remote_samplers` does the first three for several hosts."""

    def __init__(
        self, role: str, uri: str, peer: str, recorder: Recorder, interval_s: float
    ) -> None:
        self.role = role
        self.target: SshTarget = ssh_target(uri)
        self.peer = peer
        self.recorder = recorder
        self.interval_s = interval_s
        self.hello: dict[str, str] = {}
        self.snapshots = 0
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()  # the hello line arrived
        self._ended = threading.Event()  # the stream ended (ssh exited)
        self._go = threading.Event()  # the series exist: write snapshots
        self._stopping = threading.Event()
        self._series: tuple[SeriesWriter, SeriesWriter, SeriesWriter] | None = None

    @property
    def uplink(self) -> str:
        return self.hello.get("uplink", "")

    def launch(self) -> None:
        """Start the ssh (logging in goes on in the background)."""
        argv = ssh_argv(self.target, remote_command(self.interval_s, self.peer))
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            errors="replace",
        )
        log.info("%s: sampling /proc over ssh, pid %d: %s", self.role, self._proc.pid, argv)
        self._thread = threading.Thread(
            target=self._read, name=f"remote-proc-{self.role}", daemon=True
        )
        self._thread.start()

    def wait_ready(self, deadline: float) -> None:
        """Wait (until time.monotonic() `deadline`) for the host's hello line.

        :raise UsageError: ssh could not log in, or the host could not run the sampler."""
        while not self._ready.is_set() and not self._ended.is_set():
            if time.monotonic() > deadline:
                self._fail(f"no answer within {LOGIN_TIMEOUT_S} s")
            self._ready.wait(0.05)
        if not self._ready.is_set():
            self._fail(self._stderr_tail() or "ssh exited without a word")
        if not self.uplink:
            log.warning(
                "%s: no route from %s to the peer %s: its NIC counters are not sampled",
                self.role, self.target.host, self.peer,
            )  # fmt: skip

    def _fail(self, reason: str) -> NoReturn:
        raise UsageError(
            f"hosts.ssh: cannot sample the {self.role}'s /proc over ssh as "
            f"{self.target.display}: {reason} (ssh must log in there without a prompt: a key, "
            "e.g. the URI's keyfile=..., and a known host key or no_verify=1; or set "
            "hosts.ssh = false)"
        )

    def begin(self) -> None:
        """Create the series and let the reader write snapshots into them."""
        self._series = (
            self.recorder.series("processes", PROCESS_COLUMNS),
            self.recorder.series("threads", THREAD_COLUMNS),
            self.recorder.series("links", LINK_COLUMNS),
        )
        self._go.set()

    def stop(self) -> None:
        """Kill the ssh (by its PID), reap it, end the reader, flush the series."""
        self._stopping.set()
        self._go.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s: ssh (pid %d) ignored SIGTERM; killing it", self.role, proc.pid)
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        for writer in self._series or ():
            writer.flush()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""

    def _read(self) -> None:
        """The reader thread: parse the stream until it ends."""
        assert self._proc is not None and self._proc.stdout is not None
        parser = StreamParser()
        try:
            for line in self._proc.stdout:
                snap = parser.feed(line.rstrip("\n"))
                if parser.hello is not None and not self._ready.is_set():
                    self.hello = parser.hello
                    self._ready.set()
                    self._go.wait()
                if snap is not None and not self._stopping.is_set():
                    self._write(snap, time.monotonic_ns())
        except (OSError, ValueError) as exc:  # the pipe closed under us by stop()
            if not self._stopping.is_set():
                log.warning("%s: reading the /proc stream: %s", self.role, exc)
        finally:
            self._ended.set()
        if not self._stopping.is_set() and self._ready.is_set():
            code = self._proc.wait()
            log.warning(
                "%s: the /proc sampler over ssh ended (exit %s: %s) after %d snapshots; the "
                "other hosts are still sampled",
                self.role, code, self._stderr_tail() or "no message", self.snapshots,
            )  # fmt: skip

    def _write(self, snap: Snapshot, t_ns: int) -> None:
        if self._series is None:
            return
        processes, threads, links = self._series
        clk_tck = int(self.hello.get("clk_tck") or 100)
        page_size = int(self.hello.get("page_size") or 4096)
        rows = snapshot_rows(snap, t_ns, self.role, self.uplink, clk_tck, page_size)
        for row in rows.processes:
            processes.append(row)
        for row in rows.threads:
            threads.append(row)
        if rows.link is not None:
            links.append(rows.link)
        if rows.malformed:
            log.info("%s: %d unreadable lines in snapshot", self.role, rows.malformed)
        self.snapshots += 1


def start_remote_samplers(samplers: list[RemoteProcSampler]) -> None:
    """Log in to every host at once and start sampling: all of them, or (UsageError) none, with
    every ssh already started stopped again."""
    try:
        for sampler in samplers:
            sampler.launch()
        deadline = time.monotonic() + LOGIN_TIMEOUT_S
        for sampler in samplers:
            sampler.wait_ready(deadline)
    except BaseException:
        for sampler in samplers:
            sampler.stop()
        raise
    for sampler in samplers:
        sampler.begin()
