"""Escalation on out-of-memory: rerun a call on the next larger rung of an instance ladder.

``Escalation`` is plain data (pydantic, JSON round-trip) so orchestrators can take it as a parameter;
``run_with_escalation`` drives it with tenacity through the public API only (cluster, function, teardown).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_none
from tenacity.stop import stop_base

from tether.errors import ConfigError, OutOfMemory, RemoteError
from tether.oom import classify_exception
from tether.specs import parse_bytes

__all__ = ["Attempt", "Escalation", "run_with_escalation"]

log = structlog.get_logger("tether.escalation")

OnSmaller = Literal["keep", "stop", "down"]
Outcome = Literal["ok", "oom", "escalated", "error"]  # escalated: a non-OOM error named in escalate_on

# Cluster fields a rung inherits from the cluster the call started on.
_INHERITED = ("provider", "regions", "exclude_regions", "use_spot", "autostop_mins", "server_connection_type",
              "auth", "memory")  # fmt: skip


class Attempt(BaseModel):
    """One try on one rung: where, how it ended, how long it took and what it cost (estimated)."""

    instance_type: str | None = Field(description="the rung; None for the embedded default cluster")
    outcome: Outcome
    seconds: float = Field(description="wall time on this rung: bring-up, deploy and call")
    est_cost: float | None = Field(
        None, description="seconds x the rung's $/h; None when the price is unknown"
    )
    cluster: str | None = None
    price_per_hour: float | None = None
    call_seconds: float | None = Field(None, description="time inside the call itself")
    error_type: str | None = None
    error: str | None = None
    started_at: float = Field(description="epoch seconds: the rung's bring-up started")
    call_started_at: float | None = Field(None, description="epoch seconds: the call was sent")
    ended_at: float
    details: dict[str, Any] = Field(default_factory=dict, description="what the OOM detection saw")

    def as_tuple(self) -> tuple[str | None, str, float, float | None]:
        """``(instance_type, outcome, seconds, est_cost)``."""
        return (self.instance_type, self.outcome, self.seconds, self.est_cost)


class Escalation(BaseModel):
    """Where to go when a call runs out of memory: an ordered ladder of instance types and the rules."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["escalation"] = "escalation"
    ladder: list[str] = Field(
        min_length=1, description="instance types, smallest first ('A10G:1', 'local:1GB')"
    )
    max_attempts: int | None = Field(
        None, ge=1, description="attempts in all, first one included (None: ladder)"
    )
    max_cost: float | None = Field(None, ge=0, description="ceiling in $ for one call over all its attempts")
    on_smaller: OnSmaller = Field("down", description="what to do with a cluster that ran out of memory")
    escalate_on: list[str] = Field(
        default_factory=lambda: ["OutOfMemory"],
        description="exception names that move to the next rung; 'OutOfMemory' means any detected OOM",
    )
    provider: str | list[str] | None = Field(None, description="provider for the rungs (default: the base's)")
    memory_gib: dict[str, float] = Field(default_factory=dict, description="known memory per rung (GiB)")
    price_per_hour: dict[str, float] = Field(
        default_factory=dict, description="known $/h per rung (used when the backend reports none or 0)"
    )

    @field_validator("ladder")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"ladder has repeated rungs: {v}")
        return v

    @classmethod
    def coerce(cls, policy: Escalation | dict[str, Any] | str | Sequence[str]) -> Escalation:
        """An ``Escalation`` from itself, its dict/JSON form, or a bare ladder."""
        if isinstance(policy, Escalation):
            return policy
        if isinstance(policy, dict):
            return cls.model_validate(policy)
        if isinstance(policy, str):
            return cls.model_validate_json(policy)
        return cls(ladder=list(policy))

    @classmethod
    def by_memory(
        cls,
        start: str = "T4:1",
        providers: str | Iterable[str] | None = "cheapest",
        *,
        use_spot: bool = False,
        regions: Iterable[str] | None = None,
        max_gpu_memory_gib: float | None = None,
        exclude: Iterable[str] = (),
        **fields: Any,
    ) -> Escalation:
        """A ladder from the catalog: ``start``, then every accelerator with more GPU memory, by memory then
        price; rungs that add no memory, or cost more than a rung with more memory, are skipped. ``exclude``
        leaves accelerators out (e.g. ``["GH200"]``, an ARM host)."""
        from tether import catalog

        acc, count = _split_accelerator(start)
        named = [providers] if isinstance(providers, str) else list(providers or [])
        clouds = None if named in ([], ["cheapest"]) else named
        skip = {e.lower() for e in exclude}
        best: dict[str, tuple[float, float]] = {}
        for o in catalog.offerings(clouds=clouds, regions=regions, use_spot=use_spot):
            price = o.hourly(use_spot)
            if not o.accelerator or o.accelerator_count != count or not o.gpu_memory_gib or price is None:
                continue
            if o.accelerator.lower() in skip and o.accelerator.lower() != acc.lower():
                continue
            mem = o.gpu_memory_gib * count
            if o.accelerator not in best or price < best[o.accelerator][1]:
                best[o.accelerator] = (mem, price)
        key = next((name for name in best if name.lower() == acc.lower()), None)
        if key is None:
            raise ConfigError(
                f"{start!r} is not offered by {providers!r} in the catalog",
                hint=f"start from one of {sorted(f'{n}:{count}' for n in best)}",
            )
        floor = best[key][0]
        above = sorted((m, p, n) for n, (m, p) in best.items()
                       if m > floor and (max_gpu_memory_gib is None or m <= max_gpu_memory_gib))  # fmt: skip
        ladder, memory, prices = (
            [f"{key}:{count}"],
            {f"{key}:{count}": floor},
            {f"{key}:{count}": best[key][1]},
        )
        for i, (mem, price, name) in enumerate(above):
            if mem <= memory[ladder[-1]]:
                continue  # adds no memory over the rung below (the cheaper one of that size is already in)
            if any(m2 > mem and p2 <= price for m2, p2, _ in above[i + 1 :]):
                continue  # a rung with more memory costs no more
            rung = f"{name}:{count}"
            ladder.append(rung)
            memory[rung], prices[rung] = mem, price
        if "provider" not in fields and named:
            fields["provider"] = providers if isinstance(providers, str) else named
        return cls(ladder=ladder, memory_gib=memory, price_per_hour=prices, **fields)

    def memory_of(self, rung: str | None) -> float | None:
        """GiB of (GPU, else host) memory a rung has, when it is known."""
        if rung is None:
            return None
        if rung in self.memory_gib:
            return self.memory_gib[rung]
        if rung.lower().startswith("local:"):
            try:
                return (parse_bytes(rung.split(":", 1)[1]) or 0) / 2**30
            except ValueError:
                return None
        from tether.catalog import GPU_MEMORY_GIB

        acc, count = _split_accelerator(rung)
        mem = GPU_MEMORY_GIB.get(acc)
        return mem * count if mem is not None else None

    def rungs_from(self, start: str | None) -> list[str | None]:
        """The rungs a call starting on ``start`` may climb, in order (``max_attempts`` caps how many it tries)."""
        if start in self.ladder:
            rungs: list[str | None] = list(self.ladder[self.ladder.index(start) :])
        else:
            floor = self.memory_of(start)
            known = floor is not None and all(self.memory_of(r) is not None for r in self.ladder)
            rungs = [start, *(r for r in self.ladder if not known or (self.memory_of(r) or 0) > (floor or 0))]
        return rungs

    def escalates(self, exc: BaseException) -> bool:
        """Whether ``exc`` moves the call to the next rung."""
        names = set(self.escalate_on)
        if "OutOfMemory" in names and classify_exception(exc) is not None:
            return True
        seen = {k.__name__ for k in type(exc).__mro__} | {
            f"{k.__module__}.{k.__qualname__}" for k in type(exc).__mro__
        }
        if isinstance(exc, RemoteError) and exc.remote_type:
            seen |= {exc.remote_type, exc.remote_type.rsplit(".", 1)[-1]}
        return bool(names & seen)


def _split_accelerator(rung: str) -> tuple[str, int]:
    name, _, count = rung.partition(":")
    try:
        return name, int(float(count)) if count else 1
    except ValueError:
        return name, 1


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
        from tether import catalog

        acc, count = _split_accelerator(rung)
        prices = [
            o.price for o in catalog.offerings(accelerator=acc) if o.accelerator_count == count and o.price
        ]
    except Exception:  # noqa: BLE001 - no catalog here: the cost is unknown, not an error
        return None
    return min(prices) if prices else None
