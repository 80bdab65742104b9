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
    check_results,
    op_context,
    reported_metadata,
    step_identity,
)

__all__ = ["CleanupPolicy", "TetherResource"]

CleanupPolicy = Literal["never", "always", "on_exception"]


class TetherResource(dg.ConfigurableResource):
    """Calls tether services (saved names, deployed functions or ``"pkg.mod:fn"`` import paths) from a step.

    With a parameter ``tether: TetherResource``, ``tether.call(context, "embed", text)`` returns the value;
    ``tether.run(...)`` returns a :class:`TetherRun` whose ``get_materialize_result()`` carries the call metadata.
    The resource's cluster (``endpoint``, ``cluster_name``, ``cluster_spec``) runs every call, saved services
    included; with none, a saved service runs where it was saved. A step never starts a tether daemon on the
    Dagster worker unasked (``allow_local_daemon``).
    """

    cluster_name: str | None = Field(
        default=None,
        description="Name of the cluster to call on (a saved cluster, or a local one that is running). None with "
        "no spec and no endpoint: saved services run where they were saved; other targets need "
        "allow_local_daemon to run on the embedded local cluster.",
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
    reattach: str = Field(
        default="retries",
        description="What a call may re-attach to: 'retries' — the call an earlier attempt of the same step in "
        "the same run started (a re-execution runs again); 'run' — also one of an earlier run of the same root "
        "run, with the same service version and arguments (a re-execution re-attaches).",
    )
    force_rerun: bool = Field(
        default=False, description="Run every call again on every attempt; never re-attach."
    )
    allow_local_daemon: bool | None = Field(
        default=None,
        description="Let steps start a tether daemon on the machine they run on (the embedded local cluster when "
        "no cluster is set, a local cluster that is not running). Default: only with TETHER_ALLOW_LOCAL_DAEMON=1; "
        "otherwise such a call fails with a ConfigError naming the setting.",
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
    # saved names and import paths resolved (and deployed) once per attempt: (target, retry number) -> service
    _services: dict[tuple[str, int], Any] = PrivateAttr(default_factory=dict)
    _where: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse a malformed escalation policy or ``reattach`` before any step runs."""
        self._policy = self._escalation(None)
        tether.runs.check_reattach(self.reattach)

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
        """Call ``target`` with ``args``/``kwargs`` remotely and return its value; metadata goes on the output.

        Asset check results the remote code reports need :meth:`run` (``run.get_materialize_result()``): a plain
        value cannot carry them, and a warning says so.
        """
        run = self.run(context, target, args=args, kwargs=kwargs)
        if run.check_results:
            names = ", ".join(repr(c.check_name) for c in run.check_results)
            context.log.warning(
                f"tether: the remote call reported asset check(s) {names} that a plain value cannot record; "
                f"return tether.run(...).get_materialize_result() instead; call id {run.call_id}"
            )
        return run.value

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
        reattach: str | None = None,
        force_rerun: bool | None = None,
    ) -> TetherRun:
        """Call ``target`` remotely as part of this step.

        The call id is derived from (run, step, partition, target, n-th call of the step, service version,
        arguments), so a retry of the step re-attaches to the call instead of running it again (a call that
        failed or was cancelled is run again under a successor id: ``tether.runs.choose_attempt``), while a
        re-execution, other arguments or another version run it again. ``reattach`` and ``force_rerun`` override
        the resource's. An interrupt (run terminated) cancels the call.
        """
        label = tether.runs.target_label(target)
        identity = step_identity(context)
        service = self._service(context, target, identity.attempt)
        if call_id is None:
            call_id = self._next_call_id(
                identity,
                label,
                tether.runs.call_identity(service, tuple(args), dict(kwargs or {})),
                reattach=self.reattach if reattach is None else reattach,
                force_rerun=self.force_rerun if force_rerun is None else force_rerun,
            )
        choice = tether.runs.choose_attempt(call_id, service.cluster)
        call_id = choice.call_id
        policy = self._escalation(escalation)
        context.log.info(tether.runs.describe_call(label, choice))
        try:
            result = tether.runs.run_remote(
                service,
                tuple(args),
                dict(kwargs or {}),
                call_id=call_id,
                log=tether.runs.labelled_log(context.log.info, label),
                escalation=policy,
                run_id=f"dagster:{identity.run_id}/{identity.step_key}",
                retry_failed=False,  # choose_attempt chose the id
                reattached=choice.reattached,
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
        context.log.info(tether.runs.describe_finish(label, result))
        metadata = {**reported_metadata(result.reported_metadata), **call_metadata(result)}
        checks = check_results(result)
        if attach_metadata:
            _attach(context, metadata, output_name)
        return TetherRun(value=result.value, result=result, metadata=metadata, check_results=checks)

    def cancel(self, call_id: str, cluster: Any = None) -> None:
        """Cancel a remote call by id (default: on this resource's cluster)."""
        tether.runs.cancel(call_id, cluster if cluster is not None else self._cluster)

    # -- internals -------------------------------------------------------------------------------------------

    def _next_call_id(
        self, identity: StepIdentity, label: str, call: str, *, reattach: str, force_rerun: bool
    ) -> str:
        # the n-th call to ``label`` in this attempt of the step: a retry counts from 0 again and re-attaches
        index = self._calls.next((identity.step_key, identity.partition, label, identity.attempt))
        return identity.call_id(label, index, call, reattach=reattach, force_rerun=force_rerun)

    def _service(self, context: AnyContext, target: Any, attempt: int) -> Any:
        """The deployed service ``target`` names, on the resource's cluster when it has one; a name or import
        path is resolved (and deployed) once per attempt (a retry picks up a version saved meanwhile)."""
        key = (target, attempt) if isinstance(target, str) else None
        if key is not None and key in self._services:
            return self._services[key]
        self._ensure_cluster(context)
        service = tether.runs.resolve_target(target, self._where)
        if key is not None:
            self._services[key] = service
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
        """The cluster calls go to, brought up on first use (None: saved services use their own cluster).

        A local cluster this resource would have to start is started only when the resource describes it
        (``cluster_spec``) or allows it (``allow_local_daemon``): never a daemon on the worker unasked.
        """
        with self._lock:
            if self._where is not None:
                return self._cluster
            where = tether.runs.where(
                self.cluster_spec,
                setting="TetherResource(endpoint=..., cluster_name=... or cluster_spec=...)",
                name=self.cluster_name,
                endpoint=self.endpoint,
                token=self.token,
                default_name="dagster-endpoint",
                allow_local_daemon=self.allow_local_daemon,
                opt_in="TetherResource(allow_local_daemon=True)",
            )
            cluster = where.cluster
            if cluster is None or self.endpoint is not None:  # a daemon someone else runs: never brought up
                self._cluster, self._where = cluster, where
                return cluster
            was_up = cluster.is_up()
            if not was_up:
                where.check(cluster)
                context.log.info(f"tether: bringing up cluster {cluster.name!r}")
            cluster.up_if_not()
            self._cluster, self._created, self._where = cluster, not was_up, where
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
