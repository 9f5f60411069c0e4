"""The testbed's state file: every namespace, process and path a testbed owns, recorded as made.

Resources are recorded *before* they are created (processes right after, when their PID is
known), so a vmigrate killed with SIGKILL at any point leaves a file from which `testbed down`
removes everything. Teardown runs in reverse order and tolerates what is already gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmigrate.errors import TestbedError
from vmigrate.pids import is_same_process, process_start_ticks, terminate
from vmigrate.proc import run
from vmigrate.testbed import libvirt_domains, libvirtd
from vmigrate.testbed.netns import netns_exists, netns_pids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    """One thing a testbed owns. kind: netns | process | path; `name` labels a process."""

    kind: str
    name: str
    pid: int = 0
    start_ticks: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resource:
        return cls(
            kind=str(data["kind"]),
            name=str(data["name"]),
            pid=int(data.get("pid", 0)),
            start_ticks=data.get("start_ticks"),
        )


class StateFile:
    """A JSON list of resources plus free-form facts, updated under an flock, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_suffix(".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, self.path)

    def read(self) -> dict[str, Any]:
        """The whole state (an empty one when the file does not exist)."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        data.setdefault("resources", [])
        data.setdefault("facts", {})
        return data

    def resources(self) -> list[Resource]:
        return [Resource.from_json(item) for item in self.read()["resources"]]

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = self.read()["facts"]
        return facts

    def set_facts(self, **facts: Any) -> None:
        with self._locked() as data:
            data["facts"].update(facts)

    def update_facts(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Set the facts `change` derives from the current ones, all under the lock (a fact
        that two writers extend at once keeps both their parts)."""
        with self._locked() as data:
            data["facts"].update(change(dict(data["facts"])))

    def add(self, resource: Resource) -> None:
        with self._locked() as data:
            data["resources"].append(resource.to_json())

    def add_netns(self, name: str) -> None:
        self.add(Resource("netns", name))

    def add_path(self, path: Path) -> None:
        self.add(Resource("path", str(path)))

    def add_process(self, pid: int, label: str) -> None:
        self.add(Resource("process", label, pid=pid, start_ticks=process_start_ticks(pid)))

    def forget(self, resource: Resource) -> None:
        """Drop a resource that was removed on purpose (e.g. a VM's QEMU that exited)."""
        with self._locked() as data:
            data["resources"] = [r for r in data["resources"] if r != resource.to_json()]

    def forget_process(self, pid: int) -> None:
        with self._locked() as data:
            data["resources"] = [
                r for r in data["resources"] if not (r["kind"] == "process" and r["pid"] == pid)
            ]


def tear_down(state: StateFile) -> list[str]:
    """Remove every recorded resource, newest first; return what could not be removed."""
    problems: list[str] = []
    resources = state.resources()
    for res in reversed(resources):
        if res.kind == "process" and res.name.startswith(libvirtd.LABEL_PREFIX):
            stop_libvirtd(res)
    for res in reversed(resources):
        if res.kind == "process":
            terminate(res.pid, res.start_ticks)
    namespaces = [r.name for r in resources if r.kind == "netns"]
    for ns in namespaces:
        for pid in netns_pids(ns):
            terminate(pid, process_start_ticks(pid), grace_s=2.0)
    for res in reversed(resources):
        if res.kind == "netns" and netns_exists(res.name):
            done = run(["ip", "netns", "delete", res.name], check=False)
            if done.returncode != 0:
                problems.append(f"netns {res.name}: {done.stderr.strip()}")
        elif res.kind == "path":
            target = Path(res.name)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            if target.exists():
                problems.append(f"path {target}: could not be removed")
        elif res.kind == "process" and is_same_process(res.pid, res.start_ticks):
            problems.append(f"process {res.name} (pid {res.pid}) survived SIGKILL")
    return problems


def stop_libvirtd(res: Resource, hung: bool = False) -> None:
    """Destroy a recorded libvirtd's domains, then stop it. A daemon found `hung` (it would not
    let go of a domain, or did not answer) is not asked again and gets a short grace: on
    SIGTERM it would wait for its hung job. Never raises: a daemon that does not answer is
    stopped all the same, and its QEMUs go with its namespace's processes."""
    if not is_same_process(res.pid, res.start_ticks):
        return
    if not hung:
        try:
            if not libvirtd.is_isolated_daemon(res.pid):
                raise TestbedError("not a libvirtd in a mount namespace of its own")
            removed = libvirt_domains.destroy_domains(libvirtd.unix_uri(res.pid))
            if removed:
                log.info("%s (pid %d): destroyed %s", res.name, res.pid, ", ".join(removed))
        except Exception as exc:  # libvirt.libvirtError, TimeoutError, TestbedError
            log.warning("%s (pid %d): domains not destroyed: %s", res.name, res.pid, exc)
    grace_s = libvirtd.HUNG_STOP_GRACE_S if hung else libvirtd.STOP_GRACE_S
    try:
        libvirtd.stop(res.pid, res.start_ticks, grace_s)
    except Exception as exc:
        log.warning("%s (pid %d): not stopped: %s", res.name, res.pid, exc)
