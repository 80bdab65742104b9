"""What providers show about a finished call besides its value: where its page is, what it cost, its reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tether.api.report import ASSET_CHECK, METADATA, Report
from tether.compute import catalog

__all__ = ["call_url", "estimated_cost", "price_per_hour", "reported_checks", "reported_metadata"]


def call_url(cluster: Any, call_id: str) -> str | None:
    """The call's page on its daemon (``GET <endpoint>/calls/<id>/logs``: its state and log lines, as JSON), or
    None when the cluster has no known address. It needs the daemon's token like every other route."""
    handle = getattr(cluster, "_handle", None) if cluster is not None else None
    endpoint = getattr(handle, "endpoint", None)
    if not endpoint:
        return None
    return f"{str(endpoint).rstrip('/')}/calls/{call_id}/logs"


def price_per_hour(instance_type: str | None, handle: Any = None) -> float | None:
    """What the call's machine costs per hour: the backend's price when it knows one (a local cluster is 0),
    else the catalog's cheapest on-demand price of the instance type (``"g5.xlarge"``) or accelerator
    (``"A10G:1"``); None when neither knows."""
    known = getattr(handle, "price_per_hour", None)
    if isinstance(known, int | float):
        return float(known)
    if not instance_type or instance_type.lower().startswith("local"):
        return 0.0 if instance_type else None
    try:
        return _catalog_price(instance_type)
    except Exception:  # noqa: BLE001 - no catalog here: the price is unknown, not an error
        return None


def _catalog_price(instance_type: str) -> float | None:
    name, _, count = instance_type.partition(":")
    if count.isdigit():
        prices = [o.price for o in catalog.offerings(accelerator=name)
                  if o.accelerator_count == int(count) and o.price]
    else:
        prices = [o.price for o in catalog.offerings() if o.instance_type == instance_type and o.price]
    return min(prices) if prices else None


def estimated_cost(price: float | None, seconds: float | None) -> float | None:
    """``price`` ($/h) × ``seconds`` of remote time, in dollars (6 decimals); None when the price is unknown."""
    if price is None or seconds is None:
        return None
    return round(price * seconds / 3600.0, 6)


def reported_metadata(reports: Iterable[Report]) -> dict[str, Any]:
    """The metadata the remote call reported (``tether.report(metadata=...)``), later reports winning."""
    out: dict[str, Any] = {}
    for r in reports:
        if r.kind == METADATA:
            out.update(r.payload.get("metadata") or {})
    return out


def reported_checks(reports: Iterable[Report]) -> list[dict[str, Any]]:
    """The asset check results the remote call reported, in order (the last one of a name wins)."""
    checks: dict[tuple[Any, str], dict[str, Any]] = {}
    for r in reports:
        if r.kind == ASSET_CHECK:
            key = (str(r.payload.get("asset_key")), str(r.payload.get("name")))
            checks.pop(key, None)
            checks[key] = dict(r.payload)
    return list(checks.values())
