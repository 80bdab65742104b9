"""HTTP client of the team registry (``tether registry serve``), used when ``TETHER_REGISTRY_URL`` is set."""

from __future__ import annotations

import builtins
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pydantic import TypeAdapter
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from tether.errors import AuthError, TetherError, error_from_wire
from tether.registry.models import (
    Artifact,
    CallRecord,
    Grant,
    LineageCall,
    LineageGraph,
    ServiceEntry,
    UsageRow,
    Version,
)
from tether.registry.names import Ref

__all__ = ["RemoteBackend"]

_VERSIONS = TypeAdapter(list[Version])
_ENTRIES = TypeAdapter(list[ServiceEntry])
_USAGE = TypeAdapter(list[UsageRow])
_GRANTS = TypeAdapter(list[Grant])
_CALLS = TypeAdapter(list[CallRecord])


def _json_only(payload: Any) -> dict[str, Any]:
    """A server's wire error without its ``exc`` field: a pickled exception is code, and nothing that came from the
    registry is ever unpickled here (the error is rebuilt from its type name, message, hint and details)."""
    err = payload.get("error", payload) if isinstance(payload, dict) else {}
    if not isinstance(err, dict):
        err = {"type": "TetherError", "message": str(err)[:500]}
    return {"error": {k: v for k, v in err.items() if k != "exc"}}


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TetherError) and exc.retryable


class RemoteBackend:
    """Speaks the team server's JSON API; errors come back as the server's typed ``TetherError``."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @retry(
        retry=retry_if_exception(_retryable),
        wait=wait_random_exponential(multiplier=0.1, max=2),
        stop=stop_after_attempt(4),
        reraise=True,
    )
    def _request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body, default=str).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": {"type": "TetherError", "message": raw.decode(errors="replace")[:500]}}
            raise error_from_wire(_json_only(payload), status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise TetherError(
                f"registry server {self.url} unreachable: {exc}",
                hint="check TETHER_REGISTRY_URL and that `tether registry serve` runs",
                retryable=True,
            ) from None

    @staticmethod
    def _path(ref: Ref, *rest: str) -> str:
        parts = [ref.namespace, ref.name, *rest]
        return "/v1/services/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)

    def whoami(self) -> str:
        """The principal the token belongs to."""
        return str(self._request("GET", "/v1/whoami")["principal"])

    def save(self, ref: Ref, config: dict[str, Any], *, by: str, code_hash: str | None = None) -> Version:
        body = {"config": config, "code_hash": code_hash}
        return Version.model_validate(self._request("POST", self._path(ref, "versions"), body))

    def get(self, ref: Ref) -> Version:
        selector = str(ref.version) if ref.version is not None else ref.tag or "latest"
        return Version.model_validate(self._request("GET", self._path(ref, "versions", selector)))

    def history(self, ref: Ref) -> builtins.list[Version]:
        return _VERSIONS.validate_python(self._request("GET", self._path(ref, "versions")))

    def rollback(self, ref: Ref, version: int, *, by: str) -> Version:
        return Version.model_validate(
            self._request("POST", self._path(ref, "rollback"), {"version": version})
        )

    def tag(self, ref: Ref, version: int, tag: str, *, by: str) -> Version:
        return Version.model_validate(
            self._request("PUT", self._path(ref, "tags", tag), {"version": version})
        )

    def share(self, ref: Ref, to: str, level: str, *, by: str) -> Grant:
        body = {"principal": to, "access_level": level}
        return Grant.model_validate(self._request("POST", self._path(ref, "grants"), body))

    def unshare(self, ref: Ref, to: str, *, by: str) -> int:
        path = self._path(ref, "grants", to)
        return int(self._request("DELETE", path)["removed"])

    def revoke_token(self) -> int:
        """Revoke the token this client uses; later requests with it are refused."""
        return int(self._request("DELETE", "/v1/tokens/self")["revoked"])

    def grants(self, ref: Ref) -> builtins.list[Grant]:
        return _GRANTS.validate_python(self._request("GET", self._path(ref, "grants")))

    def record_calls(self, records: builtins.list[CallRecord]) -> int:
        body = {"records": [r.model_dump(mode="json") for r in records]}
        return int(self._request("POST", "/v1/calls", body)["stored"])

    def usage(self, ref: Ref) -> builtins.list[UsageRow]:
        return _USAGE.validate_python(self._request("GET", self._path(ref, "usage")))

    def calls(self, ref: Ref, *, limit: int = 100) -> builtins.list[CallRecord]:
        return _CALLS.validate_python(self._request("GET", self._path(ref, "calls"), query={"limit": limit}))

    def list(self, namespace: str | None = None) -> builtins.list[ServiceEntry]:
        query = {"namespace": namespace} if namespace else None
        return _ENTRIES.validate_python(self._request("GET", "/v1/services", query=query))

    def lineage(self, artifact: Artifact, *, depth: int = 20) -> LineageGraph:
        query: dict[str, Any] = {"uri": artifact.uri, "depth": depth}
        if artifact.version is not None:
            query["version"] = artifact.version
        return LineageGraph.model_validate(self._request("GET", "/v1/lineage", query=query))

    def dependents(self, ref: Ref, *, depth: int = 20) -> LineageGraph:
        query: dict[str, Any] = {"depth": depth}
        selector = str(ref.version) if ref.version is not None else ref.tag
        if selector:
            query["version"] = selector
        return LineageGraph.model_validate(self._request("GET", self._path(ref, "dependents"), query=query))

    def call(self, ref: Ref, call_id: str) -> LineageCall:
        return LineageCall.model_validate(self._request("GET", self._path(ref, "calls", call_id)))

    def close(self) -> None:
        pass


def require_token(token: str | None, url: str) -> str:
    """The team server always needs a token; say how to get one."""
    if not token:
        raise AuthError(
            f"TETHER_REGISTRY_URL is {url} but TETHER_TOKEN is not set",
            hint="ask the registry admin for a token (`tether registry token <you> --db ...`) and export TETHER_TOKEN",
            details={"needed": "token"},
        )
    return token
