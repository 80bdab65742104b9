"""The daemon's routes as the client uses them: for each, the request to send and what its answer means. No I/O:
the async client and its sync twin send the same :class:`Op` over their own transport and read it the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from tether.client.outcome import http_error
from tether.client.payloads import loads
from tether.errors import ConfigError
from tether.protocol import headers as h

if TYPE_CHECKING:
    from tether.specs import ServiceSpec

__all__ = [
    "UNSET", "Op", "cancel", "daemon_status", "delete_env", "delete_object", "deploy", "envs", "get_object", "health", "keys",
    "logs", "put_object", "raw", "rename_object", "services", "set_autostop", "shutdown", "spawn", "status",
]

Reader = Callable[[dict[str, str], bytes], Any]


def _json(headers: dict[str, str], body: bytes) -> Any:
    return json.loads(body) if body else None


def _raw(headers: dict[str, str], body: bytes) -> Any:
    """Parsed JSON, or the bytes of a pickle body (what :meth:`DaemonClient.request` has always returned)."""
    if headers.get("content-type", "").split(";", 1)[0].strip() == h.PICKLE:
        return body if type(body) is bytes else bytes(body)  # a big body was received into a bytearray
    return _json(headers, body)


@dataclass(frozen=True, slots=True)
class Op:
    """One request to a daemon and how to read its 2xx answer (a 4xx/5xx raises the typed tether error)."""

    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None
    read: Reader = _json
    timeout: float | None = None
    headers: dict[str, str] | None = None

    def answer(self, status: int, headers: dict[str, str], body: bytes) -> Any:
        if status >= 400:
            raise http_error(status, body)
        return self.read(headers, body)

    def request_headers(self, auth: dict[str, str]) -> dict[str, str]:
        if self.content_type is None and self.headers is None:
            return auth
        out = {**auth, **(self.headers or {})}
        if self.content_type is not None:
            out["Content-Type"] = self.content_type
        return out


def _seg(value: str) -> str:
    return quote(value, safe="")


def _key(name: str) -> Reader:
    """A reader of one field of a JSON answer."""
    def read(headers: dict[str, str], body: bytes) -> Any:
        return _json(headers, body)[name]
    return read


_CALL_ID, _LOGS, _KEYS, _SERVICES = _key("call_id"), _key("logs"), _key("keys"), _key("services")
_ENVS = _key("envs")


def raw(method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
        params: dict[str, str] | None = None, content_type: str | None = None, timeout: float | None = 60.0) -> Op:
    """Any route, the way :meth:`DaemonClient.request` takes it."""
    if params:
        path += ("&" if "?" in path else "?") + urlencode(params)
    if json_body is not None:
        return Op(method, path, json.dumps(json_body).encode(), content_type or h.JSON, _raw, timeout)
    return Op(method, path, data or b"", content_type, _raw, timeout)


def health(timeout: float | None = None) -> Op:
    """``GET /health``: ``{"status": "ok", "version", "pid"}``."""
    return Op("GET", "/health", timeout=timeout)


def daemon_status() -> Op:
    """``GET /status``: version, uptime, autostop, services, workers, running calls."""
    return Op("GET", "/status")


def services() -> Op:
    """What ``tether ls`` shows: one ``{"name", "kind", "env", "version"}`` per service or object."""
    return Op("GET", "/status", read=_SERVICES)


def deploy(spec: ServiceSpec | dict[str, Any], *, replace_env: bool = False) -> Op:
    """``POST /deploy``: ``{"name", "env", "methods", "pid"}``. An env of the same name with another spec is a
    ``ConfigError`` unless ``replace_env`` (the env then restarts with this spec once its running calls end)."""
    data = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    path = "/deploy?replace_env=1" if replace_env else "/deploy"
    return Op("POST", path, json.dumps(data).encode(), h.JSON, timeout=None)


def envs() -> Op:
    """``GET /envs``: ``{name: EnvSpec as JSON}`` for every env the daemon knows."""
    return Op("GET", "/envs", read=_ENVS)


def spawn(name: str, method: str | None, body: bytes, headers: dict[str, str]) -> Op:
    """A call sent with ``Prefer: respond-async``: the daemon answers with the call id once it registered it."""
    path = f"/{name}/{method}/call" if method else f"/{name}/call"
    return Op("POST", path, body, None, _CALL_ID, headers={**headers, h.PREFER: h.RESPOND_ASYNC})


def status(call_id: str) -> Op:
    """``GET /calls/{id}?wait=0``: ``{"call_id", "service", "method", "state", "started", "finished", "seconds"}``."""
    return Op("GET", f"/calls/{_seg(call_id)}?wait=0")


def cancel(call_id: str) -> Op:
    """``POST /calls/{id}/cancel`` (a no-op on a finished call): the call's status."""
    return Op("POST", f"/calls/{_seg(call_id)}/cancel")


def logs(call_id: str, since: int = 0) -> Op:
    """``GET /calls/{id}/logs?since=N``: the log events after the first ``since``."""
    if since < 0:
        raise ConfigError(f"since={since}: the number of log events already seen, 0 or more")
    query = f"?since={since}" if since else ""
    return Op("GET", f"/calls/{_seg(call_id)}/logs{query}", read=_LOGS)


def put_object(key: str, value: Any, env: str = "default") -> Op:
    """``PUT /objects/{key}?env=``: ``value`` cloudpickled into the env's worker."""
    import cloudpickle  # here: off a fresh process's imports
    body = cloudpickle.dumps(value, protocol=5)
    return Op("PUT", f"/objects/{_seg(key)}?{urlencode({'env': env})}", body, h.PICKLE, timeout=None)


def _unpickle(headers: dict[str, str], body: bytes) -> Any:
    return loads(body)


def get_object(key: str) -> Op:
    """``GET /objects/{key}``: the object (unpickled here)."""
    return Op("GET", f"/objects/{_seg(key)}", read=_unpickle, timeout=None)


def keys() -> Op:
    """``GET /objects``: the names of every service and object."""
    return Op("GET", "/objects", read=_KEYS)


def delete_object(key: str) -> Op:
    """``DELETE /objects/{key}``: a service or an object."""
    return Op("DELETE", f"/objects/{_seg(key)}")


def rename_object(key: str, to: str) -> Op:
    return Op("POST", f"/objects/{_seg(key)}/rename", json.dumps({"to": to}).encode(), h.JSON)


def delete_env(env: str) -> Op:
    """``DELETE /envs/{env}``: the env's worker and everything in it."""
    return Op("DELETE", f"/envs/{_seg(env)}")


UNSET: Any = object()
"""``set_autostop(mins=UNSET)``: leave the autostop minutes as they are."""


def set_autostop(mins: float | None = UNSET, paused: bool | None = None) -> Op:
    """``POST /autostop``: ``mins`` (None: never), and/or ``paused``."""
    data: dict[str, Any] = {}
    if mins is not UNSET:
        data["mins"] = mins
    if paused is not None:
        data["paused"] = paused
    return Op("POST", "/autostop", json.dumps(data).encode(), h.JSON)


def shutdown() -> Op:
    return Op("POST", "/shutdown")
