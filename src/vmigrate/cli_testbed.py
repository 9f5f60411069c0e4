"""`vmigrate image …` and `vmigrate testbed …`: the guest image and the embedded testbed."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from vmigrate.cli_base import (
    TestbedName,
    console,
    err_console,
    guarded,
    image_app,
    testbed_app,
)
from vmigrate.testbed.network import DEFAULT_HYPERVISORS, MAX_HYPERVISORS


@image_app.command("build")
def image_build(
    force: Annotated[bool, typer.Option("--force", help="rebuild even if cached")] = False,
) -> None:
    """Build (or reuse) the guest image from Debian packages; print where it is."""
    from vmigrate.guest.build import build_image

    image = guarded(lambda: build_image(force, lambda s: console.print(f"[cyan]•[/cyan] {s}")))
    console.print(f"guest image {image.digest[:12]}: kernel {image.kernel_version}")
    console.print(f"  kernel {image.kernel}\n  initrd {image.initrd}")


@testbed_app.command("up")
def testbed_up(
    name: TestbedName = "vmig",
    bandwidth_mbit: Annotated[
        float, typer.Option(help="rate of every host's link (tbf), Mbit/s", min=0.001)
    ] = 1000.0,
    libvirt: Annotated[
        bool, typer.Option("--libvirt", help="also run a libvirtd on each hypervisor host")
    ] = False,
    hypervisors: Annotated[
        int | None,
        typer.Option(
            help=f"hypervisor hosts, {DEFAULT_HYPERVISORS} to {MAX_HYPERVISORS}: the source, "
            "the destination, then hv3, hv4, ... (default: as many as the testbed has, "
            f"{DEFAULT_HYPERVISORS} for a new one)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create the hosts (namespaces), the switch, the shaped links and the NFS server.

    On a testbed that is up: re-shape the links, add or remove hosts (--hypervisors)."""
    from vmigrate.testbed.testbed import Testbed

    def body() -> None:
        testbed = Testbed(name)
        testbed.up(bandwidth_mbit, _progress, libvirt, hypervisors)
        _print_status(testbed.status())

    guarded(body)


@testbed_app.command("down")
def testbed_down(name: TestbedName = "vmig") -> None:
    """Remove every namespace, process and file of the testbed (also after a killed run)."""
    from vmigrate.testbed.testbed import Testbed

    problems = guarded(lambda: Testbed(name).down())
    if problems:
        for line in problems:
            err_console.print(f"[red]vmigrate: could not remove:[/red] {line}")
        raise typer.Exit(1)
    console.print(f"testbed {name}: nothing left")


@testbed_app.command("recover")
def testbed_recover(
    name: TestbedName = "vmig",
    wait_s: Annotated[
        float, typer.Option(help="how long the migration may go on without us first", min=0)
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Find the VM after vmigrate died mid-run, and settle it on one host.

    The hypervisor finishes (or, after --wait-s, cancels) the migration the dead run started;
    the stale copy and the dead run's clients are stopped; the guest is asked whether it serves
    and whether its memory and disk writes survived. The testbed stays up (`vmigrate testbed
    down` removes it). Exit 0 when the VM runs on a host and is intact, 1 otherwise.
    """
    from vmigrate.recover import recover
    from vmigrate.testbed.testbed import Testbed

    found = guarded(lambda: asyncio.run(recover(Testbed(name), wait_s)))
    if as_json:
        print(json.dumps(found.as_dict(), indent=2))
    else:
        for action in found.actions:
            console.print(f"[cyan]•[/cyan] {action}", highlight=False)
        console.print(
            f"the VM runs on: [bold]{found.vm_on}[/bold]; memory and disk intact: "
            + ("[green]yes[/green]" if found.intact else "[red]no[/red]"),
            highlight=False,
        )
    if found.vm_on == "none" or not found.intact:
        raise typer.Exit(1)


@testbed_app.command("status")
def testbed_status(
    name: TestbedName = "vmig",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show the testbed's hosts, addresses and processes."""
    from vmigrate.testbed.testbed import Testbed

    status = guarded(lambda: Testbed(name).status())
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    if not status["up"]:
        raise typer.Exit(1)


def _progress(text: str) -> None:
    console.print(f"[cyan]•[/cyan] {text}")


def _print_status(status: dict[str, Any]) -> None:
    state = "[green]up[/green]" if status["up"] else "[red]down[/red]"
    table = Table(
        title=f"testbed {status['name']}: {state}  ({status['bandwidth_mbit']} Mbit/s, "
        f"{status['hypervisors']} hypervisor hosts)"
    )
    for column in ("host", "namespace", "address", "present"):
        table.add_column(column)
    for role, host in status["hosts"].items():
        table.add_row(role, host["netns"], host["ip"], "yes" if host["present"] else "no")
    console.print(table)
    for proc in status["processes"]:
        alive = "alive" if proc["alive"] else "[red]gone[/red]"
        console.print(f"  process {proc['label']} pid {proc['pid']}: {alive}")
    for role, uri in status.get("libvirt", {}).items():
        console.print(f"  libvirt {role}: {uri}", soft_wrap=True)
