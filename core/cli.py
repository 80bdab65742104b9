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
from tether.compute.state import load_state, state_backend
from tether.console.cli import console as console_command
from tether.errors import TetherError
from tether.home import clusters_dir
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


@main.group("cluster")
def cluster_group() -> None:
    """List, bring up, stop, inspect and restart clusters (local, ssh, sky)."""


def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


@cluster_group.command("list")
def cluster_list() -> None:
    """Every cluster brought up from this TETHER_HOME, with its backend, hosts and state."""
    table = Table("name", "backend", "hosts", "state")
    for path in sorted(clusters_dir().glob("*.json")):
        st = load_state(path.stem)
        if st is None or path.name == "endpoints.json":
            continue
        try:
            state = str(_cluster(path.stem).status())
        except TetherError as exc:
            state = f"unreachable ({type(exc).__name__})"
        spec = st.get("spec") or {}
        hosts = ", ".join(spec.get("host") or st.get("hosts") or []) or "127.0.0.1"
        table.add_row(path.stem, state_backend(st), hosts, state)
    console.print(table)


@cluster_group.command("up")
@click.argument("name")
def cluster_up(name: str) -> None:
    """Bring a known cluster up (idempotent)."""
    c = _cluster(name).up_if_not()
    console.print(f"[green]up[/green] {c.name} at {c.endpoint}")


@cluster_group.command("down")
@click.argument("name")
@click.option("--stop", "stop_only", is_flag=True, help="stop the daemon but keep what it holds")
def cluster_down(name: str, stop_only: bool) -> None:
    """Tear a cluster down (or only stop it)."""
    c = _cluster(name)
    c.stop() if stop_only else c.teardown()
    console.print(f"{'stopped' if stop_only else 'down'} {name}")


@cluster_group.command("restart")
@click.argument("name")
def cluster_restart(name: str) -> None:
    """Restart a cluster's daemon; its services come back."""
    c = _cluster(name).restart_server()
    console.print(f"[green]restarted[/green] {name} at {c.endpoint}")


@cluster_group.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def cluster_status(name: str, as_json: bool) -> None:
    """State, nodes (CPU, memory, GPUs) and per-worker CPU and memory."""
    details = _cluster(name).status().details()
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    console.print(f"{name}: {details['state']}")
    if details["state"] != "up":
        return
    nodes = Table("node", "cpus", "load", "memory free", "gpus")
    for n in details["nodes"]:
        gpus = ", ".join(f"#{g['index']} {g['utilization']}% {_fmt_bytes(g['memory_used'])}/"
                         f"{_fmt_bytes(g['memory_total'])}" for g in n.get("gpus", [])) or "-"
        nodes.add_row(n["host"], str(n.get("cpus")), f"{n['load'][0]:.2f}",
                      f"{_fmt_bytes(n.get('memory_available'))}/{_fmt_bytes(n.get('memory_total'))}", gpus)
    console.print(nodes)
    workers = Table("env", "pid", "alive", "cpu %", "memory", "gpu memory")
    for w in details["workers"]:
        workers.add_row(w["env"], str(w["pid"]), str(w["alive"]), str(w.get("cpu_percent", "-")),
                        _fmt_bytes(w.get("rss_bytes")), _fmt_bytes(w.get("gpu_memory_bytes")))
    console.print(workers)


@main.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--node", default=None, help="node index or host (default: the head)")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh_cmd(name: str, node: str | None, command: tuple[str, ...]) -> None:
    """A shell on a cluster's node (or run COMMAND there)."""
    where: int | str | None = int(node) if node and node.isdigit() else node
    sys.exit(_cluster(name).ssh(where, " ".join(command) or None))


main.add_command(registry)
main.add_command(console_command)


def run() -> None:
    """Entry point: typed tether errors become a one-line message and exit code 1."""
    try:
        main(standalone_mode=True)
    except TetherError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    run()
