"""The real runner of a sweep: each scenario through run_experiment on one testbed."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from vmigrate.config import Scenario
from vmigrate.errors import EnvironmentProblem

if TYPE_CHECKING:
    from vmigrate.experiment import ExperimentObserver
    from vmigrate.result import Result
    from vmigrate.testbed.testbed import Testbed


class ExperimentRunner:
    """Runs each scenario with run_experiment on one testbed. The testbed is brought up at the
    first run (at that scenario's link rate; each run re-shapes it to its own) and taken down
    by `close` if this sweep brought it up."""

    def __init__(self, testbed: Testbed, observer: ExperimentObserver) -> None:
        self.testbed = testbed
        self.observer = observer
        self.owns_testbed = False

    def __enter__(self) -> ExperimentRunner:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def __call__(self, scenario: Scenario, out_dir: Path) -> Result:
        from vmigrate.experiment import run_experiment

        if os.geteuid() != 0:
            raise EnvironmentProblem("vmigrate needs root for namespaces and taps: run with sudo")
        # The scenario's count of hypervisor hosts is a minimum: a bigger testbed stays as it is.
        hosts = scenario.testbed.hypervisors
        if self.testbed.hypervisors < hosts or (
            not self.owns_testbed and not self.testbed.is_healthy()
        ):
            self.owns_testbed = self.owns_testbed or not self.testbed.is_healthy()
            self.testbed.up(
                scenario.network.bandwidth_mbit,
                self.observer.stage,
                hypervisors=max(hosts, self.testbed.hypervisors),
            )
        return run_experiment(scenario, out_dir, self.testbed, self.observer)

    def close(self) -> list[str]:
        """Take the testbed down if this sweep brought it up; return what could not be removed."""
        if not self.owns_testbed:
            return []
        self.observer.stage("tearing the testbed down")
        self.owns_testbed = False
        return self.testbed.down()
