"""Where this process keeps secrets in the registry: the team server's vault routes when ``TETHER_REGISTRY_URL``
is set (token from ``TETHER_TOKEN``), else the vault of the local registry database (see
:mod:`tether.registry.vault`). One interface: ``put`` / ``get`` / ``delete`` / ``share``."""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, Protocol

from tether.home import tether_home
from tether.registry.names import Ref, parse_ref
from tether.registry.remote import RemoteBackend, require_token

__all__ = ["RemoteVault", "VaultAccess", "open_vault", "secret_ref"]


class VaultAccess(Protocol):
    def put(self, ref: Ref, values: dict[str, str], provider: str | None, *, by: str) -> int: ...

    def get(self, ref: Ref) -> dict[str, Any]: ...

    def delete(self, ref: Ref) -> int: ...

    def share(self, ref: Ref, to: str, level: str) -> None: ...


class RemoteVault:
    """The team server's ``/v1/secrets`` routes."""

    def __init__(self, url: str, token: str) -> None:
        self.remote = RemoteBackend(url, token)

    @staticmethod
    def _path(ref: Ref) -> str:
        return f"/v1/secrets/{urllib.parse.quote(ref.namespace, safe='')}/{urllib.parse.quote(ref.name, safe='')}"

    def put(self, ref: Ref, values: dict[str, str], provider: str | None, *, by: str) -> int:
        return int(self.remote._request("PUT", self._path(ref), {"values": values, "provider": provider})["version"])

    def get(self, ref: Ref) -> dict[str, Any]:
        return dict(self.remote._request("GET", self._path(ref)))

    def delete(self, ref: Ref) -> int:
        return int(self.remote._request("DELETE", self._path(ref))["deleted"])

    def share(self, ref: Ref, to: str, level: str) -> None:
        self.remote._request("POST", self._path(ref) + "/grants", {"principal": to, "access_level": level})


class _LocalVault:
    """The local registry database's vault, acting as this user (the owner of everything in it)."""

    def __init__(self) -> None:
        from tether.registry.vault import Vault  # SQLAlchemy: only when a secret goes to the local registry

        db = os.environ.get("TETHER_REGISTRY_DB") or str(tether_home() / "registry.db")
        self.vault = Vault.open(db)

    def put(self, ref: Ref, values: dict[str, str], provider: str | None, *, by: str) -> int:
        return self.vault.put(ref, values, provider, by=by)

    def get(self, ref: Ref) -> dict[str, Any]:
        return self.vault.get(ref)

    def delete(self, ref: Ref) -> int:
        return self.vault.delete(ref)

    def share(self, ref: Ref, to: str, level: str) -> None:
        self.vault.share(ref, to, level)


def open_vault() -> VaultAccess:
    """The vault the environment selects (the team server, or the local registry)."""
    url = os.environ.get("TETHER_REGISTRY_URL")
    if url:
        return RemoteVault(url, require_token(os.environ.get("TETHER_TOKEN") or None, url))
    return _LocalVault()


def secret_ref(name: str) -> Ref:
    """``"hf"`` → this user's (or ``TETHER_NAMESPACE``'s) secret ``hf``; ``"team/hf"`` as given."""
    return parse_ref(name, allow_selector=False)
