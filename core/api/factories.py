"""Runhouse's cluster factories: ``tether.ondemand_cluster`` (a cloud cluster SkyPilot launches) and
``tether.kubernetes_cluster`` (pods on a Kubernetes context, through SkyPilot). Both are ``tether.cluster`` with
the backend fixed; a name alone loads a saved cluster as ``tether.cluster(name=...)`` does."""

from __future__ import annotations

from typing import Any

from tether.api.clusters import Cluster
from tether.api.loading import cluster
from tether.errors import ConfigError

__all__ = ["kubernetes_cluster", "ondemand_cluster"]


def _sky(made: Cluster, what: str) -> Cluster:
    if made.spec.backend != "sky" or not made.spec.instance_type:
        raise ConfigError(f"{what} {made.name!r} needs an instance type SkyPilot launches (e.g. 'CPU:4', 'A10G:1')",
                          hint="pass instance_type=...; tether.cluster() alone is the local daemon",
                          details={"backend": made.spec.backend})
    return made


def ondemand_cluster(name: str | None = None, *, instance_type: str | None = None, provider: Any = None,
                     **fields: Any) -> Cluster:
    """A cluster launched on demand on a cloud (``provider``: a cloud, a list, or ``"cheapest"``); Runhouse's
    ``region=``, ``open_ports=``, ``disk_size=``, ``image_id=``, ``autostop_mins=``, ``use_spot=`` are accepted."""
    if name and instance_type is None and provider is None and not fields:
        return _sky(cluster(name), "on-demand cluster")
    return _sky(cluster(name, instance_type=instance_type, provider=provider, backend="sky", **fields),
                "on-demand cluster")


def kubernetes_cluster(name: str | None = None, *, instance_type: str | None = None, namespace: str | None = None,
                       context: str | None = None, **fields: Any) -> Cluster:
    """Pods on Kubernetes through SkyPilot: ``context`` (a kubeconfig context; none: the current one) is the
    provider's region (``provider="kubernetes/<context>"``), ``namespace`` the pods' namespace."""
    if fields.get("provider") is not None:
        raise ConfigError("a kubernetes cluster's provider is kubernetes",
                          hint="pass context= for the kubeconfig context")
    provider = f"kubernetes/{context}" if context else "kubernetes"
    return _sky(cluster(name, instance_type=instance_type or "CPU:1", provider=provider, backend="sky",
                        kubernetes_namespace=namespace, **fields), "kubernetes cluster")
