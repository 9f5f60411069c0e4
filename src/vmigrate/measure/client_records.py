"""What the client host's meters wrote, read back: the `probe` and `requests` series
(docs/series.md) as numpy columns, exact in integer nanoseconds, NaN where nothing came."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vmigrate.measure.client import ClientToolError

PROBE_COLUMNS = ("seq", "send_ns", "recv_ns")
REQUEST_ERRORS: tuple[str, ...] = ("", "timeout", "connect", "io")  # code = index
REQUEST_COLUMNS = ("intended_ns", "sent_ns", "done_ns", "status", "error")
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class ProbeRecords:
    """The `probe` series as columns; `recv_ns` is NaN for a lost probe.

    `rtt_ns` is recv - send computed in integers (exact), NaN when lost.
    """

    seq: I64
    send_ns: I64
    recv_ns: F64
    rtt_ns: F64

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def lost(self) -> npt.NDArray[np.bool_]:
        return np.isnan(self.recv_ns)


@dataclass(frozen=True, eq=False)
class RequestRecords:
    """The `requests` series as columns; empty cells are NaN.

    `error` holds "" (answered), "timeout", "connect" or "io"; `latency_ns` is done - intended
    computed in integers (exact), NaN when the request failed.
    """

    intended_ns: I64
    sent_ns: F64
    done_ns: F64
    status: I64
    error: npt.NDArray[np.str_]
    latency_ns: F64

    def __len__(self) -> int:
        return len(self.intended_ns)

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        """Requests that got a complete response (any status)."""
        return np.asarray(self.error == "", dtype=np.bool_)


_EMPTY = -1  # stands for an empty cell while parsing: every real value is >= 0


def _read_table(path: Path, columns: tuple[str, ...]) -> bytes:
    """The body of a CSV written by the client (after checking its header), newline-terminated."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ClientToolError(f"cannot read {path}: {exc}") from exc
    header, _, body = raw.partition(b"\n")
    if tuple(header.decode(errors="replace").strip().split(",")) != columns:
        raise ClientToolError(f"{path}: header {header[:200]!r}, expected {','.join(columns)}")
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return body


def _int_table(path: Path, body: bytes, ncols: int) -> I64:
    """CSV rows of non-negative integers as an (n, ncols) int64 array; empty cells -> -1."""
    if not body.strip():
        return np.zeros((0, ncols), dtype=np.int64)
    # `,,` twice (the first pass misses every second of overlapping matches), then the cells
    # at the end and at the start of a line.
    body = body.replace(b",,", b",-1,").replace(b",,", b",-1,").replace(b",\n", b",-1\n")
    body = body.replace(b"\n,", b"\n-1,")
    if body.startswith(b","):
        body = b"-1" + body
    try:
        table = np.loadtxt(io.BytesIO(body), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise ClientToolError(f"{path}: not a table of {ncols} integer columns: {exc}") from exc
    if table.shape[1] != ncols:
        raise ClientToolError(f"{path}: {table.shape[1]} columns, expected {ncols}")
    return table


def _with_nan(column: I64) -> F64:
    out = column.astype(np.float64)
    out[column == _EMPTY] = np.nan
    return out


def _difference(later: I64, earlier: I64) -> F64:
    """later - earlier computed exactly in int64, NaN where either cell was empty."""
    out = (later - earlier).astype(np.float64)
    out[(later == _EMPTY) | (earlier == _EMPTY)] = np.nan
    return out


def read_probe(path: Path) -> ProbeRecords:
    """Read a `probe` series written by `vmigrate-client probe` (about 1 s per million rows)."""
    table = _int_table(path, _read_table(path, PROBE_COLUMNS), 3)
    seq, send, recv = (np.ascontiguousarray(table[:, i]) for i in range(3))
    return ProbeRecords(
        seq=seq, send_ns=send, recv_ns=_with_nan(recv), rtt_ns=_difference(recv, send)
    )


def read_requests(path: Path) -> RequestRecords:
    """Read a `requests` series written by `vmigrate-client load` (about 1 s per million rows)."""
    body = _read_table(path, REQUEST_COLUMNS)
    # The error names (last column) become their codes, so the whole table is integers.
    for code, name in enumerate(REQUEST_ERRORS):
        if name:
            body = body.replace(f",{name}\n".encode(), f",{code}\n".encode())
    body = body.replace(b",\n", b",0\n")
    table = _int_table(path, body, 5)
    intended, sent, done, status, error = (np.ascontiguousarray(table[:, i]) for i in range(5))
    if len(error) and (error.min() < 0 or error.max() >= len(REQUEST_ERRORS)):
        raise ClientToolError(f"{path}: unknown value in the error column")
    return RequestRecords(
        intended_ns=intended,
        sent_ns=_with_nan(sent),
        done_ns=_with_nan(done),
        status=np.where(status == _EMPTY, 0, status),
        error=np.array(REQUEST_ERRORS)[error],
        latency_ns=_difference(done, intended),
    )
