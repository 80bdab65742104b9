"""What identifies a deployment of a service, for a call to say which one it expects (header ``X-Tether-Expect``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.specs import ServiceSpec

__all__ = ["deployment_id", "expected", "runs_version"]


def deployment_id(spec: ServiceSpec | None) -> str | None:
    """``v<version>`` for a saved version, ``h:<code hash>`` for an ad-hoc deploy of code from a tree; None when
    nothing identifies it (code by value, instances: their state is what they are)."""
    if spec is None:
        return None
    return expected(spec.kind, spec.version, spec.code.code_hash)


def expected(kind: str, version: int | None, code_hash: str | None) -> str | None:
    """:func:`deployment_id` of a spec given as its fields (a saved config read without building its model)."""
    if kind == "instance":
        return None
    if version is not None:
        return f"v{version}"
    return f"h:{code_hash}" if code_hash else None


def runs_version(services: list[dict[str, Any]], name: str, version: int | None) -> bool:
    """Whether a daemon's service list (``GET /status``) holds ``name`` at exactly ``version``."""
    running = {r["name"]: r.get("version") for r in services}
    return running.get(name, -1) == version
