"""A call's page and its live log tail: server-sent events from the daemon that runs the call.

The daemon is found by cluster name in this server's own ``$TETHER_HOME/clusters`` state (its token never comes
from the registry). A call the registry has not recorded yet (still running) is shown only when the daemon says it
belongs to the service the page is about (the service name its saved config deploys), so read access to one
service never opens another's logs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tether.client import DaemonClient
from tether.compute import get_backend
from tether.compute.state import load_state, state_backend
from tether.console.auth import Session
from tether.console.html import e, form, link, page, service_path, when
from tether.errors import AuthError, NotFound, TetherError
from tether.protocol import reports
from tether.registry.models import LineageCall, level_at_least
from tether.registry.names import parse_ref
from tether.registry.store import Store
from tether.specs import ClusterSpec

__all__ = ["Tail", "daemon_for", "event_text"]

POLL_S = 0.25
DONE = {"succeeded", "failed", "cancelled", "done", "error", "lost"}


def daemon_for(cluster: str | None) -> DaemonClient | None:
    """A client of cluster ``cluster``'s daemon when this machine's state knows it and it runs, else None."""
    state = load_state(cluster) if cluster else None
    if not state:
        return None
    try:
        backend: Any = get_backend(state_backend(state))
        spec = ClusterSpec.model_validate(state.get("spec") or {"name": cluster})
        handle = backend.handle(spec) if hasattr(backend, "handle") else None
    except (TetherError, ValueError):
        return None
    if handle is None:
        return None
    return DaemonClient(handle.endpoint, token=handle.token, tls_fingerprint=handle.tls_fingerprint,
                        unix_socket=getattr(handle, "unix_socket", None))


def event_text(event: dict[str, Any]) -> str | None:
    """One log event as a line of text (None for reports, which are not log lines)."""
    if reports.is_report(event):
        return None
    for key in ("text", "msg", "message", "line"):
        if isinstance(event.get(key), str):
            return str(event[key]).rstrip("\n")
    return json.dumps(event, default=str)


class Tail:
    """The call page and its ``/logs`` event stream."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _target(self, request: web.Request, s: Session) -> tuple[Any, LineageCall | None, str | None, str]:
        """(service ref, the recorded call or None, cluster name, daemon service name) after the access check."""
        ns, name, call_id = (request.match_info[k] for k in ("namespace", "name", "call_id"))
        ref = parse_ref(f"{ns}/{name}", allow_selector=False)
        latest = await asyncio.to_thread(self.store.get, ref, principal=s.principal)  # read access, or AuthError
        try:
            record: LineageCall | None = await asyncio.to_thread(self.store.call, ref, call_id, principal=s.principal)
        except NotFound:
            record = None
        config = latest.config
        cluster = (record.cluster if record else None) or (config.get("cluster") or {}).get("name")
        service_name = str((config.get("service") or {}).get("name") or config.get("name") or ref.name)
        return ref, record, cluster, service_name

    async def _live(self, client: DaemonClient | None, call_id: str, service_name: str) -> dict[str, Any] | None:
        if client is None:
            return None
        try:
            status = await client.status(call_id)
        except TetherError:
            return None
        return status if status.get("service") == service_name else None

    async def page(self, request: web.Request, s: Session) -> web.Response:
        ref, record, cluster, service_name = await self._target(request, s)
        call_id = request.match_info["call_id"]
        client = daemon_for(cluster)
        live = await self._live(client, call_id, service_name)
        if record is None and live is None:
            raise NotFound(f"no call {call_id!r} of {ref.full!r}", hint="calls are recorded when they end; a "
                           "running one shows while its daemon is reachable from this server")
        rows = []
        if record is not None:
            rows = [("service", link(service_path(ref.full), record.ref)), ("code", e(record.code_hash)),
                    ("import path", e(record.import_path)), ("cluster", e(record.cluster)),
                    ("caller", e(record.caller)), ("run", e(record.run_id)), ("duration", e(f"{record.duration_s:.3f}s")),
                    ("outcome", e(record.outcome)), ("started", e(when(record.started_at))),
                    ("read", "<br>".join(link("/console/lineage", a, uri=a.uri, version=a.version) for a in record.inputs)),
                    ("wrote", "<br>".join(link("/console/lineage", a, uri=a.uri, version=a.version)
                                          for a in record.outputs))]
        else:
            rows = [("service", link(service_path(ref.full), ref.full)), ("cluster", e(cluster))]
        level = await asyncio.to_thread(self.store.access_level, ref, principal=s.principal)
        if live is not None and not live.get("finished") and level_at_least(level, "owner"):
            rows.append(("", form(f"{service_path(ref.full)}/calls/{quote(call_id, safe='')}/cancel", s, "",
                                  "Cancel call", css="danger", confirm="Cancel this call?")))
        details = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        if live is not None:
            src = f"{service_path(ref.full)}/calls/{quote(call_id, safe='')}/logs"
            logs = (f'<h2>Log <span class="muted">(live from {e(cluster)}: <span id="log-state">'
                    f'{e(live.get("state"))}</span>)</span></h2>'
                    f'<pre class="log" id="log-tail" data-src="{e(src)}"></pre>')
        else:
            logs = '<p class="muted" id="no-tail">The daemon that ran this call is not reachable from here (or no ' \
                   'longer holds it): no live log.</p>'
        return page(f"call {call_id[:12]}", f'<h1>Call <code>{e(call_id)}</code></h1><table>{details}</table>{logs}',
                    s)

    async def logs(self, request: web.Request, s: Session) -> web.StreamResponse:
        ref, _, cluster, service_name = await self._target(request, s)
        call_id = request.match_info["call_id"]
        client = daemon_for(cluster)
        if await self._live(client, call_id, service_name) is None or client is None:
            raise NotFound(f"call {call_id!r} of {ref.full!r} is not on a reachable daemon")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        seen, state = 0, ""
        try:
            while True:
                status = await client.status(call_id)
                events = await client.logs(call_id, since=seen)
                seen += len(events)
                for event in events:
                    text = event_text(event)
                    if text is not None:
                        await send("line", {"text": text})
                if status.get("state") != state:
                    state = str(status.get("state"))
                    await send("state", {"state": state})
                if status.get("finished"):
                    tail = await client.logs(call_id, since=seen)  # lines that came with its end
                    for event in tail:
                        text = event_text(event)
                        if text is not None:
                            await send("line", {"text": text})
                    await send("end", {"state": state})
                    break
                await asyncio.sleep(POLL_S)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except TetherError as exc:
            await send("end", {"state": f"log unavailable: {exc}"})
        return response

    async def cancel(self, request: web.Request, s: Session, data: Any) -> str:
        """Cancel a running call (owner access to its service, as the daemon asks of anyone but its starter)."""
        ref, _, cluster, service_name = await self._target(request, s)
        level = await asyncio.to_thread(self.store.access_level, ref, principal=s.principal)
        if not level_at_least(level, "owner"):
            raise AuthError(f"cancelling a call of {ref.full!r} needs owner access", details={"needed": "owner"})
        call_id = request.match_info["call_id"]
        client = daemon_for(cluster)
        if client is None or await self._live(client, call_id, service_name) is None:
            raise NotFound(f"call {call_id!r} of {ref.full!r} is not on a reachable daemon")
        await client.cancel(call_id)
        return f"cancelled call {call_id}"
