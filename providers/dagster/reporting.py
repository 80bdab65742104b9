"""Pipes-style reporting: a step's identity as a call id, call facts as metadata, and what the remote code
reported (``tether.report(metadata=..., asset_check=...)``) as the materialization's metadata and asset check
results (remote logs: ``tether.runs``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from tether.errors import ConfigError
from tether.runs import RunResult, call_id_for, check_reattach

__all__ = [
    "METADATA_PREFIX",
    "StepIdentity",
    "TetherRun",
    "call_metadata",
    "check_results",
    "op_context",
    "reported_metadata",
    "step_identity",
]

#: every metadata key tether attaches starts with this, like Dagster's own ``dagster/...`` keys.
METADATA_PREFIX = "tether/"

AnyContext = dg.AssetExecutionContext | dg.OpExecutionContext | dg.AssetCheckExecutionContext


def op_context(context: AnyContext) -> dg.OpExecutionContext:
    """The op-level context every step has (assets and asset checks wrap one)."""
    return context if isinstance(context, dg.OpExecutionContext) else context.op_execution_context


@dataclass(frozen=True)
class StepIdentity:
    """What names one step of one run; a retry of the step differs only in ``attempt``."""

    run_id: str
    step_key: str
    partition: str
    attempt: int = 0  # Dagster's retry number: counts calls per attempt, part of the id only with force_rerun
    root_run_id: str = ""  # the run a re-execution started from (its own id when it is none)

    def call_id(
        self, target: str, index: int, identity: str = "", *, reattach: str = "retries", force_rerun: bool = False
    ) -> str:
        """The deterministic call id of the ``index``-th call to ``target`` made by this step.

        ``identity`` is the call's ``tether.runs.call_identity`` (service version, arguments). The run is this
        run (``reattach="retries"``: a re-execution is a new run and runs again), or the root run of its
        re-executions (``reattach="run"``: a re-execution with the same version and arguments re-attaches);
        ``force_rerun`` makes the call this attempt's own.
        """
        check_reattach(reattach)
        run = (self.root_run_id or self.run_id) if reattach == "run" else self.run_id
        nonce = f"attempt-{self.attempt}" if force_rerun else ""
        return call_id_for("dagster", run, self.step_key, self.partition, target, str(index), identity, nonce)


def step_identity(context: AnyContext) -> StepIdentity:
    """The (run, step, partition) of the step ``context`` belongs to; the step key includes a dynamic mapping key."""
    context = op_context(context)
    step_key = context.get_step_execution_context().step.key
    partition = ""
    if context.has_partition_key:
        partition = context.partition_key
    elif context.has_partition_key_range:
        key_range = context.partition_key_range
        partition = f"{key_range.start}...{key_range.end}"
    return StepIdentity(
        run_id=context.run.run_id,
        step_key=step_key,
        partition=partition,
        attempt=context.retry_number,
        root_run_id=context.run.root_run_id or context.run.run_id,
    )


def call_metadata(result: RunResult) -> dict[str, dg.MetadataValue]:
    """What a materialization records about the remote call that produced it (escalation attempts included)."""
    attempts = [_attempt_summary(_plain(a)) for a in result.attempts]
    values: dict[str, Any] = {
        "service": result.service,
        "version": result.version,
        "call_id": result.call_id,
        "instance_type": _last_rung(attempts) or result.instance_type,
        "duration_s": round(float(result.seconds), 3),
        "price_per_hour": result.price_per_hour,
        "est_cost_usd": result.cost,
        "reattached": bool(result.reattached),
        "attempts": max(len(attempts), 1),
        "attempt_log": attempts or None,
    }
    out = {f"{METADATA_PREFIX}{key}": _as_metadata(value) for key, value in values.items() if value is not None}
    if result.url:
        out[f"{METADATA_PREFIX}url"] = dg.MetadataValue.url(result.url)
    return out


_TYPED = {
    "url": dg.MetadataValue.url,
    "path": dg.MetadataValue.path,
    "md": dg.MetadataValue.md,
    "json": dg.MetadataValue.json,
    "text": dg.MetadataValue.text,
    "int": dg.MetadataValue.int,
    "float": dg.MetadataValue.float,
    "bool": dg.MetadataValue.bool,
    "timestamp": dg.MetadataValue.timestamp,
    "null": lambda _: dg.MetadataValue.null(),
}


def reported_metadata(data: Mapping[str, Any]) -> dict[str, dg.MetadataValue]:
    """What the remote code reported as metadata, as Dagster metadata under its own keys (as Pipes does).

    A value ``{"raw_value": v, "type": "url" | "path" | "md" | "json" | "text" | "int" | "float" | "bool" |
    "timestamp" | "null"}`` is typed so; any other value by its Python type.
    """
    out: dict[str, dg.MetadataValue] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and set(value) == {"raw_value", "type"}:
            make = _TYPED.get(str(value["type"]))
            if make is None:
                raise ConfigError(f"metadata {key!r} has type {value['type']!r}",
                                  hint=f"use one of {', '.join(sorted(_TYPED))}", details={"field": key})
            out[key] = make(value["raw_value"])  # type: ignore[operator]
        else:
            out[key] = _as_metadata(value)
    return out


def check_results(result: RunResult) -> list[dg.AssetCheckResult]:
    """The asset check results the remote code reported (``tether.report(asset_check=...)``)."""
    out = []
    for check in result.reported_checks:
        out.append(dg.AssetCheckResult(
            passed=bool(check["passed"]),
            check_name=str(check["name"]),
            asset_key=check.get("asset_key"),
            severity=dg.AssetCheckSeverity(check.get("severity", "ERROR")),
            description=check.get("description"),
            metadata=reported_metadata(check.get("metadata") or {}),
        ))
    return out


_ATTEMPT_FIELDS = ("instance_type", "outcome", "seconds", "est_cost", "cluster", "error_type")


def _attempt_summary(attempt: Any) -> Any:
    """The part of an escalation attempt worth a row in the UI (the OOM evidence stays in the run's logs)."""
    if not isinstance(attempt, dict):
        return attempt
    return {k: attempt.get(k) for k in _ATTEMPT_FIELDS}


def _last_rung(attempts: list[Any]) -> str | None:
    last = attempts[-1] if attempts else None
    return last.get("instance_type") if isinstance(last, dict) else None


def _as_metadata(value: Any) -> dg.MetadataValue:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, list | tuple | Mapping):
        return dg.MetadataValue.json(_plain(value))
    return dg.MetadataValue.text(str(value))


