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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: str | None) -> float | None:
    """``3600``, ``90m``, ``12h``, ``30d`` → seconds (None: no expiry)."""
    if value is None:
        return None
    text = value.strip().lower()
    unit = _UNITS.get(text[-1:])
    try:
        number = float(text[:-1] if unit else text)
    except ValueError:
        raise click.BadParameter(f"{value!r}: a number of seconds, or with s/m/h/d (e.g. 30d)") from None
    if number <= 0:
        raise click.BadParameter("must be positive")
    return number * (unit or 1)


@registry.command()
@click.argument("principal")
@click.option("--db", default=None, help="the server's database path or URL")
@click.option("--team", "teams", multiple=True, help="also make PRINCIPAL a member of this team (repeatable)")
@click.option("--expires-in", default=None, help="the token stops working after this: seconds, or 90m / 12h / 30d")
def token(principal: str, db: str | None, teams: tuple[str, ...], expires_in: str | None) -> None:
    """Issue a bearer token for PRINCIPAL (admin; writes the server's database directly). Prints the token once."""
    from tether.registry.store import Store

    seconds = _seconds(expires_in)
    store = Store(db or _default_server_db())
    try:
        for team in teams:
            store.add_member(team, principal)
        click.echo(store.create_token(principal, expires_in=seconds))
    finally:
        store.close()


@registry.command()
@click.argument("principal", required=False)
@click.option("--db", default=None, help="the server's database path or URL")
@click.option("--token", "token_value", default=None, help="revoke this one token (else every token of PRINCIPAL)")
def revoke(principal: str | None, db: str | None, token_value: str | None) -> None:
    """Revoke every token of PRINCIPAL, or one --token (admin; writes the server's database directly). The server
    refuses them from its next request on."""
    from tether.registry.store import Store

    if (principal is None) == (token_value is None):
        raise click.UsageError("give PRINCIPAL or --token")
    store = Store(db or _default_server_db())
    try:
        n = store.revoke_tokens(token=token_value, principal=principal)
    finally:
        store.close()
    click.echo(f"revoked {n} token{'s' if n != 1 else ''}")


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


@registry.command()
@click.argument("name")
@click.argument("principal")
def unshare(name: str, principal: str) -> None:
    """Remove PRINCIPAL's grant on NAME ('team/*' for the namespace grant)."""
    with _errors():
        n = get_registry().unshare(name, principal)
    click.echo(f"removed {principal}'s grant on {name}" if n else f"{principal} had no grant on {name}")


def main() -> None:
    """``python -m tether.registry``: the group on its own, until the main CLI mounts it."""
    registry(prog_name="tether registry")


if __name__ == "__main__":  # pragma: no cover
    main()
