"""The sync twin of :class:`tether.client.daemon.DaemonClient`: the same methods, blocking.

Each method sends the same :class:`tether.client.routes.Op` as its async twin and reads it the same way; only the
I/O differs: the blocking transport on the calling thread (no event loop, no thread hand-off). A client whose
transport has no sync side runs the async method on this thread's loop instead. Streams run on the background
loop (their items are handed over one by one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tether.client import routes
from tether.client.outcome import LogSink, default_log_sink, unavailable
from tether.client.transport import RETRIES, Dropped, link_dropped
from tether.protocol.headers import CALL_ID

if TYPE_CHECKING:
    from tether.client.daemon import DaemonClient
    from tether.specs import ServiceSpec

__all__ = ["SyncDaemonClient"]


class SyncDaemonClient:
    """``client.sync``: every route of a :class:`DaemonClient` as a blocking method."""

    __slots__ = ("_client",)

    def __init__(self, client: DaemonClient) -> None:
        self._client = client

    def send(self, op: routes.Op) -> Any:
        """Send one :class:`routes.Op` and read its answer (raises the typed tether error of a 4xx/5xx)."""
        client = self._client
        transport = client._sync
        if transport is None:
            from tether.client.loop import run_sync  # asyncio, for a transport with no sync side only

            return run_sync(client.send(op))
        resp = transport.send(op.method, op.path, op.request_headers(client._headers), op.body, timeout=op.timeout)
        try:
            body = resp.read()
        finally:
            resp.close()
        return op.answer(resp.status, resp.headers, body)

    def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                params: dict[str, str] | None = None, content_type: str | None = None,
                timeout: float | None = 60.0) -> Any:
        return self.send(routes.raw(method, path, json_body=json_body, data=data, params=params,
                                    content_type=content_type, timeout=timeout))

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        return dict(self.send(routes.health(timeout)))

    def daemon_status(self) -> dict[str, Any]:
        return dict(self.send(routes.daemon_status()))

    def services(self) -> list[dict[str, Any]]:
        return list(self.send(routes.services()))

    def envs(self) -> dict[str, dict[str, Any]]:
        return dict(self.send(routes.envs()))

    def deploy(self, spec: ServiceSpec | dict[str, Any], *, replace_env: bool = False) -> dict[str, Any]:
        return dict(self.send(routes.deploy(spec, replace_env=replace_env)))

    def status(self, call_id: str) -> dict[str, Any]:
        return dict(self.send(routes.status(call_id)))

    def cancel(self, call_id: str) -> dict[str, Any]:
        return dict(self.send(routes.cancel(call_id)))

    def logs(self, call_id: str, since: int = 0) -> list[dict[str, Any]]:
        return list(self.send(routes.logs(call_id, since)))

    def put_object(self, key: str, value: Any, *, env: str = "default") -> dict[str, Any]:
        return dict(self.send(routes.put_object(key, value, env)))

    def get_object(self, key: str) -> Any:
        return self.send(routes.get_object(key))

    def keys(self) -> list[str]:
        return list(self.send(routes.keys()))

    def delete_object(self, key: str) -> dict[str, Any]:
        return dict(self.send(routes.delete_object(key)))

    def rename_object(self, key: str, to: str) -> dict[str, Any]:
        return dict(self.send(routes.rename_object(key, to)))

    def delete_env(self, env: str) -> dict[str, Any]:
        return dict(self.send(routes.delete_env(env)))

    def set_autostop(self, mins: float | None = routes.UNSET, *, paused: bool | None = None) -> dict[str, Any]:
        return dict(self.send(routes.set_autostop(mins, paused)))

    # -- calls -----------------------------------------------------------------------------------------------------
    def call(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *, call_id: str,
             on_log: LogSink | None = default_log_sink, caller: str | None = None, expect: str | None = None, lend: bool = False) -> Any:
        """Run a call to completion (:meth:`DaemonClient.call_sync`)."""
        return self._client.call_sync(name, method, args, kwargs, call_id=call_id, on_log=on_log, caller=caller, expect=expect,
                                      lend=lend)

    def spawn(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
              call_id: str | None = None, caller: str | None = None, expect: str | None = None) -> str:
        """Start a call; its id once the daemon registered it (:meth:`DaemonClient.spawn`)."""
        op = self._client.spawn_op(name, method, args, kwargs, call_id=call_id, caller=caller, expect=expect)
        call_id = op.headers[CALL_ID] if op.headers else ""
        try:
            from tenacity import (  # here: off a fresh process's imports
                Retrying,
                retry_if_exception,
                stop_after_attempt,
                wait_exponential,
            )
            for attempt in Retrying(stop=stop_after_attempt(RETRIES), wait=wait_exponential(multiplier=0.1, max=2),
                                    retry=retry_if_exception(link_dropped), reraise=True):
                with attempt:
                    return str(self.send(op))
        except Dropped as exc:
            unavailable(exc, call_id)
            raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def attach(self, call_id: str, *, on_log: LogSink | None = default_log_sink) -> Any:
        """Wait for a call started elsewhere: its logs, then its result or error."""
        return self._client.call_sync("", None, (), {}, call_id=call_id, on_log=on_log, attach=True)

    def stream(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
               call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None, expect: str | None = None
               ) -> Iterator[Any]:
        """A remote generator's items as they come (the stream runs on the background loop)."""
        from tether.client.loop import iterate_sync  # a stream runs on the background loop (asyncio)

        return iterate_sync(self._client.stream(name, method, args, kwargs, call_id=call_id, on_log=on_log,
                                                caller=caller, expect=expect))
