"""Running a call under an :class:`~tether.escalation.policy.Escalation` policy: on OOM, the next rung."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_none
from tenacity.stop import stop_base

from tether.errors import OutOfMemory
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

__all__ = ["run_with_escalation"]

@dataclass
class _Run:
    """State of one escalated call across its attempts."""

    function: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    policy: Escalation
    base_cluster: Any
    env: Any
    rungs: list[str | None]
    on_attempt: Callable[[Attempt], Any] | None
    call_options: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    index: int = 0
    budget_note: str | None = None

    def attempt(self) -> Any:
        rung = self.rungs[self.index]
        number = self.index
        self.index += 1
        started = time.time()
        call_started: float | None = None
        cluster = self.base_cluster if number == 0 else _rung_cluster(self.base_cluster, rung, self.policy)
        try:
            if getattr(self.function, "cluster", None) is not cluster:
                cluster.up_if_not()
                self.function.to(cluster, env=self.env)  # redeploys in place: later calls go to this rung
            call_started = time.time()
            value = self.function.call(self.args, self.kwargs, **self._options(number))
        except BaseException as exc:
            oom = classify_exception(exc)
            escalates = isinstance(exc, Exception) and self.policy.escalates(exc)
            outcome: Outcome = "error" if not escalates else "oom" if oom is not None else "escalated"
            self._record(rung, cluster, outcome, started, call_started, exc, oom)
            if escalates:
                _shrink(cluster, self.policy.on_smaller)
            raise
        self._record(rung, cluster, "ok", started, call_started, None, None)
        return value

    def _options(self, number: int) -> dict[str, Any]:
        """Call options for attempt ``number``: a given call id gets a per-rung suffix after the first."""
        options = dict(self.call_options)
        if options.get("call_id") and number > 0:
            options["call_id"] = f"{options['call_id']}-oom{number}"
        return options

    def _record(self, rung: str | None, cluster: Any, outcome: Outcome, started: float,
                call_started: float | None, exc: BaseException | None, oom: OutOfMemory | None) -> None:  # fmt: skip
        ended = time.time()
        price = _price(cluster, rung, self.policy)
        attempt = Attempt(
            instance_type=rung, outcome=outcome, seconds=round(ended - started, 4),
            est_cost=None if price is None else round(price * (ended - started) / 3600, 6),
            cluster=getattr(cluster, "name", None), price_per_hour=price,
            call_seconds=None if call_started is None else round(ended - call_started, 4),
            error_type=None if exc is None else type(exc).__name__, error=None if exc is None else str(exc)[:500],
            started_at=started, call_started_at=call_started, ended_at=ended,
            details=dict(oom.details) if oom is not None else {},
        )  # fmt: skip
        attempt.details.pop("attempts", None)
        self.attempts.append(attempt)
        log.info(
            "escalation_attempt",
            rung=rung,
            outcome=outcome,
            seconds=attempt.seconds,
            est_cost=attempt.est_cost,
        )
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    def spent(self) -> float:
        return sum(a.est_cost or 0.0 for a in self.attempts)

    def over_budget(self, _state: Any = None) -> bool:
        """tenacity stop: the next rung would push the call past ``max_cost``."""
        ceiling = self.policy.max_cost
        if ceiling is None or self.index >= len(self.rungs):
            return False
        rung = self.rungs[self.index]
        price = self.policy.price_per_hour.get(rung or "") or _catalog_price(rung) or 0.0
        last = self.attempts[-1].seconds if self.attempts else 0.0
        projected = self.spent() + price * last / 3600
        if projected > ceiling:
            self.budget_note = f"the next rung {rung} would bring the call to about ${projected:.4f}, over max_cost ${ceiling}"
            return True
        return False


def run_with_escalation(
    function: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    policy: Escalation | dict[str, Any] | Sequence[str],
    *,
    base_cluster: Any,
    env: Any = None,
    on_attempt: Callable[[Attempt], Any] | None = None,
    **call_options: Any,
) -> Any:
    """Call ``function`` on ``base_cluster``; on OOM move up ``policy.ladder`` until it succeeds; the result.

    Each rung is ``tether.cluster(name=<base>-<rung>, instance_type=rung)``; the function is redeployed there
    in place with ``function.to(cluster, env=...)`` and called with ``function.call(args, kwargs,
    **call_options)`` (``call_id``, ``on_log``). ``function.attempts`` lists every attempt. A non-escalating
    error is re-raised as is; running out of rungs, attempts or budget raises :class:`OutOfMemory` whose
    ``details["attempts"]`` lists them too.
    """
    import tether

    pol = Escalation.coerce(policy)
    if not hasattr(function, "call"):
        function = tether.function(function)
    base_type = _instance_type(base_cluster)
    run = _Run(function=function, args=tuple(args), kwargs=dict(kwargs), policy=pol, base_cluster=base_cluster,
               env=env if env is not None else getattr(function, "env", None), rungs=pol.rungs_from(base_type),
               on_attempt=on_attempt, call_options={k: v for k, v in call_options.items() if v is not None})  # fmt: skip
    with contextlib.suppress(AttributeError):
        function.attempts = run.attempts
    stops: list[stop_base] = [stop_after_attempt(min(len(run.rungs), pol.max_attempts or len(run.rungs)))]
    if pol.max_cost is not None:
        stops.append(_Stop(run.over_budget))
    retrying = Retrying(
        stop=stop_any(*stops), wait=wait_none(), reraise=True,
        retry=retry_if_exception(lambda e: isinstance(e, Exception) and pol.escalates(e)),
    )  # fmt: skip
    try:
        value = retrying(run.attempt)
    except Exception as exc:
        if not pol.escalates(exc) or classify_exception(exc) is None:
            exc.add_note(_summary(run.attempts))  # not OOM (or a non-OOM type the policy escalates on)
            raise
        raise _exhausted(exc, run) from exc
    return value


class _Stop(stop_base):
    def __init__(self, check: Callable[[Any], bool]) -> None:
        self.check = check

    def __call__(self, retry_state: Any) -> bool:
        return self.check(retry_state)


def _exhausted(exc: Exception, run: _Run) -> OutOfMemory:
    oom = classify_exception(exc)
    details: dict[str, Any] = dict(oom.details) if oom is not None else {}
    details["attempts"] = [a.model_dump(mode="json") for a in run.attempts]
    details["spent"] = round(run.spent(), 6)
    tried = ", ".join(str(a.instance_type) for a in run.attempts)
    if run.budget_note:
        why, hint = run.budget_note, "raise max_cost, or make the job fit a smaller rung"
    elif run.index < len(run.rungs):
        why, hint = "max_attempts reached", "raise max_attempts"
    else:
        why, hint = "no larger rung left", "add a larger instance type to the ladder, or reduce memory use"
    return OutOfMemory(f"out of memory on every rung tried ({tried}): {why}", hint=hint, details=details)


def _summary(attempts: list[Attempt]) -> str:
    return "tether escalation attempts: " + "; ".join(
        f"{a.instance_type}: {a.outcome} after {a.seconds:.1f}s" for a in attempts
    )


def _rung_cluster(base: Any, rung: str | None, policy: Escalation) -> Any:
    import tether

    config = base.config() if hasattr(base, "config") else {}
    kw = {k: config[k] for k in _INHERITED if config.get(k) is not None}
    if policy.provider is not None:
        kw["provider"] = policy.provider
    base_name = getattr(base, "name", None) or config.get("name") or "tether"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(rung)).strip("-").lower()
    return tether.cluster(name=f"{base_name}-{slug}"[:128], instance_type=rung, **kw)


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
        from tether.compute import catalog

        acc, count = _split_accelerator(rung)
        prices = [
            o.price for o in catalog.offerings(accelerator=acc) if o.accelerator_count == count and o.price
        ]
    except Exception:  # noqa: BLE001 - no catalog here: the cost is unknown, not an error
        return None
    return min(prices) if prices else None
