"""The testbed's libvirt daemons: one libvirtd per hypervisor host (testbed/libvirtd.py), their
records in the state file, and how vmigrate and the other daemons reach each of them.

A part of `Testbed` (testbed/testbed.py), kept apart because it is a concept of its own: the
testbed's hosts and wiring work without it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from vmigrate import libvirt_client
from vmigrate.errors import TestbedError
from vmigrate.pids import is_same_process, terminate
from vmigrate.testbed import libvirt_domains, libvirtd, libvirtd_config
from vmigrate.testbed.network import Host
from vmigrate.testbed.state import Resource, StateFile, stop_libvirtd

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class LibvirtDaemons:
    """The libvirt side of a `Testbed`: what it needs of the testbed is declared here."""

    name: str
    dir: Path
    state: StateFile
    hosts: dict[str, Host]
    hypervisor_roles: tuple[str, ...]

    def _libvirtd_records(self) -> dict[str, Resource]:
        """The recorded libvirtd processes by host role."""
        if not self.state.path.exists():
            return {}
        return {
            r.name.removeprefix(libvirtd.LABEL_PREFIX): r
            for r in self.state.resources()
            if r.kind == "process" and r.name.startswith(libvirtd.LABEL_PREFIX)
        }

    def has_libvirt(self) -> bool:
        """True when a libvirtd runs on every hypervisor host."""
        records = self._libvirtd_records()
        return all(
            role in records and is_same_process(records[role].pid, records[role].start_ticks)
            for role in self.hypervisor_roles
        )

    def libvirt_dir(self, role: str) -> Path:
        """Host `role`'s libvirt directories (etc, lib, log, cache) and its libvirtd.log."""
        return self.dir / "libvirt" / role

    def start_libvirt(
        self, progress: Progress = _quiet, roles: Sequence[str] = (), hung: Collection[str] = ()
    ) -> None:
        """Start a libvirtd on each hypervisor host of this (up) testbed, or on `roles` alone
        (the other hosts keep theirs); return once they answer.

        Daemons recorded earlier on those hosts are stopped first (their domains destroyed;
        those on `hung` hosts, found not to let go of a domain or not to answer, are not asked
        and are killed after a short grace: their QEMUs are stopped after them). On failure
        nothing of the new ones is left (the rest of the testbed stays as it was).

        :raise TestbedError: a daemon did not start or answer."""
        roles = tuple(roles) or self.hypervisor_roles
        specs = [
            libvirtd.DaemonSpec(
                label=f"{libvirtd.LABEL_PREFIX}{role}",
                work_dir=self.libvirt_dir(role),
                netns=self.hosts[role].netns,
                address=self.hosts[role].ip,
                host_uuid=libvirtd_config.host_uuid(self.name, role),
            )
            for role in roles
        ]
        self._forget_libvirtd(roles, hung)
        for spec in specs:  # an earlier daemon's domain definitions and runtime state
            shutil.rmtree(spec.work_dir / "lib", ignore_errors=True)
            shutil.rmtree(spec.work_dir / "etc", ignore_errors=True)
        progress("starting libvirtd on the hypervisor hosts (" + ", ".join(roles) + ")")
        try:
            libvirtd.start_daemons(specs, lambda d: self.state.add_process(d.pid, d.spec.label))
        except BaseException:
            self._forget_libvirtd(roles)
            raise
        self.state.set_facts(libvirt=True)

    def _keep_libvirt(self, libvirt: bool, progress: Progress) -> None:
        """On a testbed that is up: forget the daemons if one died; start one on each host that
        lacks it when `libvirt` asks for them or the other hosts have theirs (hosts just
        added); with `libvirt`, restart daemons stuck on a domain an earlier run left."""
        records = self._libvirtd_records()
        if any(not is_same_process(r.pid, r.start_ticks) for r in records.values()):
            progress("a libvirtd of this testbed died: removing what it left behind")
            self._forget_libvirtd()
            records = {}
        missing = [role for role in self.hypervisor_roles if role not in records]
        if missing and (libvirt or records):
            self.start_libvirt(progress, missing)
            if len(missing) == len(self.hypervisor_roles):
                return  # all fresh
        if libvirt and (stuck := self._stuck_libvirtd()):
            held = ", ".join(f"{role} ({', '.join(names)})" for role, names in stuck.items())
            progress(
                f"libvirtd on {held} cannot let go of a domain an earlier run left (a job hung "
                "after a fault): restarting the daemons"
            )
            self.start_libvirt(progress, hung=list(stuck))

    def _forget_libvirtd(self, roles: Sequence[str] = (), hung: Collection[str] = ()) -> None:
        """Stop (domains first, but not through a daemon on a `hung` host: it would only time
        out again, and would not exit on SIGTERM either) and forget every recorded libvirtd (or
        those on `roles`), alive or not; QEMUs a stopped daemon left behind in its host go too
        (they would hold a tap)."""
        for role, record in self._libvirtd_records().items():
            if roles and role not in roles:
                continue
            if is_same_process(record.pid, record.start_ticks):
                stop_libvirtd(record, hung=role in hung)
            libvirtd.release(record.pid)
            self.state.forget(record)
            if role in self.hosts:
                for pid in libvirt_domains.orphaned_qemus(self.hosts[role].netns):
                    log.warning("stopping QEMU %d that a dead libvirtd left on %s", pid, role)
                    terminate(pid, None)

    def _stuck_libvirtd(self) -> dict[str, list[str]]:
        """The hypervisor hosts whose libvirtd holds a stopped domain it cannot remove, or does
        not answer, with what each holds."""
        libvirt = libvirt_client.load()
        stuck = {}
        for role in self.hypervisor_roles:
            try:
                names = libvirt_domains.stuck_domains(self.libvirt_uri(role))
            except (libvirt.libvirtError, TimeoutError) as exc:
                log.warning("libvirtd on %s does not answer: %s", role, exc)
                names = ["no answer"]
            if names:
                stuck[role] = names
        return stuck

    def _libvirtd_pid(self, role: str) -> int:
        record = self._libvirtd_records().get(role)
        if record is None or not is_same_process(record.pid, record.start_ticks):
            raise TestbedError(
                f"no libvirtd runs on host {role!r} of testbed {self.name!r}: run "
                f"`vmigrate testbed up --libvirt --testbed {self.name}`"
            )
        return record.pid

    def libvirt_uri(self, role: str) -> str:
        """The URI through which this (root) namespace reaches host `role`'s libvirtd.

        :raise TestbedError: no libvirtd runs there."""
        return libvirtd.unix_uri(self._libvirtd_pid(role))

    def libvirt_images_dir(self, role: str) -> Path:
        """Where host `role`'s libvirtd keeps local disks, seen from here; the daemon (and its
        QEMU) sees the same files at `libvirtd.IMAGES_DIR`, a path equal on every host, as
        libvirt's non-shared-storage migration wants it."""
        return self.libvirt_dir(role) / "lib" / "images"

    def tls_dir(self, role: str, libvirt: bool) -> Path:
        """Where host `role` keeps the certificates of an encrypted migration, seen from here:
        in its libvirtd's /etc/libvirt (qemu.conf's migrate_tls_x509_cert_dir), or for the
        QEMU vmigrate starts itself, next to the host's local disks."""
        if libvirt:
            return self.libvirt_dir(role) / "etc" / libvirtd.MIGRATE_TLS_DIR
        return self.dir / "hosts" / role / "tls"

    def libvirt_root(self, role: str) -> Path:
        """Host `role`'s libvirtd's view of the filesystem, from here: /proc/PID/root (its
        private /run, its /var/log/libvirt, ...). Valid while that daemon runs.

        :raise TestbedError: no libvirtd runs there."""
        return libvirtd.root_of(self._libvirtd_pid(role))

    def libvirt_tcp_uri(self, role: str) -> str:
        """The URI through which another host's libvirtd (peer-to-peer migration) reaches
        host `role`'s: qemu+tcp://HOST_IP/system."""
        return libvirtd.tcp_uri(self.hosts[role].ip)

    def libvirt_migration_uri(self, role: str) -> str:
        """Where QEMU on host `role` takes an incoming migration stream: tcp://HOST_IP."""
        return libvirtd.migration_uri(self.hosts[role].ip)
