"""``tether console``: the web console over this machine's local registry."""

from __future__ import annotations

import os

import click

from tether.home import tether_home

__all__ = ["console"]


@click.command("console")
@click.option("--db", default=None, help="registry database path or URL; default $TETHER_REGISTRY_DB or "
              "$TETHER_HOME/registry.db")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=32401, show_default=True, type=int, help="0 picks a free port")
@click.option("--ready-file", default=None, help="write {port, pid, url, token} as JSON (0600) here once serving")
def console(db: str | None, host: str, port: int, ready_file: str | None) -> None:
    """Browse your local registry in a browser: services, versions, access, usage, lineage, calls. Prints the URL
    and a one-time login token. (A team registry serves the console itself: `tether registry serve`.)"""
    from tether.console.routes import serve_local

    where = db or os.environ.get("TETHER_REGISTRY_DB") or str(tether_home() / "registry.db")
    serve_local(where, host=host, port=port, ready_file=ready_file)
