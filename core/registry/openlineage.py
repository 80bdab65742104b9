"""OpenLineage run events for recorded calls, through the ``openlineage-python`` client (extra ``tether[lineage]``).

Set ``TETHER_OPENLINEAGE`` to turn it on; its value says where events go:

- ``console``                       the client's console transport (events logged)
- ``file:/path/events.jsonl``       one JSON event per line, appended (the client's file transport)
- ``http://marquez:5000`` (https)   the client's HTTP transport (Marquez's API, or any OpenLineage endpoint)
- ``env``                           the client's own configuration (``OPENLINEAGE_URL``, ``openlineage.yml``, …)
- a JSON object                     the client's ``config`` dict, e.g. ``{"transport": {"type": "kafka", ...}}``

Each call record becomes a START event (at the call's start) and a COMPLETE / FAIL / ABORT event (at its end): job
``<namespace>/<name>`` in OpenLineage namespace ``TETHER_OPENLINEAGE_NAMESPACE`` (default ``tether``), run id a
UUID derived from the call id, inputs and outputs from what the remote code declared (``tether.lineage``): a URI
``scheme://authority/path`` is dataset namespace ``scheme://authority`` and name ``path``, and its version a
``version`` dataset facet. The run carries a ``tether`` facet (service version, call id, cluster, caller,
orchestrator run id) and, when the call failed, an ``errorMessage`` facet. Events are sent from the call-record
writer's thread, never on a call's path; a transport that fails is logged and counted, the records are kept.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tether._version import __version__
from tether.errors import ConfigError
from tether.logging import get_logger

if TYPE_CHECKING:
    from tether.registry.models import Artifact, CallRecord

__all__ = ["Emitter", "emitter_from_env", "transport_config"]

log = get_logger("tether.registry.openlineage")
_RUN_NS = uuid.UUID("6a1c1f2e-58b4-4a62-9a9e-7d0c4c1f0b19")
_STATES = {"ok": "COMPLETE", "cancelled": "ABORT"}
PRODUCER = f"https://github.com/tether/tether/tree/v{__version__}"


def transport_config(value: str) -> dict[str, Any] | None:
    """The client ``config`` for a ``TETHER_OPENLINEAGE`` value (None: the client's own configuration)."""
    text = value.strip()
    if text == "env":
        return None
    if text == "console":
        return {"transport": {"type": "console"}}
    if text.startswith("file:"):
        path = text[5:]
        path = path[2:] if path.startswith("//") else path
        return {"transport": {"type": "file", "log_file_path": path, "append": True}}
    if text.startswith(("http://", "https://")):
        return {"transport": {"type": "http", "url": text}}
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"TETHER_OPENLINEAGE is not valid JSON: {exc}",
                              details={"field": "TETHER_OPENLINEAGE"}) from None
        if isinstance(config, dict):
            return config
    raise ConfigError(
        f"TETHER_OPENLINEAGE={value!r}: not console, file:PATH, an http(s) URL, env or a JSON object",
        hint="e.g. TETHER_OPENLINEAGE=file:/tmp/openlineage.jsonl", details={"field": "TETHER_OPENLINEAGE"},
    )


def _dataset(a: Artifact) -> tuple[str, str]:
    scheme, sep, rest = a.uri.partition("://")
    if not sep:
        return "tether", a.uri
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority}", "/" + path if slash else "/"


class Emitter:
    """Turns call records into OpenLineage run events and sends them with an ``OpenLineageClient``."""

    def __init__(self, config: dict[str, Any] | None, *, namespace: str = "tether") -> None:
        from openlineage.client import OpenLineageClient

        self.client = OpenLineageClient(config=config) if config is not None else OpenLineageClient()
        self.namespace = namespace
        self.sent = 0
        self.failed = 0

    def events(self, record: CallRecord) -> list[Any]:
        """The START and end events of one call record."""
        from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import (
            RunFacet,
            dataset_version_dataset,
            error_message_run,
            processing_engine_run,
        )

        def facets(a: Artifact) -> dict[str, Any]:
            if a.version is None:
                return {}
            return {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=a.version)}

        inputs = [InputDataset(*_dataset(a), facets=facets(a)) for a in record.inputs]
        outputs = [OutputDataset(*_dataset(a), facets=facets(a)) for a in record.outputs]
        tether_facet = RunFacet().with_additional_properties(
            service=record.name, serviceVersion=record.version, callId=record.call_id, method=record.method,
            cluster=record.cluster, caller=record.caller, orchestratorRunId=record.run_id,
            instanceType=record.instance_type, durationSeconds=record.duration_s,
        )
        run_facets: dict[str, Any] = {
            "processing_engine": processing_engine_run.ProcessingEngineRunFacet(version=__version__, name="tether"),
            "tether": tether_facet,
        }
        run_id = str(uuid.uuid5(_RUN_NS, f"{record.name}\x00{record.call_id}"))
        job = Job(namespace=self.namespace, name=record.name + (f".{record.method}" if record.method else ""))
        started = record.started_at
        ended = started + timedelta(seconds=record.duration_s)
        end_facets = dict(run_facets)
        if record.outcome != "ok":
            end_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=f"{record.error_type or record.outcome}", programmingLanguage="python")
        state = getattr(RunState, _STATES.get(record.outcome, "FAIL"))
        return [
            RunEvent(eventType=RunState.START, eventTime=started.isoformat(), run=Run(runId=run_id, facets=run_facets),
                     job=job, inputs=inputs, outputs=outputs, producer=PRODUCER),
            RunEvent(eventType=state, eventTime=ended.isoformat(), run=Run(runId=run_id, facets=end_facets),
                     job=job, inputs=inputs, outputs=outputs, producer=PRODUCER),
        ]

    def emit(self, records: Iterable[CallRecord]) -> None:
        """Send the events of ``records``; a failing transport is logged and counted, never raised."""
        for record in records:
            try:
                for event in self.events(record):
                    self.client.emit(event)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - lineage export must never lose the records or fail a call
                self.failed += 1
                log.warning("openlineage_emit_failed", call_id=record.call_id, error=repr(exc))


_LOCK = threading.Lock()
_EMITTERS: dict[tuple[str, str], Emitter | None] = {}


def emitter_from_env() -> Emitter | None:
    """The emitter ``TETHER_OPENLINEAGE`` configures (one per value), or None when unset or the extra is missing."""
    value = os.environ.get("TETHER_OPENLINEAGE", "").strip()
    if not value:
        return None
    namespace = os.environ.get("TETHER_OPENLINEAGE_NAMESPACE") or "tether"
    key = (value, namespace)
    with _LOCK:
        if key not in _EMITTERS:
            try:
                _EMITTERS[key] = Emitter(transport_config(value), namespace=namespace)
            except ImportError:
                log.warning("openlineage_missing", hint="pip install 'tether[lineage]' (openlineage-python)")
                _EMITTERS[key] = None
            except ConfigError as exc:
                log.warning("openlineage_misconfigured", error=str(exc), hint=exc.hint)
                _EMITTERS[key] = None
        return _EMITTERS[key]
