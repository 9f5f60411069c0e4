"""The model's error before and after calibration (issue 11): `examples/calibration.toml` run
and fitted on, `examples/calibration-check.toml` (other sizes, dirty rates, link) held out; the
error table on both, over all runs and per strategy. Sweeps go to sweeps/bench-calibration*/
and resume when run again; the fitted constants are stored only with VMIGRATE_BENCH_STORE=1
(else printed)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.console import bench_console
from vmigrate.experiment import SilentObserver
from vmigrate.migration.calibration import fit, load_observations
from vmigrate.migration.estimate import PHYSICS
from vmigrate.paths import model_path
from vmigrate.report.calibration import by_strategy, error_table
from vmigrate.sweep.execute import run_sweep
from vmigrate.sweep.runner import ExperimentRunner
from vmigrate.testbed.testbed import Testbed

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OUT = Path("sweeps")


def main() -> None:
    console = bench_console()
    dirs = {name: OUT / f"bench-{name}" for name in ("calibration", "calibration-check")}
    with ExperimentRunner(Testbed("vmigb"), SilentObserver()) as runner:
        for name, out in dirs.items():
            console.print(f"sweep {name} → {out}")
            run_sweep(EXAMPLES / f"{name}.toml", out, runner)
    fitted_on = load_observations(dirs["calibration"])
    held_out = load_observations(dirs["calibration-check"])
    constants = fit(fitted_on)
    console.print(
        error_table(
            "the model's error, median over runs (goal held out: time and bytes ≤ 10 %, "
            "downtime ≤ 20 ms)",
            by_strategy([("fitted on", fitted_on), ("held out", held_out)]),
            [("physics", PHYSICS), ("calibrated", constants)],
        )
    )
    console.print(constants.model_dump_json(indent=2), highlight=False)
    if os.environ.get("VMIGRATE_BENCH_STORE") == "1":
        model_path().write_text(constants.model_dump_json(indent=2) + "\n")
        console.print(f"stored: {model_path()}")


if __name__ == "__main__":
    main()
