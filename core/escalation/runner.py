"""Running a call under an :class:`~tether.escalation.policy.Escalation` policy: on OOM, the next rung.

:class:`Ladder` is the state of one escalated call, step by step, with no I/O of its own besides bringing
clusters down: whoever calls (``tether.api.invocation`` for sync, async, streamed and spawned calls, or
:func:`run_with_escalation`) asks it for the next :class:`Step`, runs the call there, and reports how it ended.
Each attempt is an :class:`Attempt`, returned to the caller (never written on a service handle).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tether.compute import catalog
from tether.errors import ConfigError, OutOfMemory
from tether.escalation.oom import classify_exception
from tether.escalation.policy import (
    _INHERITED,
    Attempt,
    Escalation,
    OnSmaller,
    Outcome,
    _split_accelerator,
    log,
)

__all__ = ["Ladder", "Step", "run_with_escalation"]


class RungCluster(Protocol):
    """What the runner needs of a cluster (``tether.Cluster`` is one)."""

    name: str

    def config(self) -> dict[str, Any]: ...

    def derive(self, name: str, **fields: Any) -> Any: ...


@dataclass(frozen=True)
class Step:
    """One attempt: its number (0 = the first of this call), the rung and the cluster it runs on."""

    number: int
    rung: str | None
    cluster: Any
    started: float


class Ladder:
    """The rungs one call may climb from ``base_cluster`` (or from ``start`` rungs up, with ``start_cluster``:
    where an earlier call of the same handle succeeded), and what happened on each."""

    def __init__(self, policy: Escalation | dict[str, Any] | str | Sequence[str], base_cluster: Any, *,
                 start: int = 0, start_cluster: Any = None,
                 on_attempt: Callable[[Attempt], Any] | None = None) -> None:
        self.policy = Escalation.coerce(policy)
        self.base_cluster = base_cluster
        self.rungs = self.policy.rungs_from(_instance_type(base_cluster))
        self.start = min(max(start, 0), len(self.rungs) - 1)
        self.start_cluster = start_cluster if start_cluster is not None and self.start else base_cluster
        self.on_attempt = on_attempt
        self.attempts: list[Attempt] = []
        self.index = self.start
        self.budget_note: str | None = None
        self._call_started: dict[int, float] = {}
        self._limit = min(len(self.rungs) - self.start, self.policy.max_attempts or len(self.rungs))

    def next_step(self) -> Step:
        """The next attempt's rung and cluster (call :meth:`failed` or :meth:`succeeded` after it)."""
        number = self.index - self.start
        rung = self.rungs[self.index]
        cluster = self.start_cluster if number == 0 else _rung_cluster(self.base_cluster, rung, self.policy)
        self.index += 1
        return Step(number=number, rung=rung, cluster=cluster, started=time.time())

    def rung_index(self, step: Step) -> int:
        """Where ``step`` stands on the whole ladder (what a later call may start from)."""
        return self.start + step.number

    @staticmethod
    def call_id(base: str, step: Step) -> str:
        """The call id of ``step``: the given one first, then ``<id>-oom<n>`` (each rung runs its own call)."""
        return base if step.number == 0 else f"{base}-oom{step.number}"

    def calling(self, step: Step) -> None:
        """The target is up and deployed on ``step``'s cluster: the call itself starts now."""
        self._call_started[step.number] = time.time()

    def succeeded(self, step: Step) -> list[Attempt]:
        self._record(step, "ok", None, None)
        return self.attempts

    def failed(self, step: Step, exc: BaseException) -> None:
        """Record how ``step`` failed; return if the next rung may help, else raise (``exc`` itself, with the
        attempts as a note, or :class:`OutOfMemory` listing them when the ladder or the budget ran out)."""
        oom = classify_exception(exc)
        escalates = isinstance(exc, Exception) and self.policy.escalates(exc)
        outcome: Outcome = "error" if not escalates else "oom" if oom is not None else "escalated"
        self._record(step, outcome, exc, oom)
        if not escalates:
            exc.add_note(_summary(self.attempts))
            raise exc
        _shrink(step.cluster, self.policy.on_smaller)
        if len(self.attempts) < self._limit and self.index < len(self.rungs) and not self._over_budget():
            return
        if oom is None:  # a non-OOM type the policy escalates on: the last one is raised as it is
            exc.add_note(_summary(self.attempts))
            raise exc
        raise self._exhausted(exc) from exc

    # -- bookkeeping ------------------------------------------------------------------------------------------------
    def _record(self, step: Step, outcome: Outcome, exc: BaseException | None, oom: OutOfMemory | None) -> None:
        ended = time.time()
        price = _price(step.cluster, step.rung, self.policy)
        call_started = self._call_started.pop(step.number, None)
        attempt = Attempt(
            instance_type=step.rung, outcome=outcome, seconds=round(ended - step.started, 4),
            est_cost=None if price is None else round(price * (ended - step.started) / 3600, 6),
            cluster=getattr(step.cluster, "name", None), price_per_hour=price,
            call_seconds=None if call_started is None else round(ended - call_started, 4),
            error_type=None if exc is None else type(exc).__name__, error=None if exc is None else str(exc)[:500],
            started_at=step.started, call_started_at=call_started, ended_at=ended,
            details=dict(oom.details) if oom is not None else {},
        )  # fmt: skip
        attempt.details.pop("attempts", None)
        self.attempts.append(attempt)
        log.info("escalation_attempt", rung=step.rung, outcome=outcome, seconds=attempt.seconds,
                 est_cost=attempt.est_cost)
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    def spent(self) -> float:
        return sum(a.est_cost or 0.0 for a in self.attempts)

    def _over_budget(self) -> bool:
        """Whether the next rung would push the call past ``max_cost``."""
        ceiling = self.policy.max_cost
        if ceiling is None or self.index >= len(self.rungs):
            return False
        rung = self.rungs[self.index]
        price = self.policy.price_per_hour.get(rung or "") or _catalog_price(rung) or 0.0
        last = self.attempts[-1].seconds if self.attempts else 0.0
        projected = self.spent() + price * last / 3600
        if projected > ceiling:
            self.budget_note = (f"the next rung {rung} would bring the call to about ${projected:.4f}, "
                                f"over max_cost ${ceiling}")
            return True
        return False

    def _exhausted(self, exc: BaseException) -> OutOfMemory:
        oom = classify_exception(exc)
        details: dict[str, Any] = dict(oom.details) if oom is not None else {}
        details["attempts"] = [a.model_dump(mode="json") for a in self.attempts]
        details["spent"] = round(self.spent(), 6)
        tried = ", ".join(str(a.instance_type) for a in self.attempts)
        if self.budget_note:
            why, hint = self.budget_note, "raise max_cost, or make the job fit a smaller rung"
        elif self.index < len(self.rungs):
            why, hint = "max_attempts reached", "raise max_attempts"
        else:
            why, hint = "no larger rung left", "add a larger instance type to the ladder, or reduce memory use"
        return OutOfMemory(f"out of memory on every rung tried ({tried}): {why}", hint=hint, details=details)


