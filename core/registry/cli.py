"""``tether registry ...``: serve the team registry, issue tokens, and show history, usage, names as tables."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tether.errors import TetherError
from tether.registry import get_registry, tether_home

__all__ = ["registry"]


def _console() -> Console:
    return Console(width=int(os.environ.get("COLUMNS", "0")) or None, soft_wrap=False)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except TetherError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _console().print(table)


def _default_server_db() -> str:
    return os.environ.get("TETHER_REGISTRY_DB") or str(tether_home() / "registry-server.db")


@click.group("registry")
def registry() -> None:
    """Named, versioned services: history, tags, rollback, sharing, usage — and the team registry server."""


@registry.command()
@click.option(
    "--db",
    default=None,
    help="database path or URL (postgresql://...); default $TETHER_HOME/registry-server.db",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=32400, show_default=True, type=int, help="0 picks a free port")
@click.option("--ready-file", default=None, help="write {port, pid, url} as JSON here once serving")
def serve(db: str | None, host: str, port: int, ready_file: str | None) -> None:
    """Run the team registry server (token auth; tokens from `tether registry token`)."""
    from tether.registry.server import serve as run

    run(db or _default_server_db(), host=host, port=port, ready_file=ready_file)


@registry.command()
@click.argument("principal")
@click.option("--db", default=None, help="the server's database path or URL")
@click.option("--team", "teams", multiple=True, help="also make PRINCIPAL a member of this team (repeatable)")
def token(principal: str, db: str | None, teams: tuple[str, ...]) -> None:
    """Issue a bearer token for PRINCIPAL (admin; writes the server's database directly). Prints the token once."""
    from tether.registry.store import Store

    store = Store(db or _default_server_db())
    try:
        for team in teams:
            store.add_member(team, principal)
        click.echo(store.create_token(principal))
    finally:
        store.close()


@registry.command("ls")
@click.argument("namespace", required=False)
def ls(namespace: str | None) -> None:
    """Names you can read, with latest version and tags."""
    with _errors():
        entries = get_registry().list(namespace)
    rows = [
        [
            e.name,
            e.kind,
            e.latest,
            ", ".join(f"{t}→{v}" for t, v in sorted(e.tags.items())),
            e.updated_by,
            _when(e.updated_at),
        ]
        for e in entries
    ]
    _table("registry", ["name", "kind", "latest", "tags", "saved by", "saved at"], rows)


@registry.command()
@click.argument("name")
def history(name: str) -> None:
    """Every version of NAME: who saved it, when, code hash, tags."""
    with _errors():
        versions = get_registry().history(name)
    rows = [
        [
            v.version,
            v.kind,
            ", ".join(v.tags),
            v.saved_by,
            _when(v.saved_at),
            (v.code_hash or "")[:12],
            v.import_path,
            f"copy of {v.copied_from}" if v.copied_from else "",
        ]
        for v in versions
    ]
    title = versions[0].name if versions else name
    _table(title, ["version", "kind", "tags", "saved by", "saved at", "code", "import path", "note"], rows)


@registry.command()
@click.argument("name")
def usage(name: str) -> None:
    """Calls of NAME per caller and version: count, errors, durations, orchestrator runs."""
    with _errors():
        rows = get_registry().usage(name)
    _table(
        f"usage of {name}",
        ["caller", "version", "calls", "errors", "mean s", "max s", "total s", "runs", "last"],
        [
            [
                r.caller,
                r.version,
                r.calls,
                r.errors,
                f"{r.mean_s:.3f}",
                f"{r.max_s:.3f}",
                f"{r.total_s:.3f}",
                r.run_ids,
                _when(r.last_at),
            ]
            for r in rows
        ],
    )


@registry.command()
@click.argument("name")
def show(name: str) -> None:
    """Print the config of NAME (or NAME@N / NAME@tag) as JSON."""
    with _errors():
        v = get_registry().get(name)
    click.echo(json.dumps(v.model_dump(mode="json"), indent=2))


def _print_version(action: str) -> Callable[[Any], None]:
    def out(v: Any) -> None:
        click.echo(f"{action} {v.name}@{v.version}" + (f" (tags: {', '.join(v.tags)})" if v.tags else ""))

    return out


@registry.command()
@click.argument("name")
@click.argument("version", type=int)
@click.argument("tag_name", metavar="TAG")
def tag(name: str, version: int, tag_name: str) -> None:
    """Point TAG (e.g. prod) at VERSION of NAME."""
    with _errors():
        _print_version("tagged")(get_registry().tag(name, version, tag_name))


@registry.command()
@click.argument("name")
@click.argument("version", type=int)
def rollback(name: str, version: int) -> None:
    """Make VERSION of NAME the latest again (recorded as a new version copying it)."""
    with _errors():
        _print_version("rolled back: now")(get_registry().rollback(name, version))


@registry.command()
@click.argument("name")
@click.argument("principal")
@click.option(
    "--level",
    "access_level",
    type=click.Choice(["read", "write", "owner"]),
    default="read",
    show_default=True,
    help="read = call, write = save/redeploy, owner = share",
)
def share(name: str, principal: str, access_level: str) -> None:
    """Give PRINCIPAL (a user or team) access to NAME ('team/*' for a whole namespace)."""
    with _errors():
        g = get_registry().share(name, principal, access_level)
    click.echo(f"shared {g.name} with {g.principal}: {g.access_level}")


def main() -> None:
    """``python -m tether.registry``: the group on its own, until the main CLI mounts it."""
    registry(prog_name="tether registry")


if __name__ == "__main__":  # pragma: no cover
    main()
