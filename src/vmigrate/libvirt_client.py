"""libvirt-python, loaded once, with its event loop running and every blocking call bounded.

libvirt-python's calls block without a timeout of their own (a busy or stopped daemon never
answers), its default error handler prints to stderr, and domain events need an event loop
implementation registered before the first connection opens. This module takes care of all
three for the testbed (which starts daemons) and the libvirt backend (which drives them).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vmigrate.errors import EnvironmentProblem

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3


@functools.cache
def load() -> Any:
    """The libvirt module, its stderr error printing silenced.

    :raise EnvironmentProblem: libvirt-python is not installed."""
    try:
        import libvirt
    except ImportError as exc:
        raise EnvironmentProblem(
            f"libvirt-python is not importable ({exc}): run `make setup` (it installs libvirt "
            "and builds libvirt-python against libvirt-dev)"
        ) from exc
    libvirt.registerErrorHandler(_ignore_error, None)
    return libvirt


def _ignore_error(_ctx: object, _err: object) -> None:
    """libvirt reports every error as an exception too; do not also print it to stderr."""


@functools.cache
def event_loop() -> threading.Thread:
    """libvirt's default event loop, registered once and run in a daemon thread (domain
    events and keepalives need it)."""
    libvirt = load()
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            try:
                libvirt.virEventRunDefaultImpl()
            except Exception as exc:  # one bad iteration must not end event delivery
                log.warning("libvirt event loop: %s", exc)

    thread = threading.Thread(target=run, name="libvirt events", daemon=True)
    thread.start()
    return thread


def bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Call `fn` in a helper thread; its result, or TimeoutError after `timeout_s` (a hung
    call is left behind in its daemon thread)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"libvirt: {what}", daemon=True)
    thread.start()
    thread.join(max(timeout_s, 0.0))
    if thread.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def connect(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
    """A connection to `uri` with the event loop running and keepalives on.

    :raise libvirt.libvirtError: refused; :raise TimeoutError: no answer."""
    libvirt = load()
    event_loop()
    conn = bounded(lambda: libvirt.open(uri), timeout_s, f"connect to {uri}")
    try:
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    except libvirt.libvirtError as exc:  # a local driver has no keepalive: fine
        log.info("no keepalive on %s: %s", uri, exc)
    return conn


def error_text(exc: BaseException) -> str:
    """A libvirt error's own message, in one line."""
    load()
    message = getattr(exc, "get_error_message", None)
    text = message() if callable(message) else None
    return " ".join(str(text or exc).split())


def version_string(number: int) -> str:
    """libvirt's version number (major*1e6 + minor*1e3 + micro) as "major.minor.micro"."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
