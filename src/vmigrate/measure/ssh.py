"""The ssh command line that reaches a hypervisor host as its libvirt URI names it.

`hosts.ssh` logs in where libvirt does, so the user configures one thing: a qemu+ssh URI's
user, host, port and its `keyfile`, `no_verify`, `known_hosts` and `command` query parameters
become ssh's -l, the destination, -p, -i, StrictHostKeyChecking=no, UserKnownHostsFile and the
binary (as libvirt's own ssh transport uses them). Any other URI (qemu+tcp://HOST/system, ...)
lends only its host: ssh then logs in as the current user, with ssh's own configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from vmigrate.errors import UsageError

CONNECT_TIMEOUT_S = 10
# ServerAlive: a host that drops off the network is noticed in ~15 s, not at TCP's timeout.
SERVER_ALIVE = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")


@dataclass(frozen=True)
class SshTarget:
    """Where and how to log in: one hypervisor host."""

    host: str
    user: str | None = None
    port: int | None = None
    keyfile: str | None = None
    no_verify: bool = False
    known_hosts: str | None = None
    command: str = "ssh"

    @property
    def display(self) -> str:
        """user@host[:port], as a message names the login."""
        where = f"{self.user}@{self.host}" if self.user else self.host
        return f"{where}:{self.port}" if self.port else where


def uri_host(uri: str) -> str:
    """The host name of a URI ("" when it names none, as qemu:///system)."""
    return urlparse(uri).hostname or ""


def ssh_target(uri: str) -> SshTarget:
    """The login a libvirt URI stands for.

    :raise UsageError: the URI names no host (qemu:///system, qemu+unix://...)."""
    parsed = urlparse(uri)
    if not parsed.hostname:
        raise UsageError(
            f"hosts.ssh needs a host name in the libvirt URI, and {uri!r} has none: use "
            "qemu+ssh://user@host/system (or set hosts.ssh = false)"
        )
    if not parsed.scheme.endswith("+ssh"):
        return SshTarget(host=parsed.hostname)
    query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    no_verify = query.get("no_verify", "0").strip() not in ("", "0")
    return SshTarget(
        host=parsed.hostname,
        user=parsed.username or None,
        port=parsed.port,
        keyfile=query.get("keyfile") or None,
        no_verify=no_verify,
        known_hosts=query.get("known_hosts") or None,
        command=query.get("command") or "ssh",
    )


def ssh_argv(target: SshTarget, remote_command: str) -> list[str]:
    """`ssh ... HOST REMOTE_COMMAND`: no prompt (BatchMode), no tty, bounded connect, no shared
    master connection that could outlive the run (ControlPath=none)."""
    argv = [target.command, "-T", "-o", "BatchMode=yes"]
    argv += ["-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", *SERVER_ALIVE]
    argv += ["-o", "ControlPath=none", "-o", "LogLevel=ERROR"]
    if target.port:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    if target.keyfile:
        argv += ["-i", target.keyfile]
    if target.no_verify:
        # Not verified, so not remembered either: the user's known_hosts stays as it was.
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    elif target.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={target.known_hosts}"]
    return [*argv, "--", target.host, remote_command]
