"""Escalation on out-of-memory, as a policy: the instance ladder to climb, limits on attempts and cost.

``Escalation`` is plain data (pydantic, JSON round-trip) so orchestrators can take it as a parameter;
``tether.escalation.runner`` drives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tether.compute import catalog
from tether.compute.catalog import GPU_MEMORY_GIB
from tether.errors import ConfigError, RemoteError
from tether.escalation.oom import classify_exception
from tether.logging import get_logger
from tether.specs import parse_bytes

__all__ = ["Attempt", "Escalation"]

log = get_logger("tether.escalation")

OnSmaller = Literal["keep", "stop", "down"]
Outcome = Literal["ok", "oom", "escalated", "error"]  # escalated: a non-OOM error named in escalate_on

# Cluster fields a rung inherits from the cluster the call started on.
_INHERITED = ("provider", "regions", "exclude_regions", "use_spot", "autostop_mins", "server_connection_type",
              "auth", "memory")  # fmt: skip


class Attempt(BaseModel):
    """One try on one rung: where, how it ended, how long it took and what it cost (estimated)."""

    model_config = ConfigDict(defer_build=True)  # built at first use, not import

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

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built at first use, not import

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
