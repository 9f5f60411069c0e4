"""Host resource sampler: CPU, memory, disk IO of every process of a host, QEMU's threads by
name, and the host's uplink counters — all from /proc, stamped on the monotonic clock.

A host is a network namespace, so "the processes of a host" are exactly the processes whose
/proc/PID/ns/net is that namespace: nothing has to register, and a QEMU started mid-run is
picked up on the next sample. Link counters are read from /proc/net/dev files opened once from
inside each namespace (the open file stays bound to it), so a sample forks nothing.
The texts of /proc become rows in `process_row`, `thread_row` and `parse_net_dev`, shared with
remote_proc.py, which reads the same files of a real host over ssh.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vmigrate.measure.recorder import Recorder, Row
from vmigrate.testbed.netns import call_in_netns

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PROCESS_COLUMNS = ["t_ns", "host", "pid", "name", "cpu_s", "rss_bytes", "read_bytes", "write_bytes"]
THREAD_COLUMNS = ["t_ns", "host", "pid", "tid", "thread", "thread_class", "cpu_s"]
LINK_COLUMNS = ["t_ns", "host", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets"]
QEMU_COMM_PREFIX = "qemu-system"  # comm is cut to 15 characters: "qemu-system-x86"


@dataclass(frozen=True)
class WatchedHost:
    """A host to sample: its role, its network namespace and the interface that is its uplink."""

    role: str
    netns: str
    uplink: str


def is_qemu(comm: str) -> bool:
    """Whether a process (by its comm) is a QEMU system emulator, whose threads are sampled."""
    return comm.startswith(QEMU_COMM_PREFIX)


def thread_class(name: str) -> str:
    """QEMU thread name → vcpu | migration | main | other (needs -name ...,debug-threads=on)."""
    if name.startswith("CPU ") and ("/TCG" in name or "/KVM" in name):
        return "vcpu"
    if name.startswith(("live_migration", "multifd", "mig/", "return path", "postcopy")):
        return "migration"
    if is_qemu(name):
        return "main"
    return "other"


def stat_cpu_s(stat: str, clk_tck: int = CLK_TCK) -> tuple[str, float]:
    """(comm, utime+stime in seconds) from the text of a /proc/.../stat file."""
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return comm, (int(fields[11]) + int(fields[12])) / clk_tck


def parse_io(text: str) -> tuple[int, int]:
    """Block-device (read_bytes, write_bytes) from the text of /proc/PID/io ((0, 0) if empty)."""
    values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return int(values.get("read_bytes", 0)), int(values.get("write_bytes", 0))


def statm_rss_bytes(statm: str, page_size: int = PAGE_SIZE) -> int:
    """Resident set size from the text of /proc/PID/statm (0 if empty)."""
    fields = statm.split()
    return int(fields[1]) * page_size if len(fields) > 1 else 0


def parse_net_dev(text: str, interface: str) -> tuple[int, int, int, int] | None:
    """(rx_bytes, tx_bytes, rx_packets, tx_packets) of one interface from /proc/net/dev."""
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == interface:
            f = rest.split()
            return int(f[0]), int(f[8]), int(f[1]), int(f[9])
    return None


def process_row(
    t_ns: int,
    role: str,
    pid: int,
    texts: tuple[str, str, str],
    clk_tck: int = CLK_TCK,
    page_size: int = PAGE_SIZE,
) -> Row:
    """A `processes` row from the texts of a process's (stat, statm, io) files."""
    stat, statm, io = texts
    comm, cpu_s = stat_cpu_s(stat, clk_tck)
    read_b, write_b = parse_io(io)
    rss = statm_rss_bytes(statm, page_size)
    return (t_ns, role, pid, comm, round(cpu_s, 2), rss, read_b, write_b)


def thread_row(t_ns: int, role: str, pid: int, stat: str, clk_tck: int = CLK_TCK) -> Row:
    """A `threads` row from the text of /proc/PID/task/TID/stat."""
    name, cpu_s = stat_cpu_s(stat, clk_tck)
    tid = int(stat.split(" ", 1)[0])
    return (t_ns, role, pid, tid, name, thread_class(name), round(cpu_s, 2))


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _open_net_dev() -> IO[bytes]:
    return open("/proc/thread-self/net/dev", "rb", buffering=0)


class ResourceSampler:
    """Samples the watched hosts every `interval_s` in a background thread until `stop()`."""

    def __init__(self, hosts: list[WatchedHost], recorder: Recorder, interval_s: float) -> None:
        self.hosts = hosts
        self.interval_s = interval_s
        self._processes = recorder.series("processes", PROCESS_COLUMNS)
        self._threads = recorder.series("threads", THREAD_COLUMNS)
        self._links = recorder.series("links", LINK_COLUMNS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._net_dev: dict[str, IO[bytes]] = {}
        self._netns_inode: dict[int, str] = {}
        self.samples = 0
        self.cpu_s = 0.0  # CPU time the sampling thread has used (for the overhead benchmark)

    def start(self) -> None:
        """Bind to each host's namespace and start sampling."""
        for host in self.hosts:
            self._netns_inode[os.stat(Path("/run/netns", host.netns)).st_ino] = host.role
            self._net_dev[host.role] = call_in_netns(host.netns, _open_net_dev)
        self.sample()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample, stop the thread, release the namespaces, flush the series."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.sample()
        for handle in self._net_dev.values():
            handle.close()
        self._net_dev.clear()
        for writer in (self._processes, self._threads, self._links):
            writer.flush()

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += self.interval_s
            self._stop.wait(max(0.0, deadline - time.monotonic()))
            if not self._stop.is_set():
                self.sample()
                self.cpu_s = time.thread_time()

    def host_pids(self) -> dict[int, str]:
        """Every process living in a watched host's namespace → the host's role."""
        found: dict[int, str] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                inode = os.stat(f"/proc/{entry.name}/ns/net").st_ino
            except OSError:
                continue
            role = self._netns_inode.get(inode)
            if role is not None:
                found[int(entry.name)] = role
        return found

    def sample(self) -> None:
        """One sample of every watched host's processes, QEMU threads and uplink."""
        for pid, role in self.host_pids().items():
            stat = _read(f"/proc/{pid}/stat")
            if stat is None:
                continue
            t_ns = time.monotonic_ns()
            texts = (stat, _read(f"/proc/{pid}/statm") or "", _read(f"/proc/{pid}/io") or "")
            row = process_row(t_ns, role, pid, texts)
            self._processes.append(row)
            if is_qemu(str(row[3])):
                self._sample_threads(t_ns, role, pid)
        for host in self.hosts:
            handle = self._net_dev.get(host.role)
            if handle is None:
                continue
            handle.seek(0)
            t_ns = time.monotonic_ns()
            counters = parse_net_dev(handle.read().decode(), host.uplink)
            if counters is not None:
                self._links.append((t_ns, host.role, *counters))
        self.samples += 1

    def _sample_threads(self, t_ns: int, role: str, pid: int) -> None:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return
        for tid in tids:
            stat = _read(f"/proc/{pid}/task/{tid}/stat")
            if stat is None:
                continue
            self._threads.append(thread_row(t_ns, role, pid, stat))
