"""vmigrate benchmarks: they print figures; they never pass or fail on timing.

A SIGTERM unwinds a bench like Ctrl-C, through the same clean-up paths as the CLI's (the VMs
stopped, a testbed the bench brought up taken down), not by dying with its guests running."""

import signal
from types import FrameType


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _sigterm)