class ServiceHandle(Protocol):
    """What :func:`run_with_escalation` needs of a service handle (``tether.Function`` is one)."""

    cluster: Any

    def with_cluster(self, cluster: Any, env: Any = None) -> Any: ...

    def call(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Any: ...


def run_with_escalation(
    function: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    policy: Escalation | dict[str, Any] | str | Sequence[str],
    *,
    base_cluster: Any,
    env: Any = None,
    on_attempt: Callable[[Attempt], Any] | None = None,
    **call_options: Any,
) -> Any:
    """Call ``function`` (a ``tether.function`` handle) on ``base_cluster``; on OOM move up ``policy.ladder``
    until it succeeds; returns the result.

    Each rung is ``base_cluster.derive(name=<base>-<rung>, instance_type=rung)``; the function runs there as
    ``function.with_cluster(cluster, env=env)`` (the handle passed in is left as it is) called with
    ``.call(args, kwargs, **call_options)`` (``call_id``, ``on_log``). ``on_attempt`` gets every
    :class:`Attempt`. A non-escalating error is re-raised as is; running out of rungs, attempts or budget raises
    :class:`OutOfMemory` whose ``details["attempts"]`` lists them.
    """
    if not (hasattr(function, "with_cluster") and hasattr(function, "call")):
        raise ConfigError(f"{function!r} is not a tether service handle",
                          hint="pass tether.function(fn) (deployed or not); the runner deploys it on each rung")
    ladder = Ladder(policy, base_cluster, on_attempt=on_attempt)
    options = {k: v for k, v in call_options.items() if v is not None}
    while True:
        step = ladder.next_step()
        try:
            target = function
            if getattr(function, "cluster", None) is not step.cluster or getattr(function, "spec", None) is None:
                step.cluster.up_if_not()
                target = function.with_cluster(step.cluster, env=env)
            ladder.calling(step)
            step_options = dict(options)
            if "call_id" in step_options:
                step_options["call_id"] = ladder.call_id(step_options["call_id"], step)
            value = target.call(tuple(args), dict(kwargs), **step_options)
        except BaseException as exc:
            ladder.failed(step, exc)
            continue
        ladder.succeeded(step)
        return value


def _rung_cluster(base: Any, rung: str | None, policy: Escalation) -> Any:
    config = base.config() if hasattr(base, "config") else {}
    kw = {k: config[k] for k in _INHERITED if config.get(k) is not None}
    if policy.provider is not None:
        kw["provider"] = policy.provider
    base_name = getattr(base, "name", None) or config.get("name") or "tether"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(rung)).strip("-").lower()
    return base.derive(f"{base_name}-{slug}"[:128], instance_type=rung, **kw)


