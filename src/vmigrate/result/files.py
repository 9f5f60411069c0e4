"""RUN/result.json on disk: written atomically from the model, read back into it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vmigrate.errors import UsageError
from vmigrate.result.document import Recorded, Result

RESULT_FILE = "result.json"


def write_result(out_dir: Path, result: Result) -> Path:
    """Write result.json (atomically) into the run directory, keys in the model's order."""
    path = out_dir / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_document(path: Path) -> dict[str, Any]:
    """The JSON object in `path`.

    :raise UsageError: no such file, or not a JSON object."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{path.parent} has no {path.name}: give the directory a `vmigrate run` wrote (--out)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); re-run the experiment") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path} is not a result document (not a JSON object)")
    return document


def _invalid(path: Path, exc: ValidationError) -> UsageError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return UsageError(
        f"{path} is not a result this vmigrate reads ({where}: {first['msg']}); "
        "re-analyse it with `vmigrate report RUN`, or re-run the experiment"
    )


def load_result(path: Path) -> Result:
    """A result.json (`path`: the file, or its run directory).

    :raise UsageError: missing, not JSON, or not a result document (an older one may be
        brought up to date by `vmigrate report RUN`)."""
    path = path / RESULT_FILE if path.is_dir() else path
    try:
        return Result.model_validate(read_document(path))
    except ValidationError as exc:
        raise _invalid(path, exc) from None


def load_recorded(run_dir: Path) -> Recorded:
    """What a run recorded itself (its result.json without the analysed sections): all that
    re-analysing it needs, so a document older than some analysed section still reads.

    :raise UsageError: not a run directory, or its result.json is damaged or too old."""
    path = run_dir / RESULT_FILE
    document = read_document(path)
    if "clock" not in document or "timeline_s" not in document:
        raise UsageError(f"{path} predates recorded series (no clock); re-run the experiment")
    try:
        return Recorded.model_validate(
            {k: v for k, v in document.items() if k in Recorded.model_fields}
        )
    except ValidationError as exc:
        raise _invalid(path, exc) from None
