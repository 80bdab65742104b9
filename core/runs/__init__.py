"""What orchestrator providers share: call ids and retries, clusters from settings, labels, logs, cancellation.

Providers (Airflow, Prefect, Dagster) map their idioms onto these and nothing else, so no behaviour is written
twice across them:

- ids: :func:`call_id_for` (deterministic, from the orchestrator's names), :func:`call_identity` (what a call
  runs: the service's version or code and a digest of its arguments), :class:`CallCounter` (the n-th call of an
  attempt), :func:`choose_attempt` / :func:`attempt_call_id` (the one retry scheme: re-attach to a running or
  succeeded call, run again under ``<id>-r<n>`` after a failure), :func:`check_reattach` (the users' choice);
- where: :func:`where` (the orchestrator's settings decide the cluster; no daemon is started on the worker
  implicitly), :func:`cluster_config` / :func:`cluster_from_config` (a cluster from a name, JSON, a spec dict or
  an endpoint and token);
- what: :func:`target_label`, :func:`resolve_target`;
- running: :func:`run_remote` (blocking) and :class:`CallWatch` (async polling, logs read with ``since``);
- logs: :func:`log_event_line` (one format), :func:`log_sink`, :func:`level_sink`, :func:`labelled_log`,
  :func:`describe_call`, :func:`describe_finish`;
- facts: :func:`call_url`, :func:`price_per_hour`, :func:`estimated_cost`, the :class:`Report` s the remote code
  sent (:func:`reported_metadata`, :func:`reported_checks`);
- stopping: :func:`cancel`, :func:`cancel_quietly` (for interrupt handlers).

``runs`` is the top layer of ``tether``: it imports the API, escalation, errors and protocol; nothing in
``tether`` imports it.
"""

from tether.api.logsinks import register_sink_resolver, unregister_sink_resolver
from tether.api.report import Report
from tether.runs.cursor import LogCursor
from tether.runs.facts import call_url, estimated_cost, price_per_hour, reported_checks, reported_metadata
from tether.runs.ids import (
    REATTACH_SCOPES,
    CallChoice,
    CallCounter,
    args_digest,
    attempt_call_id,
    call_id_for,
    call_identity,
    call_state,
    check_reattach,
    choose_attempt,
    choose_call_id,
    is_retryable,
    service_version,
)
from tether.runs.remote import (
    CallWatch,
    RunResult,
    attach_result,
    cancel,
    cancel_quietly,
    describe_call,
    describe_finish,
    labelled_log,
    level_sink,
    log_event_line,
    log_sink,
    remote_seconds,
    run_remote,
)
from tether.runs.where import (
    ALLOW_LOCAL_DAEMON_ENV,
    ClusterRef,
    LogEvent,
    Where,
    cluster_config,
    cluster_from_config,
    local_daemon_allowed,
    resolve_target,
    target_label,
    where,
)

__all__ = [
    "ALLOW_LOCAL_DAEMON_ENV",
    "CallChoice",
    "CallCounter",
    "CallWatch",
    "ClusterRef",
    "LogCursor",
    "LogEvent",
    "REATTACH_SCOPES",
    "Report",
    "RunResult",
    "Where",
    "args_digest",
    "attach_result",
    "attempt_call_id",
    "call_id_for",
    "call_identity",
    "call_state",
    "call_url",
    "cancel",
    "cancel_quietly",
    "check_reattach",
    "choose_attempt",
    "choose_call_id",
    "cluster_config",
    "cluster_from_config",
    "describe_call",
    "describe_finish",
    "estimated_cost",
    "is_retryable",
    "labelled_log",
    "level_sink",
    "local_daemon_allowed",
    "log_event_line",
    "log_sink",
    "price_per_hour",
    "remote_seconds",
    "reported_checks",
    "register_sink_resolver",
    "reported_metadata",
    "resolve_target",
    "run_remote",
    "service_version",
    "target_label",
    "unregister_sink_resolver",
    "where",
]
