"""What the storage host's nfs-ganesha wrote about itself: the log lines that mean it will not
serve, and the diagnostics an error message carries (testbed/nfs.py starts it)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

LOG_FILE = "ganesha.log"
WRAPPER_LOG_FILE = "wrapper.log"

# Log lines that mean the export (or the whole server) is not usable, although ganesha may keep
# running and answering RPCs. CRITs from DBUS (no system bus in our private /run, by design) and
# NFS CB (no krb5 keytab for NFSv4 callbacks) are expected and harmless.
_FATAL_LOG = re.compile(r":(?!DBUS :|NFS CB :)[A-Z0-9 _]+ :(?:CRIT|MAJ|FATAL) :|No export entries")
_EXPECTED = re.compile(r":(?:DBUS|NFS CB) :(?:CRIT|MAJ|WARN) :")


def _tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file ([] if missing)."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


def _short(line: str) -> str:
    """A ganesha log line without its date/epoch/host/pid prefix."""
    _, sep, rest = line.partition("] ")
    return rest if sep else line


def fatal_log_lines(work_dir: Path) -> list[str]:
    """ganesha log lines that mean it will not serve the export."""
    try:
        text = (work_dir / LOG_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [_short(line) for line in text.splitlines() if _FATAL_LOG.search(line)]


def _hint(lines: Sequence[str]) -> str:
    """A fix for well-known failures seen in the log lines, or ''."""
    text = "\n".join(lines)
    if "Could not get handle" in text or "Operation not supported" in text:
        return " Fix: export a directory on ext4/xfs/btrfs/tmpfs (file handles are needed)."
    if "No such file or directory" in text and "export path" in text:
        return " Fix: create the export directory before starting the server."
    if "Address already in use" in text or "Error binding" in text:
        return (
            " Fix: another NFS server or rpcbind already runs in this namespace; stop it "
            "(vmigrate testbed down)."
        )
    return ""


def diagnostics(work_dir: Path) -> str:
    """Error lines and the tail of ganesha.log and of the wrapper's output, for error messages."""
    fatal = fatal_log_lines(work_dir)
    tail = [_short(line) for line in _tail(work_dir / LOG_FILE, 200) if not _EXPECTED.search(line)]
    tail = tail[-12:]
    wrapper = _tail(work_dir / WRAPPER_LOG_FILE, 5)
    parts = []
    if fatal:
        parts.append("ganesha errors:\n  " + "\n  ".join(fatal[:10]))
    parts.append(
        f"last lines of {work_dir / LOG_FILE}:\n  " + ("\n  ".join(tail) if tail else "(empty)")
    )
    if wrapper:
        parts.append("wrapper/rpcbind output:\n  " + "\n  ".join(wrapper))
    return _hint(fatal + tail + wrapper) + "\n" + "\n".join(parts)
