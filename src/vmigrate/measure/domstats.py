"""Resource sampler for hosts vmigrate reaches only through libvirt: the migrating domain's
CPU, vCPU time, memory and disk IO on each host, from libvirt's domain statistics.

It writes the same `processes` and `threads` series as the /proc sampler (one "process" per
host: the domain's QEMU, as libvirt accounts it), so the analysis bills both alike. What
libvirt cannot give — other processes of the host, the host's NIC — is not made up: the
`links` series stays empty and the result says so. With `hosts.ssh` this sampler does not run:
the hosts' /proc over ssh (remote_proc.py) measures the same QEMU, and everything else.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from vmigrate import libvirt_client
from vmigrate.measure.recorder import Recorder, Row
from vmigrate.measure.resources import PROCESS_COLUMNS, THREAD_COLUMNS

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0


def stats_rows(
    t_ns: int, role: str, domain_id: int, name: str, stats: dict[str, Any]
) -> tuple[Row, list[Row]]:
    """One domain's statistics (virDomainListGetStats) as a `processes` row and `threads` rows
    (one per vCPU, class vcpu)."""
    read = sum(v for k, v in stats.items() if k.startswith("block.") and k.endswith(".rd.bytes"))
    written = sum(v for k, v in stats.items() if k.startswith("block.") and k.endswith(".wr.bytes"))
    process = (
        t_ns, role, domain_id, f"domain {name}", stats.get("cpu.time", 0) / 1e9,
        stats.get("balloon.rss", 0) * 1024, read, written,
    )  # fmt: skip
    threads: list[Row] = [
        (t_ns, role, domain_id, index, f"CPU {index}", "vcpu", stats[f"vcpu.{index}.time"] / 1e9)
        for index in range(int(stats.get("vcpu.current", 0)))
        if f"vcpu.{index}.time" in stats
    ]
    return process, threads


class DomainStatsSampler:
    """Samples domain `name` on every host (`conns`: role → libvirt connection) in a thread."""

    def __init__(
        self, conns: dict[str, Any], name: str, recorder: Recorder, interval_s: float
    ) -> None:
        self.conns = conns
        self.name = name
        self.interval_s = interval_s
        self.processes = recorder.series("processes", PROCESS_COLUMNS)
        self.threads = recorder.series("threads", THREAD_COLUMNS)
        self.recorder = recorder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="domain stats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * CALL_TIMEOUT_S)
        self.recorder.flush()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for role, conn in self.conns.items():
                try:
                    self.sample(role, conn)
                except Exception as exc:  # a host that does not answer now may later
                    log.info("domain statistics of the %s: %s", role, exc)
            self._stop.wait(self.interval_s)

    def sample(self, role: str, conn: Any) -> None:
        """One reading of the domain on one host (nothing when it is not there)."""
        libvirt = libvirt_client.load()
        try:
            dom = libvirt_client.bounded(
                lambda: conn.lookupByName(self.name), CALL_TIMEOUT_S, "look up"
            )
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        kinds = (
            libvirt.VIR_DOMAIN_STATS_STATE
            | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_VCPU
            | libvirt.VIR_DOMAIN_STATS_BALLOON
            | libvirt.VIR_DOMAIN_STATS_BLOCK
        )
        # NOWAIT: a migration holds the domain's job; without it the reading waits it out.
        nowait = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        found = libvirt_client.bounded(
            lambda: conn.domainListGetStats([dom], kinds, nowait), CALL_TIMEOUT_S, "domain stats"
        )
        t_ns = time.monotonic_ns()
        live = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_BLOCKED)
        for _, stats in found:
            if stats.get("state.state") not in live:  # the source, once the VM has left
                continue
            process, threads = stats_rows(t_ns, role, dom.ID(), self.name, stats)
            self.processes.append(process)
            for row in threads:
                self.threads.append(row)
