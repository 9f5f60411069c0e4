"""Faults injected for real while a VM migrates on the testbed: the destination's QEMU killed,
the source's QEMU frozen, the source host's uplink cut. Each kind is one entry of a registry
(what it does, and what undoes it); an injector fires it when the migration reaches the
scenario's `fault.at` and undoes it after `fault.duration_ms` — or, at the latest, when the run
ends, whatever happened meanwhile."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmigrate.config import FaultSpec
from vmigrate.errors import MigrationError
from vmigrate.hypervisor.base import MigrationStats
from vmigrate.migration.orchestrator import MigrationObserver
from vmigrate.proc import run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultTargets:
    """What a fault acts on: the QEMU processes (PIDs, asked at the moment of the fault) and
    the source host's uplink."""

    source_pid: Callable[[], int | None]
    destination_pid: Callable[[], int | None]
    source_netns: str
    source_uplink: str


def _pid(which: str, pid: int | None) -> int:
    if pid is None:
        raise MigrationError(f"no {which} QEMU process to inject the fault into")
    return pid


def _kill_destination(t: FaultTargets) -> str:
    pid = _pid("destination", t.destination_pid())
    os.kill(pid, signal.SIGKILL)
    return f"SIGKILL to the destination's QEMU (pid {pid})"


def _freeze_source(t: FaultTargets) -> str:
    pid = _pid("source", t.source_pid())
    os.kill(pid, signal.SIGSTOP)
    return f"SIGSTOP to the source's QEMU (pid {pid})"


def _thaw_source(t: FaultTargets) -> str:
    pid = _pid("source", t.source_pid())
    os.kill(pid, signal.SIGCONT)
    return f"SIGCONT to the source's QEMU (pid {pid})"


def _link(state: str) -> Callable[[FaultTargets], str]:
    def act(t: FaultTargets) -> str:
        run(["ip", "-n", t.source_netns, "link", "set", "dev", t.source_uplink, state])
        return f"source uplink {t.source_uplink} {state}"

    return act


@dataclass(frozen=True)
class Fault:
    """One kind of fault: what injects it, and what undoes it (None: nothing can)."""

    inject: Callable[[FaultTargets], str]
    undo: Callable[[FaultTargets], str] | None = None


FAULTS: dict[str, Fault] = {
    "kill-destination": Fault(_kill_destination),
    "freeze-source": Fault(_freeze_source, _thaw_source),
    "link-down": Fault(_link("down"), _link("up")),
}


class FaultInjector(MigrationObserver):
    """Watches the migration's progress (it is an observer, passing every poll on) and fires
    the scenario's fault once; `close` undoes what is still in effect."""

    def __init__(
        self, spec: FaultSpec, targets: FaultTargets, then: MigrationObserver | None
    ) -> None:
        self.spec = spec
        self.targets = targets
        self.then = then
        self.fault = FAULTS.get(spec.kind)
        self.injected_ns: int | None = None
        self.undone_ns: int | None = None
        self.actions: list[tuple[int, str]] = []
        self.error: str | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def migration_progress(self, elapsed_s: float, stats: MigrationStats) -> None:
        armed = self.fault is not None and self.injected_ns is None and not self.error
        if armed and self.spec.due(elapsed_s, stats.percent_sent):
            self._inject()
        if self.then is not None:
            self.then.migration_progress(elapsed_s, stats)

    def _inject(self) -> None:
        assert self.fault is not None
        try:
            action = self.fault.inject(self.targets)
        except Exception as exc:  # the run goes on, and says the fault did not happen
            self.error = f"the fault could not be injected: {exc}"
            log.warning("%s", self.error)
            return
        self.injected_ns = time.monotonic_ns()
        self.actions.append((self.injected_ns, f"fault: {action}"))
        if self.fault.undo is not None and self.spec.duration_ms > 0:
            self._timer = threading.Timer(self.spec.duration_ms / 1000, self._undo)
            self._timer.daemon = True
            self._timer.start()

    def _undo(self) -> None:
        with self._lock:
            if self.fault is None or self.fault.undo is None or self.undone_ns is not None:
                return
            try:
                action = self.fault.undo(self.targets)
            except Exception as exc:
                log.warning("undoing the fault: %s", exc)
                return
            self.undone_ns = time.monotonic_ns()
            self.actions.append((self.undone_ns, f"fault undone: {action}"))

    def close(self) -> None:
        """Undo what is still in effect (a cut link, a frozen QEMU), whatever happened."""
        if self._timer is not None:
            self._timer.cancel()
        if self.injected_ns is not None:
            self._undo()

    def as_dict(self, t0_ns: int, migration_start_ns: int | None) -> dict[str, Any]:
        """The fault for result.json: what, when (seconds since the run and since the
        migration started), what was done, when it was undone."""

        def since(t_ns: int | None, origin: int | None) -> float | None:
            if t_ns is None or origin is None:
                return None
            return round((t_ns - origin) / 1e9, 6)

        return {
            "kind": self.spec.kind,
            "at": self.spec.at,
            "duration_ms": self.spec.duration_ms,
            "injected": self.injected_ns is not None,
            "injected_at_s": since(self.injected_ns, t0_ns),
            "injected_after_migration_start_s": since(self.injected_ns, migration_start_ns),
            "undone_at_s": since(self.undone_ns, t0_ns),
            "actions": [action for _, action in self.actions],
            "error": self.error,
        }
