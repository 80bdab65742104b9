"""The API's one edge to the registry for writing: save a resource's config as a version, freeze a version's
code, record a call of a saved service. (Reading saved resources by name is :mod:`tether.api.loading`.)"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.api.lineage import Edges
from tether.home import open_private, private_dir, tether_home
from tether.registry import PlainCall, get_registry

if TYPE_CHECKING:
    from tether.registry.models import CallRecord

__all__ = ["record_call", "save_resource", "snapshot_code"]


def save_resource(name: str, config: dict[str, Any], *, code_hash: str | None = None) -> Any:
    """Save ``config`` as a new version of ``name``; returns the registry's version record."""
    return get_registry().save(name, config, code_hash=code_hash)


def snapshot_code(root: Path, code_hash: str) -> Path:
    """A content-addressed copy of the Python files under ``root`` in ``$TETHER_HOME/code/`` (kept per version)."""
    from tether.api.codesync import python_files  # with the code models: only a save freezes code

    dest = private_dir(tether_home() / "code") / code_hash[:24]
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    private_dir(tmp)
    for rel in python_files(root):
        target = tmp / rel
        private_dir(target.parent)
        source = root / rel
        with open(source, "rb") as src, os.fdopen(open_private(target), "wb") as out:  # 0600, whatever the source
            shutil.copyfileobj(src, out)
        st = source.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        tmp.rename(dest)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def record_call(service: Any, *, call_id: str, method: str | None, seconds: float, outcome: str,
                edges: Edges | None = None) -> None:
    """Record one call of a saved service (non-blocking: the registry batches writes), with the cluster it ran on
    and the lineage ``edges`` its code declared. Its duration is the remote call's own (its daemon's start to
    finish, asked on the writer's thread); ``seconds`` (the caller's wait) only when the daemon no longer knows.
    A call that declared no lineage is recorded as a :class:`~tether.registry.PlainCall` (no pydantic model)."""
    cluster = service.cluster
    handle = cluster._handle if cluster is not None else None
    fields: dict[str, Any] = dict(
        name=service.registry_name or service.name, version=service.saved_version, call_id=call_id, method=method,
        duration_s=seconds, outcome=outcome, run_id=service.caller or os.environ.get("TETHER_RUN_ID"),
        instance_type=getattr(handle, "instance_type", None),
        cluster=getattr(cluster, "name", None) if cluster is not None else None)
    record: CallRecord | PlainCall = PlainCall.of(**fields)
    if edges is not None and (edges.inputs or edges.outputs) or not record.valid():
        from tether.registry.models import Artifact, CallRecord  # lineage edges are models (validated URIs)

        record = CallRecord(**fields,
                            inputs=[Artifact(uri=u, version=v) for u, v in edges.inputs] if edges is not None else [],
                            outputs=[Artifact(uri=u, version=v) for u, v in edges.outputs] if edges is not None else [])
    client = service.client_on(cluster) if handle is not None else None
    get_registry().record_call(record, _remote_duration(client, call_id) if client is not None else None)


def _remote_duration(client: Any, call_id: str) -> Callable[[Any], Any]:
    """Completes a record with the call's duration as its daemon measured it (``GET /calls/{id}?wait=0``)."""

    def resolve(record: Any) -> Any:  # a CallRecord or a PlainCall: both have model_copy
        summary = client.sync.status(call_id)
        started, finished = summary.get("started"), summary.get("finished")
        if not isinstance(started, int | float) or not isinstance(finished, int | float):
            return record
        return record.model_copy(update={"duration_s": max(0.0, float(finished) - float(started))})

    return resolve