def _summary(attempts: list[Attempt]) -> str:
    return "tether escalation attempts: " + "; ".join(
        f"{a.instance_type}: {a.outcome} after {a.seconds:.1f}s" for a in attempts
    )


def _shrink(cluster: Any, on_smaller: OnSmaller) -> None:
    """Apply ``on_smaller`` to a cluster that ran out of memory; the embedded default cluster is left alone."""
    if on_smaller == "keep" or _instance_type(cluster) is None:
        return
    try:
        if on_smaller == "down":
            cluster.teardown()
        elif on_smaller == "stop":
            cluster.stop()
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the OOM; it is logged instead
        log.warning("escalation_cleanup_failed", cluster=getattr(cluster, "name", None), error=str(exc))


def _price(cluster: Any, rung: str | None, policy: Escalation) -> float | None:
    try:  # a cluster that never came up has no handle
        price = getattr(cluster.handle, "price_per_hour", None)
    except Exception:  # noqa: BLE001
        price = None
    if price:  # the backend knows what it launched; a free local rung may carry a nominal policy price
        return float(price)
    if rung is not None and rung in policy.price_per_hour:
        return policy.price_per_hour[rung]
    if rung is not None and rung.lower().startswith("local"):
        return 0.0
    return _catalog_price(rung)


def _instance_type(cluster: Any) -> str | None:
    spec = getattr(cluster, "spec", None)
    if spec is not None:
        return getattr(spec, "instance_type", None)
    if hasattr(cluster, "config"):
        return cluster.config().get("instance_type")
    return getattr(cluster, "instance_type", None)


def _catalog_price(rung: str | None) -> float | None:
    """Cheapest on-demand $/h of an ``ACC:N`` rung in the catalog, or None."""
    if not rung or rung.lower().startswith("local"):
        return None
    try:
        acc, count = _split_accelerator(rung)
        prices = [
            o.price for o in catalog.offerings(accelerator=acc) if o.accelerator_count == count and o.price
        ]
    except Exception:  # noqa: BLE001 - no catalog here: the cost is unknown, not an error
        return None
    return min(prices) if prices else None
