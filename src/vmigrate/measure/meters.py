"""The client's meters, started and stopped together: the packet capture that referees the
probe (testbed only), the downtime probe and the open-loop HTTP load. Each writes its series
into the run's recorder directory when stopped; one that fails to stop is logged and the
others are stopped all the same."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmigrate.config import LoadSpec
from vmigrate.measure.capture import Capture, start_capture
from vmigrate.measure.client import ClientProcess, start_load, start_probe, stop_clients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where the meters run and what they measure."""

    netns: str | None  # the client host's namespace (None: this one)
    address: str  # the guest's (service's) address
    series_dir: Path  # the run's RUN/series
    http_host: str | None = None  # the HTTP load's host (None: `address`)
    http_port: int = 80
    http_path: str = "/"
    #: for the capture: the client's interface and the guest's MAC (None: no capture)
    capture_on: tuple[str, str] | None = None


@dataclass
class Meters:
    """The running meters of one run."""

    target: Target
    on_start: Callable[[str, int], None] | None = None  # (label, pid) as each one starts
    on_stop: Callable[[int], None] | None = None  # pid, as each one is stopped
    clients: dict[str, ClientProcess] = field(default_factory=dict)
    capture: Capture | None = None

    def _started(self, label: str) -> Callable[[int], None] | None:
        on_start = self.on_start
        return None if on_start is None else (lambda pid: on_start(label, pid))

    async def start(self, load: LoadSpec, http: bool) -> None:
        """The capture (when asked), the probe, and with `http` the load at load.rate_rps."""
        target = self.target
        if target.capture_on is not None:
            interface, mac = target.capture_on
            self.capture = await asyncio.to_thread(
                start_capture, target.netns, interface, target.address, mac, target.series_dir,
                on_start=self._started("capture"),
            )  # fmt: skip
        self.clients["probe"] = await asyncio.to_thread(
            start_probe, target.netns, target.address, target.series_dir / "probe.csv",
            interval_ms=load.probe_interval_ms, on_start=self._started("probe"),
            icmp=load.probe == "icmp",
        )  # fmt: skip
        if http and load.rate_rps > 0:
            self.clients["load"] = await asyncio.to_thread(
                start_load, target.netns, target.http_host or target.address,
                target.series_dir / "requests.csv",
                rate_rps=load.rate_rps, timeout_ms=load.timeout_ms, port=target.http_port,
                path=target.http_path, on_start=self._started("load"),
            )  # fmt: skip

    async def stop(self) -> None:
        """Stop every meter (each writes its records on the way out)."""
        await stop_clients(self.clients, self.on_stop)
        capture, self.capture = self.capture, None
        if capture is not None:
            try:
                await asyncio.to_thread(capture.stop)
            except Exception as exc:
                log.warning("stopping the packet capture: %s", exc)
            if self.on_stop is not None:
                self.on_stop(capture.pid)
