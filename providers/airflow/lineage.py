"""OpenLineage for tether tasks: what ``get_openlineage_facets_on_complete`` returns.

The OpenLineage provider (``apache-airflow-providers-openlineage``) asks a finished task for its lineage; a tether
task answers from the facts of its call (the ``tether`` XCom: :func:`tether.runs.RunResult.metadata`):

- a run facet ``tether``: the service, its version, the cluster, its instance type, the call id and page, the
  remote seconds and estimated cost;
- input and output ``Dataset`` objects: what the remote code declared with ``tether.lineage.input(uri, version=)`` and
  ``tether.lineage.output(...)`` (reports of kind ``"lineage"``), each once, with a ``version`` dataset facet.

A URI becomes a dataset the way OpenLineage names them: ``s3://bucket/key`` → namespace ``s3://bucket``, name
``key``; a local path or ``file://`` URI → namespace ``file``, name the path. The OpenLineage packages are imported
only here, inside the functions: without the provider nothing else in the Airflow provider needs them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs  # Airflow's own dependency

__all__ = ["FACET", "dataset", "edges", "operator_lineage", "run_facet"]

FACET = "tether"
"""The key of tether's run facet in the OpenLineage event's ``run.facets``."""
_LINEAGE = "lineage"  # the report kind tether.lineage.input/output send (tether.lineage.KIND)
_FIELDS = ("service", "version", "cluster", "instance_type", "call_id", "url", "seconds", "price_per_hour", "cost",
           "reattached")


def edges(reports: Iterable[Mapping[str, Any]]) -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """The ``(uri, version)`` inputs and outputs among a call's reports (``{"kind", "payload"}`` dicts), each once,
    in the order the remote code declared them; malformed ones are skipped."""
    found: dict[str, dict[tuple[str, str | None], None]] = {"in": {}, "out": {}}
    for report in reports:
        payload = report.get("payload") if isinstance(report, Mapping) else None
        if report.get("kind") != _LINEAGE or not isinstance(payload, Mapping):
            continue
        uri, version, direction = payload.get("uri"), payload.get("version"), payload.get("direction")
        if isinstance(uri, str) and uri and direction in found:
            found[str(direction)][(uri, None if version is None else str(version))] = None
    return list(found["in"]), list(found["out"])


def _name(uri: str) -> tuple[str, str]:
    """OpenLineage's ``(namespace, name)`` for ``uri``."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a path (or a Windows drive letter)
        return "file", uri
    if parts.scheme == "file":
        return "file", parts.path or "/"
    namespace = f"{parts.scheme}://{parts.netloc}" if parts.netloc else parts.scheme
    name = parts.path.lstrip("/") if parts.netloc else parts.path
    if parts.query:
        name = f"{name}?{parts.query}"
    return namespace, name or "/"


def dataset(uri: str, version: str | None = None) -> Any:
    """The OpenLineage ``Dataset`` for an artifact the remote code declared (a ``version`` facet when known)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from openlineage.client.facet_v2 import dataset_version_dataset

    namespace, name = _name(uri)
    facets: dict[str, Any] = {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=version)} \
        if version is not None else {}
    return Dataset(namespace=namespace, name=name, facets=facets)


@functools.cache
def _facet_class() -> type:
    """``TetherRunFacet``: defined on first use, so that importing this module needs no OpenLineage package."""
    from airflow.providers.common.compat.openlineage.facet import RunFacet

    @attrs.define
    class TetherRunFacet(RunFacet):  # type: ignore[misc]
        """Where a tether task's call ran: service, version, cluster, instance type, call id, page, cost."""

        service: str | None = None
        version: int | None = None
        cluster: str | None = None
        instance_type: str | None = None
        call_id: str | None = None
        url: str | None = None
        seconds: float | None = None
        price_per_hour: float | None = None
        cost: float | None = None
        reattached: bool | None = None

        @staticmethod
        def _get_schema() -> str:
            return "https://github.com/tether/tether/blob/main/providers/airflow/lineage.py#TetherRunFacet"

    return TetherRunFacet


def run_facet(meta: Mapping[str, Any]) -> Any:
    """The ``tether`` run facet for a call's facts (the fields of :data:`_FIELDS` that ``meta`` has)."""
    return _facet_class()(**{key: meta.get(key) for key in _FIELDS})


def operator_lineage(meta: Mapping[str, Any]) -> Any:
    """The ``OperatorLineage`` of a finished call from its facts (the ``tether`` XCom, with ``cluster``)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    inputs, outputs = edges(meta.get("reports") or [])
    return OperatorLineage(inputs=[dataset(u, v) for u, v in inputs], outputs=[dataset(u, v) for u, v in outputs],
                           run_facets={FACET: run_facet(meta)})
