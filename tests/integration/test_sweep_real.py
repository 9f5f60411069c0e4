"""`vmigrate sweep` end to end with real guests: 2 cells by 2 repetitions, then a resume.

examples/sweep-quick.toml (pre-copy vs cold, 1 s windows) on its own testbed: the first
invocation runs the four migrations on one testbed and leaves a database, a summary and the
comparison page; the second finds every run done and runs nothing. About a minute.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import leftovers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TESTBED = "vmigs"


def vmigrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmigrate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "140", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_a_quick_sweep_runs_every_cell_then_resumes(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ("sweep", str(EXAMPLES / "sweep-quick.toml"), "--out", str(out), "--testbed", TESTBED)
    t0 = time.monotonic()
    done = vmigrate(*args)
    first_s = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 cells \u00d7 2 repetitions = 4 runs" in done.stdout
    assert done.stdout.count(": completed") == 4, done.stdout

    conn = sqlite3.connect(out / "sweep.db")
    rows = conn.execute(
        'SELECT run_id, outcome, "scenario.migration.strategy", "migration.total_time_s", '
        '"service.observed_downtime_ms", "resources.hosts.source.cpu_seconds.extra", '
        "result_json FROM runs"
    ).fetchall()
    conn.close()
    assert len(rows) == 4
    assert {r[1] for r in rows} == {"completed"}
    assert sorted(r[2] for r in rows) == ["cold", "cold", "precopy", "precopy"]
    for run_id, _, strategy, total_s, observed_ms, cpu_extra, result_json in rows:
        assert total_s is not None and total_s > 0, run_id
        assert observed_ms is not None and cpu_extra is not None, run_id
        result = json.loads(result_json)
        assert result["scenario"]["migration"]["strategy"] == strategy
        assert result["verification"]["service_ok_after"] is True, run_id
        assert (out / "runs" / run_id / "result.json").exists()
        assert (out / "runs" / run_id / "report.html").exists()

    summary = json.loads((out / "summary.json").read_text())
    assert [c["label"] for c in summary["cells"]] == ["precopy", "cold"]
    for cell in summary["cells"]:
        assert (cell["runs"], cell["completed"]) == (2, 2)
        total = cell["figures"]["migration.total_time_s"]
        assert total["n"] == 2 and total["ci95_low"] <= total["mean"] <= total["ci95_high"]
    precopy, cold = (c["figures"]["migration.downtime_reported_ms"] for c in summary["cells"])
    # a cold migration pauses the guest for the whole transfer: its downtime is the longest
    assert cold["mean"] > precopy["mean"]
    page = (out / "comparison.html").read_text()
    assert page.count("Plotly.newPlot(") == 5 and "<script src" not in page  # offline
    assert leftovers(TESTBED) == []  # the sweep brought the testbed up, so it took it down

    t0 = time.monotonic()
    again = vmigrate(*args)
    resume_s = time.monotonic() - t0
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 already done (resuming); 0 to run" in again.stdout
    assert "ran 0, skipped 4" in again.stdout
    assert "booting" not in again.stdout
    assert resume_s < first_s / 3, (resume_s, first_s)
    conn = sqlite3.connect(out / "sweep.db")
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (4,)
    conn.close()
    assert leftovers(TESTBED) == []