def _plain(value: Any) -> Any:
    """JSON-safe data: pydantic models dumped, containers walked, anything else as text."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


@dataclass
class TetherRun:
    """A finished remote call as a step sees it: the value, the metadata describing the call (what the remote
    code reported included) and the asset check results it reported."""

    value: Any
    result: RunResult
    metadata: dict[str, dg.MetadataValue] = field(default_factory=dict)
    check_results: list[dg.AssetCheckResult] = field(default_factory=list)

    @property
    def call_id(self) -> str:
        return self.result.call_id

    def get_materialize_result(self, **kwargs: Any) -> dg.MaterializeResult:
        """A ``MaterializeResult`` carrying the call metadata and the reported asset check results (merged with
        any ``metadata=`` / ``check_results=`` given)."""
        metadata = {**self.metadata, **(kwargs.pop("metadata", None) or {})}
        checks = [*self.check_results, *(kwargs.pop("check_results", None) or [])]
        return dg.MaterializeResult(metadata=metadata, check_results=checks or None, **kwargs)

    def get_check_result(self, check_name: str | None = None) -> dg.AssetCheckResult:
        """The reported result of one asset check (the only one, or ``check_name``): what an ``@asset_check``
        returns. A ``ConfigError`` when the remote code reported no such check."""
        found = [c for c in self.check_results if check_name is None or c.check_name == check_name]
        if len(found) != 1:
            names = [c.check_name for c in self.check_results]
            raise ConfigError(f"the remote call reported {len(found)} asset check(s) named {check_name!r}",
                              hint=f"it reported {names}; call tether.report(asset_check={{'name': ..., "
                                   "'passed': ...}) in the remote code", details={"call_id": self.call_id})
        return found[0]
