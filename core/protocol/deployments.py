"""What identifies a deployment of a service, for a call to say which one it expects (header ``X-Tether-Expect``)."""

from __future__ import annotations

from tether.specs import ServiceSpec

__all__ = ["deployment_id"]


def deployment_id(spec: ServiceSpec | None) -> str | None:
    """``v<version>`` for a saved version, ``h:<code hash>`` for an ad-hoc deploy of code from a tree; None when
    nothing identifies it (code by value, instances: their state is what they are)."""
    if spec is None or spec.kind == "instance":
        return None
    if spec.version is not None:
        return f"v{spec.version}"
    return f"h:{spec.code.code_hash}" if spec.code.code_hash else None
