"""HTML building blocks for the console: the page layout, escaped tables, forms that carry the CSRF token."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from tether.console.auth import Session

__all__ = ["e", "error_page", "form", "link", "page", "table", "when"]


def e(value: Any) -> str:
    """``value`` as escaped text ('' for None)."""
    return "" if value is None else escape(str(value))


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def link(path: str, text: Any, **query: Any) -> str:
    q = {k: v for k, v in query.items() if v is not None}
    href = path + (f"?{urlencode(q)}" if q else "")
    return f'<a href="{escape(href)}">{e(text)}</a>'


def service_path(name: str) -> str:
    ns, _, short = name.partition("/")
    return f"/console/s/{quote(ns, safe='')}/{quote(short, safe='')}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, row_names: Sequence[str] | None = None,
          empty: str = "nothing yet") -> str:
    """A table; cells are HTML already (escape text with :func:`e`)."""
    rows = list(rows)
    if not rows:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        attr = f' data-name="{e(row_names[i].lower())}"' if row_names else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def form(action: str, session: Session, fields: str, button: str, *, css: str = "", confirm: str | None = None,
         inline: bool = True) -> str:
    """A POST form with the session's CSRF token."""
    extra = f' data-confirm="{e(confirm)}"' if confirm else ""
    klass = ' class="inline"' if inline else ""
    return (f'<form method="post" action="{escape(action)}"{klass}{extra}>'
            f'<input type="hidden" name="csrf" value="{e(session.csrf)}">{fields}'
            f'<button type="submit" class="{css}">{e(button)}</button></form>')


def page(title: str, body: str, session: Session | None, *, status: int = 200, flash: str | None = None) -> web.Response:
    """The whole page: header with navigation and who is logged in, then ``body``."""
    who = ""
    if session is not None:
        logout = form("/console/logout", session, "", "Log out", css="quiet")
        who = f'<span class="who">signed in as <b id="whoami">{e(session.label)}</b> {logout}</span>'
    nav = ('<a class="brand" href="/console/services">tether</a><a href="/console/services">Services</a>'
           '<a href="/console/clusters">Clusters</a><a href="/console/calls">Calls</a><a href="/console/lineage">Lineage</a>') if session else \
        '<span class="brand">tether</span>'
    note = f'<div class="flash" id="flash">{e(flash)}</div>' if flash else ""
    html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} · tether</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="stylesheet" href="/console/static/console.css"></head>'
            f'<body><header>{nav}{who}</header><main>{note}{body}</main>'
            '<script src="/console/static/console.js"></script></body></html>')
    response = web.Response(text=html, content_type="text/html", status=status)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(session: Session | None, status: int, title: str, message: str, hint: str | None = None) -> web.Response:
    hint_html = f'<p class="muted">{e(hint)}</p>' if hint else ""
    return page(title, f'<h1>{e(title)}</h1><div class="error" id="error">{e(message)}</div>{hint_html}',
                session, status=status)
