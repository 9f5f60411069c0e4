"""The configuration files of a testbed host's libvirtd (libvirtd.conf, qemu.conf) and its
host UUID: pure text, written by testbed/libvirtd.py into the daemon's own /etc/libvirt."""

from __future__ import annotations

import uuid

from vmigrate.errors import TestbedError

TCP_PORT = 16509
MIGRATE_TLS_DIR = "pki/migrate"


def host_uuid(testbed: str, role: str) -> str:
    """A stable host UUID per testbed and host, distinct for every (testbed, role)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmigrate-testbed:{testbed}/{role}"))


def _quote(value: str) -> str:
    if '"' in value or "\n" in value or "\\" in value:
        raise TestbedError(f"{value!r} cannot be written into a libvirt config file")
    return f'"{value}"'


def libvirtd_conf(address: str | None, uuid_: str) -> str:
    """libvirtd.conf: TCP without auth on `address` (None: unix socket only), own host UUID."""
    lines = [
        "# Written by vmigrate (testbed/libvirtd_config.py): a testbed daemon, not a real host.",
        "listen_tls = 0",
        f"listen_tcp = {0 if address is None else 1}",
    ]
    if address is not None:
        lines += [
            f"listen_addr = {_quote(address)}",
            f'tcp_port = "{TCP_PORT}"',
            "# The testbed's own network namespaces only: nobody else can reach it.",
            'auth_tcp = "none"',
        ]
    lines += [
        'auth_unix_rw = "none"',
        'auth_unix_ro = "none"',
        "# Its own, or a peer refuses to migrate to 'the same host'.",
        f"host_uuid = {_quote(uuid_)}",
        "# Warnings and errors to stderr, which vmigrate writes to libvirtd.log.",
        "log_level = 3",
        'log_outputs = "3:stderr"',
    ]
    return "\n".join(lines) + "\n"


def qemu_conf(address: str | None) -> str:
    """qemu.conf: QEMU as root, no security driver, cgroups, namespaces or virtlogd."""
    lines = [
        "# Written by vmigrate (testbed/libvirtd_config.py).",
        'user = "root"',
        'group = "root"',
        "dynamic_ownership = 0",
        "remember_owner = 0",
        'security_driver = "none"',
        "cgroup_controllers = [ ]",
        "namespaces = [ ]",
        "# QEMU's stdout/stderr straight to /var/log/libvirt/qemu/NAME.log (no virtlogd).",
        'stdio_handler = "file"',
    ]
    if address is not None:
        lines += [
            "# Incoming migrations listen on, and are announced with, the host's address.",
            f"migration_address = {_quote(address)}",
            f"migration_host = {_quote(address)}",
            "# VIR_MIGRATE_TLS: the run's certificates (ca-cert.pem, server-*, client-*).",
            f'migrate_tls_x509_cert_dir = "/etc/libvirt/{MIGRATE_TLS_DIR}"',
        ]
    return "\n".join(lines) + "\n"
