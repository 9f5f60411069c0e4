"""What every `vmigrate` command shares: the app and its sub-apps, the consoles, `guarded`
(any VmigrateError becomes one line on stderr and its exit code, 2 for bad input; Ctrl-C and
SIGTERM unwind through the same clean-up paths, then exit 130), the common options."""

from __future__ import annotations

import datetime as dt
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from vmigrate.errors import VmigrateError

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help=(
        "Live-migrate a VM between hosts and measure what it costs.\n\n"
        "On one machine, vmigrate builds a testbed of namespaced hosts (source, destination, "
        "an NFS storage server, a client), boots a real guest under QEMU, migrates it while "
        "its service runs, and writes result.json with the bill.\n\n"
        "Start with `vmigrate demo`, or `vmigrate run examples/demo.toml --set vm.memory_mib=1024`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
image_app = typer.Typer(help="The guest image (Debian kernel, busybox, vmigrate's agent).")
testbed_app = typer.Typer(help="The embedded testbed of namespaced hosts.")
app.add_typer(image_app, name="image")
app.add_typer(testbed_app, name="testbed")

TestbedName = Annotated[
    str, typer.Option("--testbed", "-t", help="testbed name: prefix of its namespaces")
]
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def guarded(action: Callable[[], T]) -> T:
    """Run a command body: errors become one line and an exit code; Ctrl-C exits 130."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return action()
    except VmigrateError as exc:
        err_console.print(
            f"[red]vmigrate: error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("vmigrate: interrupted; cleaned up", highlight=False)
        raise typer.Exit(130) from None


OutOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="run directory (default runs/NAME-TIME)")
]
UnsafeOption = Annotated[
    bool,
    typer.Option(
        "--unsafe",
        help="migrate a shared disk even with a cache mode that is unsafe to migrate "
        "(writeback, writethrough, unsafe); pre-flight then warns instead of failing",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a scenario key, e.g. --set migration.strategy=cold"),
]


def default_out(name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"
