"""The scenario's `[hosts]`: the backend that runs the VM, the CPU ceilings of the testbed's
hosts, or the user's own hosts reached by libvirt URI (then no testbed is built)."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator

from vmigrate.config_section import Section

LIBVIRT_URI = re.compile(
    r"^qemu(\+(ssh|libssh|libssh2|tcp|tls|unix|ext))?://[^\s]*/(system|session)\b"
)


class HostsSpec(Section):
    """The hypervisor hosts: which engine runs the VM, and the CPU each host offers (a ceiling
    stands in for an older host)."""

    backend: Literal["qemu", "libvirt"] = Field(
        "qemu",
        description="qemu: vmigrate starts QEMU itself and drives it over QMP; libvirt: one "
        "libvirtd per host runs the VM and migrates it peer-to-peer",
    )
    source_cpu: str = Field(
        "",
        description="CPU ceiling of the source host: a QEMU CPU model (Skylake-Client-v4); "
        "empty: all the accelerator offers (TCG: what it implements; KVM: the host CPU)",
    )
    destination_cpu: str = Field(
        "", description="CPU ceiling of the destination host (Westmere); empty: no ceiling"
    )

    source_uri: str = Field(
        "",
        description="your own hosts: the source's libvirt URI (qemu+ssh://root@host1/system, "
        "qemu+tcp://..., qemu:///system); set with destination_uri and domain, no testbed is "
        "built and no guest booted",
    )
    destination_uri: str = Field("", description="your own hosts: the destination's libvirt URI")
    destination_peer_uri: str = Field(
        "",
        description="how the source's libvirtd reaches the destination's (peer-to-peer); "
        "empty: destination_uri",
    )
    migration_uri: str = Field(
        "",
        description="where the destination's QEMU takes the stream (tcp://host2); empty: "
        "libvirt decides",
    )
    domain: str = Field("", description="your own hosts: the running domain to migrate")
    ssh: bool = Field(
        False,
        description="your own hosts: sample each host's /proc over ssh, as testbed hosts are "
        "(every process's CPU, RSS, disk IO; QEMU's threads; the NIC routing to the peer host), "
        "instead of libvirt's domain statistics; logs in as the URI says (qemu+ssh: its user, "
        "keyfile, no_verify; other URIs: their host, as the current user); the hosts need sh, "
        "awk, grep and ip",
    )

    @model_validator(mode="after")
    def _consistent(self) -> HostsSpec:
        if self.backend == "libvirt" and (self.source_cpu or self.destination_cpu):
            raise ValueError(
                "hosts.source_cpu / destination_cpu (CPU ceilings) are emulated by the qemu "
                "backend only; with hosts.backend = 'libvirt' remove them"
            )
        real = {"source_uri": self.source_uri, "destination_uri": self.destination_uri,
                "domain": self.domain}  # fmt: skip
        if any(real.values()):
            missing = [f"hosts.{key}" for key, value in real.items() if not value]
            if missing:
                raise ValueError(
                    f"your own hosts need hosts.source_uri, destination_uri and domain "
                    f"together: set {', '.join(missing)}"
                )
            if self.backend != "libvirt":
                raise ValueError(
                    "your own hosts are reached through libvirt: set hosts.backend = 'libvirt'"
                )
        for key in ("source_uri", "destination_uri", "destination_peer_uri"):
            uri = getattr(self, key)
            if uri and not LIBVIRT_URI.match(uri):
                raise ValueError(
                    f"hosts.{key}: {uri!r} is not a libvirt URI for QEMU; use qemu:///system, "
                    "qemu+ssh://user@host/system, qemu+tcp://host/system, qemu+tls://... or "
                    "qemu+unix:///system?socket=PATH"
                )
        if self.ssh:
            if not self.real:
                raise ValueError(
                    "hosts.ssh samples your own hosts over ssh (with hosts.source_uri, "
                    "destination_uri and domain); the testbed's hosts are sampled directly"
                )
            for key in ("source_uri", "destination_uri"):
                if not urlparse(getattr(self, key)).hostname:
                    raise ValueError(
                        f"hosts.ssh logs in to the host of hosts.{key}, and "
                        f"{getattr(self, key)!r} names none: use qemu+ssh://user@host/system"
                    )
        if self.migration_uri and not re.match(r"^(tcp|rdma|unix)://", self.migration_uri):
            raise ValueError(
                f"hosts.migration_uri: {self.migration_uri!r} is not a migration URI; use "
                "tcp://HOST[:PORT]"
            )
        return self

    @property
    def real(self) -> bool:
        """True when the scenario names the user's own hosts (no testbed)."""
        return bool(self.source_uri)

    def cpu(self, role: str) -> str:
        """The CPU ceiling of hypervisor host `role` ("source" or "destination")."""
        return self.source_cpu if role == "source" else self.destination_cpu
