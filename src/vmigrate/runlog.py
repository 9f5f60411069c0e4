"""The run's own log: what vmigrate noticed and swallowed (a cleanup step that failed, a
libvirt call that timed out) goes to RUN_DIR/vmigrate.log, not to the user's terminal."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from vmigrate.errors import UsageError

LOG_FILE = "vmigrate.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_log(out_dir: Path, level: int = logging.INFO) -> Iterator[Path]:
    """Send every `vmigrate.*` log record to out_dir/vmigrate.log while the block runs. Bad
    input (a UsageError) leaves nothing behind: a run directory made here is removed again."""
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOG_FILE
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger("vmigrate")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield path
    except UsageError:
        if made:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()
