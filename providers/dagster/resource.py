"""``TetherResource``: a Dagster resource that calls tether services from assets and ops.

The step body stays a few lines; the resource derives the call id from the step, streams remote logs into
``context.log``, attaches the call's facts to the materialization, cancels the remote call when the run is
terminated, and tears down a cluster it created according to its cleanup policy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

import tether
import tether.runs
from tether.errors import CallTimeout, ConfigError

from .reporting import (
    AnyContext,
    StepIdentity,
    TetherRun,
    call_metadata,
    op_context,
    step_identity,
)

__all__ = ["CleanupPolicy", "TetherResource"]

CleanupPolicy = Literal["never", "always", "on_exception"]


class TetherResource(dg.ConfigurableResource):
    """Calls tether services (saved names, deployed functions or ``"pkg.mod:fn"`` import paths) from a step.

    With a parameter ``tether: TetherResource``, ``tether.call(context, "embed", text)`` returns the value;
    ``tether.run(...)`` returns a :class:`TetherRun` whose ``get_materialize_result()`` carries the call metadata.
    """

    cluster_name: str | None = Field(
        default=None,
        description="Name of the cluster to call on. None with no spec: the embedded local cluster.",
    )
    cluster_spec: dict[str, Any] | None = Field(
        default=None,
        description="tether ClusterSpec fields (instance_type, provider, autostop_mins, ...) used to bring the "
        "cluster up when it is not running.",
    )
    endpoint: str | None = Field(
        default=None,
        description="Base URL of an already running tether daemon; the resource never creates or tears it down.",
    )
    token: str | None = Field(
        default=None,
        repr=False,
        description="Bearer token of the daemon at `endpoint` (clusters by name keep their own). Pass "
        "dg.EnvVar('TETHER_TOKEN') so it stays out of run config; it is never shown in the resource's repr.",
    )
    escalation: dict[str, Any] | None = Field(
        default=None,
        description="tether.Escalation fields (e.g. an instance ladder) applied when a call runs out of memory.",
    )
    cleanup: CleanupPolicy = Field(
        default="never",
        description="What to do with a cluster this resource brought up: 'never' tear it down, 'always' at the "
        "end of execution (the run in-process; each step's process with the multiprocess executor), or only "
        "'on_exception' (a call or a step of the run failed or was interrupted).",
    )

    _cluster: Any = PrivateAttr(default=None)
    _policy: Any = PrivateAttr(default=None)
    _created: bool = PrivateAttr(default=False)
    # clusters escalation brought up from ours: name -> instance type
    _rungs: dict[str, str | None] = PrivateAttr(default_factory=dict)
    _failed: bool = PrivateAttr(default=False)
    _calls: tether.runs.CallCounter = PrivateAttr(default_factory=tether.runs.CallCounter)
    # saved names and import paths resolved (and deployed) once per execution
    _services: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse a malformed escalation policy before any step runs."""
        self._policy = self._escalation(None)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Tear down a cluster this resource created, as the cleanup policy says (runs even if steps failed)."""
        cluster, created = self._cluster, self._created
        if cluster is None or not created or self.cleanup == "never":
            return
        if self.cleanup == "on_exception" and not (self._failed or _run_has_failures(context)):
            return
        rungs, self._cluster, self._created, self._rungs = self._rungs, None, False, {}
        try:
            for name, instance_type in rungs.items():
                tether.cluster(name=name, instance_type=instance_type).down()
        finally:
            cluster.down()
        if context.log is not None:
            torn = ", ".join(repr(n) for n in [*rungs, cluster.name])
            context.log.info(f"tether: tore down cluster {torn} (cleanup policy {self.cleanup!r})")

    # -- calls -----------------------------------------------------------------------------------------------

    def call(self, context: AnyContext, target: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``target`` with ``args``/``kwargs`` remotely and return its value; metadata goes on the output."""
        return self.run(context, target, args=args, kwargs=kwargs).value

    def run(
        self,
        context: AnyContext,
        target: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        call_id: str | None = None,
        escalation: Any = None,
        output_name: str | None = None,
        attach_metadata: bool = True,
    ) -> TetherRun:
        """Call ``target`` remotely as part of this step.

        The call id is derived from (run, step, partition, target, n-th call of the step), so a retry of the step
        re-attaches to the call instead of running it again (a call that failed or was cancelled is run again under
        a successor id: ``tether.runs.attempt_call_id``). An interrupt (run terminated) cancels the call.
        """
        label = tether.runs.target_label(target)
        identity = step_identity(context)
        service = self._service(context, target)
        base_id = call_id if call_id is not None else self._next_call_id(identity, label)
        call_id = tether.runs.attempt_call_id(base_id, service.cluster)
        policy = self._escalation(escalation)
        context.log.info(f"tether: calling {label} (call id {call_id})")
        try:
            result = tether.runs.run_remote(
                service,
                tuple(args),
                dict(kwargs or {}),
                call_id=call_id,
                log=tether.runs.labelled_log(context.log.info, label),
                escalation=policy,
                run_id=f"dagster:{identity.run_id}/{identity.step_key}",
                retry_failed=False,  # attempt_call_id chose the id
            )
        except BaseException as exc:
            self._failed = True
            details = getattr(exc, "details", None)
            self._note_rungs(details.get("attempts") if isinstance(details, Mapping) else None)
            if not isinstance(exc, Exception) or isinstance(exc, CallTimeout):
                # interrupted (run terminated, KeyboardInterrupt) or gave up waiting: stop paying for the call
                tether.runs.cancel_quietly(call_id, service.cluster, log=context.log)
            raise
        self._note_rungs(result.attempts)
        metadata = call_metadata(result)
        if attach_metadata:
            _attach(context, metadata, output_name)
        return TetherRun(value=result.value, result=result, metadata=metadata)

    def cancel(self, call_id: str, cluster: Any = None) -> None:
        """Cancel a remote call by id (default: on this resource's cluster)."""
        tether.runs.cancel(call_id, cluster if cluster is not None else self._cluster)

    # -- internals -------------------------------------------------------------------------------------------

    def _next_call_id(self, identity: StepIdentity, label: str) -> str:
        # the n-th call to ``label`` in this attempt of the step: a retry counts from 0 again and re-attaches
        index = self._calls.next((identity.step_key, identity.partition, label, identity.attempt))
        return identity.call_id(label, index)

    def _service(self, context: AnyContext, target: Any) -> Any:
        """The deployed service ``target`` names; a name or import path is resolved (and deployed) once."""
        if isinstance(target, str) and target in self._services:
            return self._services[target]
        cluster = None if _brings_its_own_cluster(target) else self._ensure_cluster(context)
        service = tether.runs.resolve_target(target, cluster)
        if isinstance(target, str):
            self._services[target] = service
        return service

    def _note_rungs(self, attempts: Sequence[Any] | None) -> None:
        """Remember the clusters escalation brought up from a cluster we created: the cleanup policy covers them."""
        if not self._created:
            return
        for attempt in attempts or []:
            data = attempt.model_dump() if hasattr(attempt, "model_dump") else attempt
            name = data.get("cluster") if isinstance(data, Mapping) else None
            if name and name != self._cluster.name:
                self._rungs[name] = data.get("instance_type")

    def _ensure_cluster(self, context: AnyContext) -> Any:
        """The cluster calls go to, brought up on first use; None lets a saved service use its own cluster."""
        with self._lock:
            if self._cluster is not None:
                return self._cluster
            cluster = tether.runs.cluster_from_config(
                self.cluster_spec,
                name=self.cluster_name,
                endpoint=self.endpoint,
                token=self.token,
                default_name="dagster-endpoint",
            )
            if cluster is None or self.endpoint is not None:  # a daemon someone else runs: never brought up
                self._cluster = cluster
                return cluster
            was_up = cluster.is_up()
            if not was_up:
                context.log.info(f"tether: bringing up cluster {cluster.name!r}")
            cluster.up_if_not()
            self._cluster, self._created = cluster, not was_up
            return cluster

    def _escalation(self, override: Any) -> Any:
        """The escalation policy of a call: the per-call override, else the resource's (validated once)."""
        if override is not None:
            return override
        if self._policy is not None or self.escalation is None:
            return self._policy
        try:
            self._policy = tether.Escalation.model_validate(self.escalation)
        except ValueError as exc:
            raise ConfigError(
                f"invalid escalation policy: {exc}", hint="see tether.Escalation's fields"
            ) from exc
        return self._policy


def _brings_its_own_cluster(target: Any) -> bool:
    """A saved name or an already deployed service runs where it lives; only other targets need our cluster."""
    if isinstance(target, str):
        return ":" not in target
    return getattr(target, "spec", None) is not None


def _attach(context: AnyContext, metadata: Mapping[str, dg.MetadataValue], output_name: str | None) -> None:
    if isinstance(context, dg.AssetCheckExecutionContext):
        return  # a check reports through its AssetCheckResult(metadata=run.metadata)
    try:
        op_context(context).add_output_metadata(dict(metadata), output_name=output_name)
    except dg.DagsterInvariantViolationError as exc:  # several outputs and no output_name: say so, keep going
        context.log.warning(
            f"tether: call metadata not attached ({exc}); pass output_name= or use run().metadata"
        )


def _run_has_failures(context: dg.InitResourceContext) -> bool:
    """Whether any step of the current run has failed (the step's exception never reaches the resource)."""
    if context.instance is None or context.run is None:
        return False
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1
    ).records
    return bool(records)
