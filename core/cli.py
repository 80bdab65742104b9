"""The ``tether`` command line: run the local daemon, list services, read a call's logs, use the registry."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tether.api.calls import call
from tether.api.loading import cluster
from tether.errors import TetherError
from tether.registry.cli import registry

console = Console()


def _cluster(name: str) -> Any:
    return cluster(name=name)


@click.group()
@click.version_option(package_name="tether")
def main() -> None:
    """tether: functions and classes as services on compute you own."""


@main.group()
def server() -> None:
    """Start, stop and inspect a cluster's daemon (default: the embedded local one)."""


@server.command("start")
@click.option("--cluster", "name", default="local", show_default=True)
def server_start(name: str) -> None:
    c = _cluster(name).up_if_not()
    console.print(f"[green]up[/green] {c.name} at {c.endpoint}")


@server.command("stop")
@click.option("--cluster", "name", default="local", show_default=True)
@click.option("--teardown", is_flag=True, help="also delete everything the cluster holds")
def server_stop(name: str, teardown: bool) -> None:
    c = _cluster(name)
    c.teardown() if teardown else c.stop()
    console.print(f"{'down' if teardown else 'stopped'} {name}")


@server.command("status")
@click.option("--cluster", "name", default="local", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def server_status(name: str, as_json: bool) -> None:
    c = _cluster(name)
    state = c.status()
    if state != "up":
        console.print(f"{name}: {state}")
        return
    info = c.connected().daemon_status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    console.print(f"{name}: up at {c.endpoint} (pid {info['pid']}, up {info['uptime']:.0f}s, "
                  f"{len(info['running_calls'])} running calls)")
    table = Table("env", "pid", "alive")
    for w in info["workers"]:
        table.add_row(w["env"], str(w["pid"]), str(w["alive"]))
    console.print(table)


@main.command("ls")
@click.option("--cluster", "name", default="local", show_default=True)
def ls(name: str) -> None:
    """Services and objects on a cluster."""
    table = Table("name", "kind", "env", "version")
    for row in _cluster(name).connected().ls():
        table.add_row(row["name"], row["kind"], row["env"], str(row.get("version") or ""))
    console.print(table)


@main.command("logs")
@click.argument("call_id")
@click.option("--cluster", "name", default="local", show_default=True)
def logs(call_id: str, name: str) -> None:
    """The logs of a call."""
    for event in call(call_id, _cluster(name)).logs():
        if "text" in event:
            click.echo(event["text"], nl=False)
        else:
            click.echo(f"{event.get('name')}: {event.get('msg')}")


main.add_command(registry)


def run() -> None:
    """Entry point: typed tether errors become a one-line message and exit code 1."""
    try:
        main(standalone_mode=True)
    except TetherError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    run()
