"""Choosing the accelerator: KVM only when a bounded probe proves a guest really boots with it.

/dev/kvm can exist while nested KVM hangs at boot, so its presence proves nothing. The probe
boots the guest kernel with no root disk under KVM and waits (bounded) for its panic message;
a kernel that gets that far under KVM works. The verdict is cached per boot of the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from vmigrate.paths import cache_dir
from vmigrate.pids import terminate

PROBE_TIMEOUT_S = 20.0
_MARKER = "Kernel panic"


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def probe_kvm(kernel: Path, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Boot `kernel` under KVM (no disk, no network); True when it reaches its panic in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is absent or not accessible"
    with tempfile.TemporaryDirectory(prefix="vmigrate-kvm-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [
            "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
            "-serial", f"file:{console}",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            terminate(proc.pid, None, 2.0)
            proc.wait()
            return False, f"a guest did not finish booting under KVM within {timeout_s:.0f} s"
        text = console.read_text(errors="replace") if console.exists() else ""
        if _MARKER in text:
            return True, "a guest kernel booted under KVM"
        lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
        said = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
        return False, f"KVM boot failed: {said[:160] or 'no console output'}"


def resolve_accel(requested: str, kernel: Path) -> tuple[str, str]:
    """'kvm' or 'tcg' for a requested 'auto' | 'kvm' | 'tcg', with the reason."""
    if requested == "tcg":
        return "tcg", "requested"
    if requested == "kvm":
        return "kvm", "requested"
    cache = cache_dir() / "kvm-probe.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("boot_id") == _boot_id():
            return ("kvm" if cached["usable"] else "tcg"), str(cached["reason"]) + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    usable, reason = probe_kvm(kernel)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"boot_id": _boot_id(), "usable": usable, "reason": reason}))
    return ("kvm" if usable else "tcg"), reason
