"""Faults injected for real while a VM migrates on the testbed: a host's QEMU killed, the
source's QEMU frozen, the source host's uplink cut or lossy, the NFS server stalled, the user
cancelling, vmigrate itself killed. Each kind is one entry of a registry (what it does, and what
undoes it); an injector fires it when the migration reaches the scenario's `fault.at` and undoes
it after `fault.duration_ms` — or, at the latest, when the run ends, whatever happened
meanwhile.

Packet loss without netem (this kernel has none): an iptables `statistic` match in the source
host's namespace drops a random share of the host's own packets both ways (the migration
stream, NBD, libvirt's connection); frames the host's bridge forwards for a guest pass."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmigrate.config import FaultSpec
from vmigrate.errors import MigrationError
from vmigrate.hypervisor.base import MigrationStats
from vmigrate.migration.orchestrator import MigrationObserver
from vmigrate.proc import run
from vmigrate.result.fault import Fault as FaultSection

log = logging.getLogger(__name__)


def _nobody() -> int | None:
    return None


@dataclass(frozen=True)
class FaultTargets:
    """What a fault acts on: the QEMU processes and the NFS server (PIDs, asked at the moment
    of the fault), the source host's uplink and address interface, and the user's cancel."""

    source_pid: Callable[[], int | None]
    destination_pid: Callable[[], int | None]
    source_netns: str
    source_uplink: str
    source_interface: str = ""
    loss_pct: float = 10.0
    nfs_pid: Callable[[], int | None] = _nobody
    cancel: Callable[[], None] | None = None


#: Whose process a signal goes to: (how the record names it, its PID at that moment).
_PROCESSES: dict[str, tuple[str, Callable[[FaultTargets], int | None]]] = {
    "destination": ("the destination's QEMU", lambda t: t.destination_pid()),
    "source": ("the source's QEMU", lambda t: t.source_pid()),
    "nfs": ("the NFS server, ganesha.nfsd", lambda t: t.nfs_pid()),
}


def _signal(sig: signal.Signals, whose: str) -> Callable[[FaultTargets], str]:
    """A fault (or its undoing) that sends `sig` to `whose` process."""

    def act(t: FaultTargets) -> str:
        name, pid_of = _PROCESSES[whose]
        pid = pid_of(t)
        if pid is None:
            raise MigrationError(f"no {whose} process to send {sig.name} to ({name})")
        os.kill(pid, sig)
        return f"{sig.name} to {name} (pid {pid})"

    return act


def _loss_rules(t: FaultTargets, verb: str) -> None:
    probability = f"{t.loss_pct / 100:.4f}"
    interface = t.source_interface or t.source_uplink
    for chain, direction in (("OUTPUT", "-o"), ("INPUT", "-i")):
        run(["ip", "netns", "exec", t.source_netns, "iptables", "-w", verb, chain,
             direction, interface, "-m", "statistic", "--mode", "random",
             "--probability", probability, "-j", "DROP"])  # fmt: skip


def _lossy(t: FaultTargets) -> str:
    _loss_rules(t, "-A")
    return f"source host drops {t.loss_pct:g}% of its packets (iptables statistic)"


def _lossless(t: FaultTargets) -> str:
    _loss_rules(t, "-D")
    return "source host drops no packets any more"


def _cancel(t: FaultTargets) -> str:
    if t.cancel is None:
        raise MigrationError("this run cannot be cancelled")
    t.cancel()
    return "the user cancels the migration"


def _kill_vmigrate(t: FaultTargets) -> str:
    logging.shutdown()  # what was logged so far reaches RUN/vmigrate.log
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


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
    "kill-destination": Fault(_signal(signal.SIGKILL, "destination")),
    "kill-source": Fault(_signal(signal.SIGKILL, "source")),
    "freeze-source": Fault(_signal(signal.SIGSTOP, "source"), _signal(signal.SIGCONT, "source")),
    "link-down": Fault(_link("down"), _link("up")),
    "link-loss": Fault(_lossy, _lossless),
    "nfs-stall": Fault(_signal(signal.SIGSTOP, "nfs"), _signal(signal.SIGCONT, "nfs")),
    "cancel": Fault(_cancel),
    "kill-vmigrate": Fault(_kill_vmigrate),
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

    def section(self, t0_ns: int, migration_start_ns: int | None) -> FaultSection:
        """The fault for result.json: what, when (seconds since the run and since the
        migration started), what was done, when it was undone (the analysis adds its effect)."""

        def since(t_ns: int | None, origin: int | None) -> float | None:
            if t_ns is None or origin is None:
                return None
            return round((t_ns - origin) / 1e9, 6)

        return FaultSection(
            kind=self.spec.kind,
            at=self.spec.at,
            duration_ms=self.spec.duration_ms,
            injected=self.injected_ns is not None,
            injected_at_s=since(self.injected_ns, t0_ns),
            injected_after_migration_start_s=since(self.injected_ns, migration_start_ns),
            undone_at_s=since(self.undone_ns, t0_ns),
            actions=[action for _, action in self.actions],
            error=self.error,
        )
