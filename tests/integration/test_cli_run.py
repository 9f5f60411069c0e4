"""The command line end to end, as a user types it: doctor, then a run with a summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import leftovers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def vmigrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmigrate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "120", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_doctor_finds_everything_on_a_set_up_machine() -> None:
    done = vmigrate("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("qemu-system-x86_64", "nfs-ganesha VFS backend", "kernel networking", "KVM",
                  "tcpdump", "iptables"):  # fmt: skip
        assert check in done.stdout


def test_run_shows_progress_and_summary_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = vmigrate(
        "run", str(EXAMPLES / "demo.toml"), "--testbed", "vmigc", "--out", str(out),
        "--set", "phases.warmup_s=0", "--set", "phases.baseline_s=1", "--set", "phases.after_s=1",
        "--set", "vm.accel=tcg",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for text in ("booting the guest", "migrating", "completed", "total migration time",
                 "downtime (hypervisor)", "tearing the testbed down"):  # fmt: skip
        assert text in done.stdout, text
    result = json.loads((out / "result.json").read_text())
    assert result["outcome"] == "completed"
    assert result["scenario"]["phases"]["baseline_s"] == 1
    assert leftovers("vmigc") == []
