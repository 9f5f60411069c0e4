"""The storage host's nfs-ganesha configuration: one read-write export for QEMU's libnfs client
(testbed/nfs.py starts the server with it)."""

from __future__ import annotations

from pathlib import Path

from vmigrate.errors import TestbedError

CONFIG_FILE = "ganesha.conf"

_GANESHA_CONF = """\
# Written by vmigrate (testbed/nfs_config.py). One export for QEMU's libnfs client (NFSv3).
NFS_CORE_PARAM {{
    Protocols = 3, 4;
    # No rpc.statd here and QEMU takes no NFS locks: without this ganesha would try to reach statd.
    Enable_NLM = false;
    Enable_RQUOTA = false;
    # libnfs speaks TCP only; fewer sockets, fewer rpcbind registrations.
    Enable_UDP = false;
    Plugins_Dir = "{plugins_dir}";
}}

NFS_KRB5 {{
    Active_krb5 = false;
}}

NFSv4 {{
    # No grace period: a fresh server has no state to reclaim, and clients must not wait 90 s.
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery_dir}";
}}

EXPORT {{
    Export_Id = 1;
    Path = "{export_dir}";
    Pseudo = "{export_dir}";
    Protocols = 3, 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    # libnfs as non-root (or behind NAT) uses ports >= 1024.
    PrivilegedPort = false;
    # The export dir is also read and written locally (images created, results compared):
    # never serve cached attributes.
    Attr_Expiration_Time = 0;
    FSAL {{
        Name = VFS;
    }}
}}
"""


def find_plugins_dir() -> Path:
    """The directory holding ganesha's VFS FSAL (libfsalvfs.so)."""
    candidates = [Path("/usr/lib/ganesha"), *sorted(Path("/usr/lib").glob("*/ganesha"))]
    candidates += [Path("/usr/lib64/ganesha"), Path("/usr/local/lib/ganesha")]
    for directory in candidates:
        if (directory / "libfsalvfs.so").exists():
            return directory
    raise TestbedError("nfs-ganesha-vfs is not installed: apt-get install nfs-ganesha-vfs")


def write_config(work_dir: Path, export_dir: Path, plugins_dir: Path) -> Path:
    """Write work_dir/ganesha.conf for one RW, no-root-squash export of `export_dir`."""
    for value in (str(export_dir), str(work_dir)):
        if '"' in value or "\n" in value:
            raise TestbedError(f"path {value!r} cannot be written into a ganesha config")
    recovery = work_dir / "recovery"
    recovery.mkdir(parents=True, exist_ok=True)
    conf = work_dir / CONFIG_FILE
    conf.write_text(
        _GANESHA_CONF.format(plugins_dir=plugins_dir, recovery_dir=recovery, export_dir=export_dir)
    )
    return conf
