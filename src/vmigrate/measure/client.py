"""The client host's meters: the UDP downtime probe and the open-loop HTTP load generator.

Both are one small C program, `vmigrate-client` (client.c next to this file), compiled on
first use into the cache and run inside the client namespace. It records in memory and writes
its CSV (the `probe` and `requests` series of docs/series.md) when stopped, so a run costs the
client host one wake-up per probe (echo times are the kernel's receive timestamps) and two
per request (send, answer), nothing else. Python only starts it, stops it and reads what it
wrote (client_records.py); `ClientProcess.cpu_s()` tells what the meter itself cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from vmigrate.errors import ImageBuildError, VmigrateError
from vmigrate.paths import cache_dir
from vmigrate.pids import is_same_process, process_start_ticks
from vmigrate.proc import ReadEnd, in_netns, read_until

CLIENT_SOURCE = Path(__file__).with_name("client.c")
CLIENT_CFLAGS: tuple[str, ...] = ("-O2", "-Wall", "-Wextra")
BINARY_NAME = "vmigrate-client"
log = logging.getLogger(__name__)

READY_TIMEOUT_S = 5.0
GCC_FIX = "apt-get install gcc libc6-dev"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ClientToolError(VmigrateError):
    """The client tool (probe or load generator) did not start, failed, or wrote no records."""


# --------------------------------------------------------------------------- build


def client_digest() -> str:
    """What identifies a build: the source and the flags (16 hex digits of their SHA-256)."""
    h = hashlib.sha256()
    h.update(CLIENT_SOURCE.read_bytes())
    h.update(b"\0" + " ".join(CLIENT_CFLAGS).encode())
    return h.hexdigest()[:16]


def build_client(force: bool = False) -> Path:
    """Compile client.c (once per source + flags) into the cache; return the binary's path.

    Raises ImageBuildError when gcc is missing or the compilation fails (the message says the
    fix). Concurrent builders are safe: each writes its own temp file and renames it into place.
    """
    target = cache_dir() / "tools" / client_digest() / BINARY_NAME
    if target.exists() and not force:
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageBuildError(f"gcc is needed to build {BINARY_NAME}: {GCC_FIX}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageBuildError(f"cannot create {target.parent}: {exc}") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{BINARY_NAME}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        done = subprocess.run(
            [gcc, *CLIENT_CFLAGS, "-o", str(tmp), str(CLIENT_SOURCE)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            errors = [line for line in detail if "error" in line] or detail or ["no output"]
            hint = f" (is libc6-dev installed? {GCC_FIX})" if "No such file" in done.stderr else ""
            raise ImageBuildError(f"compiling {CLIENT_SOURCE.name} failed{hint}: {errors[0]}")
        tmp.chmod(0o755)
        os.replace(tmp, target)
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"compiling {CLIENT_SOURCE.name} timed out") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


# --------------------------------------------------------------------------- process


class ClientProcess:
    """A running `vmigrate-client`; `stop()` ends it and returns the CSV it wrote."""

    def __init__(self, popen: subprocess.Popen[bytes], out: Path, stderr: IO[bytes]) -> None:
        self._popen = popen
        self._stderr = stderr
        self._start_ticks = process_start_ticks(popen.pid)
        self.out = out
        self.started_ns = time.monotonic_ns()
        self.ready_ns: int | None = None  # when it said READY
        self.stopped_ns: int | None = None  # when it was seen to have exited
        self._cpu_s_at_exit: float | None = None
        self._stderr_final: str | None = None

    @property
    def pid(self) -> int:
        """The client's own PID (`ip netns exec` execs it, so it is the spawned process)."""
        return self._popen.pid

    @property
    def running(self) -> bool:
        """True until the client has exited (and been collected)."""
        return self._popen.returncode is None and not self._reap(0)

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.stop()
        else:
            self.kill()

    def _signal(self, sig: int) -> None:
        """Signal the client if it is still the process we started (never a reused PID)."""
        if self._popen.returncode is None and is_same_process(self.pid, self._start_ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def cpu_s(self) -> float:
        """User + system CPU seconds the client used so far (its total once it has exited)."""
        if self._cpu_s_at_exit is not None:
            return self._cpu_s_at_exit
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError as exc:
            raise ClientToolError(f"{BINARY_NAME} (pid {self.pid}) is gone") from exc
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stderr_text(self) -> str:
        """What the client said on stderr so far (its summary line once it has stopped)."""
        if self._stderr_final is not None:
            return self._stderr_final
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        self._stderr.seek(0, os.SEEK_END)
        return text

    def _reap(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the client to exit; collect its status and CPU time."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: no status to be had
                self._popen.returncode = self._popen.returncode or 0
                return True
            if pid != 0:
                self._popen.returncode = os.waitstatus_to_exitcode(status)
                self._cpu_s_at_exit = usage.ru_utime + usage.ru_stime
                self.stopped_ns = time.monotonic_ns()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> Path:
        """SIGTERM the client, let it drain and write its file (SIGKILL after `timeout_s`).

        Returns the CSV path; raises ClientToolError if the client failed or wrote nothing.
        """
        if self._popen.returncode is None:
            self._signal(signal.SIGTERM)
            if not self._reap(timeout_s):
                self._signal(signal.SIGKILL)
                self._reap(5.0)
        return self._result()

    def kill(self) -> None:
        """End the client now, discarding its records (for cleanup after a failure)."""
        if self._popen.returncode is None:
            self._signal(signal.SIGKILL)
            self._reap(5.0)
        self._close_pipes()

    def wait(self, timeout_s: float) -> Path:
        """Wait for a client started with a duration to finish by itself; then as `stop()`."""
        if self._popen.returncode is None and not self._reap(timeout_s):
            return self.stop()
        return self._result()

    def _close_pipes(self) -> None:
        if self._popen.stdout is not None:
            self._popen.stdout.close()
        if self._stderr_final is None:
            self._stderr_final = self.stderr_text()
            self._stderr.close()

    def _result(self) -> Path:
        self._close_pipes()
        code = self._popen.returncode
        if code != 0:
            how = f"was killed by signal {-code}" if code and code < 0 else f"exited with {code}"
            raise ClientToolError(f"{BINARY_NAME} (pid {self.pid}) {how}: {self._last_words()}")
        if not self.out.exists():
            raise ClientToolError(f"{BINARY_NAME} (pid {self.pid}) wrote no {self.out}")
        return self.out

    def _last_words(self) -> str:
        lines = self.stderr_text().strip().splitlines()
        return lines[-1] if lines else "no output on stderr"


def _start(
    netns: str | None,
    args: list[str],
    out: Path,
    on_start: Callable[[int], None] | None,
) -> ClientProcess:
    binary = build_client()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientToolError(
            f"cannot create {out.parent} for the client's records: {exc}"
        ) from exc
    argv = in_netns(netns, [str(binary), *args, "--out", str(out)])
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - the ClientProcess owns and closes it
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C on the terminal is ours to forward, not its
        )
    except OSError as exc:
        stderr.close()
        raise ClientToolError(f"cannot run {argv[0]}: {exc}") from exc
    client = ClientProcess(popen, out, stderr)
    try:
        if on_start is not None:
            on_start(popen.pid)
        _wait_ready(client, popen, argv)
    except BaseException:
        client.kill()
        raise
    client.ready_ns = time.monotonic_ns()
    return client


def _wait_ready(client: ClientProcess, popen: subprocess.Popen[bytes], argv: list[str]) -> None:
    """Block until the client prints READY (at most READY_TIMEOUT_S)."""
    assert popen.stdout is not None
    seen, end = read_until(popen.stdout.fileno(), lambda seen: b"\n" in seen, READY_TIMEOUT_S)
    if end is ReadEnd.TIMED_OUT:
        problem = f"did not say READY within {READY_TIMEOUT_S:g} s"
    elif end is ReadEnd.CLOSED:
        time.sleep(0.05)  # let it finish writing stderr
        problem = "exited before it was ready"
    else:
        first = seen.split(b"\n", 1)[0]
        if first.strip() == b"READY":
            return
        problem = f"said {first[:200]!r} instead of READY"
    raise ClientToolError(f"`{' '.join(argv)}` {problem}: {client._last_words()}")


async def stop_clients(
    clients: dict[str, ClientProcess], on_stopped: Callable[[int], None] | None = None
) -> None:
    """Stop every client (each writes its records on the way out) and empty `clients`; one
    that fails to stop is logged and the others are stopped all the same. `on_stopped(pid)`
    runs for each."""
    while clients:
        name, client = clients.popitem()
        try:
            await asyncio.to_thread(client.stop)
        except Exception as exc:
            log.warning("stopping the %s: %s", name, exc)
        if on_stopped is not None:
            on_stopped(client.pid)


def start_probe(
    netns: str | None,
    target: str,
    out: Path,
    interval_ms: float = 1.0,
    port: int = 7,
    on_start: Callable[[int], None] | None = None,
    duration_s: float = 0.0,
    icmp: bool = False,
) -> ClientProcess:
    """Start the echo probe from `netns` (None: this namespace) to `target`:`port` (UDP), or
    with `icmp` to the target's kernel (ICMP echo; needs root).

    One probe every `interval_ms`; records the `probe` series into `out` when stopped
    (or after `duration_s`, 0 = until stopped). `on_start(pid)` runs right after spawning.
    """
    interval_us = round(interval_ms * 1000)
    if interval_us < 10:
        raise ValueError(f"probe interval {interval_ms} ms is below 0.01 ms")
    args = ["probe", "--target", target, "--port", str(port), "--interval-us", str(interval_us)]
    if duration_s > 0:
        args += ["--duration-s", f"{duration_s:g}"]
    if icmp:
        args.append("--icmp")
    return _start(netns, args, out, on_start)


def start_load(
    netns: str | None,
    target: str,
    out: Path,
    rate_rps: float,
    timeout_ms: int = 2000,
    port: int = 80,
    on_start: Callable[[int], None] | None = None,
    duration_s: float = 0.0,
    max_conns: int = 256,
    path: str = "/",
) -> ClientProcess:
    """Start the open-loop HTTP load from `netns` (None: this namespace) to `target`:`port`.

    `rate_rps` GET requests per second on a fixed schedule (latency counts from each request's
    intended time); records the `requests` series into `out` when stopped (after waiting up to
    `timeout_ms` for answers in flight) or after `duration_s` (0 = until stopped).
    """
    if rate_rps <= 0:
        raise ValueError(f"load rate must be positive, not {rate_rps}")
    args = [
        "load",
        "--target",
        target,
        "--port",
        str(port),
        "--rate",
        f"{rate_rps:g}",
        "--timeout-ms",
        str(timeout_ms),
        "--max-conns",
        str(max_conns),
        "--path",
        path,
    ]
    if duration_s > 0:
        args += ["--duration-s", f"{duration_s:g}"]
    return _start(netns, args, out, on_start)
