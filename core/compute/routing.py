"""Routing: turn a cluster request ("A10G:1", "CPU:4+", memory="32+") into ranked catalog candidates.

``plan(spec)`` explains the decision without launching anything; ``run_plan(plan, attempt)`` walks the
candidates in order and fails over to the next one on a capacity, quota or auth error, recording why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tether.catalog import Offering
from tether.compute import catalog
from tether.errors import AuthError, CapacityError, ClusterUnavailable, ConfigError, QuotaError
from tether.specs import ClusterSpec

__all__ = ["Attempt", "Candidate", "Plan", "Request", "RoutingPolicy", "parse_request", "plan", "run_plan"]

T = TypeVar("T")
_COUNT_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*?)(?::(?P<count>\d+(?:\.\d+)?)(?P<plus>\+)?)?$")
#: SkyPilot targets without catalog prices (your own Kubernetes clusters and SSH node pools): ``"kubernetes"``,
#: ``"k8s/<context>"``, ``"ssh/<pool>"``. They rank after priced candidates unless listed earlier in a preference.
PRICELESS = ("kubernetes", "k8s", "ssh")
_AMOUNT_RE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:gb|gib)?\s*(?P<plus>\+)?\s*$", re.I)


class RoutingPolicy(BaseModel):
    """Where a cluster may go and how candidates are ordered.

    ``order="price"`` ranks every allowed cloud by price; ``"preference"`` keeps the clouds in the given order
    and ranks by price inside each cloud.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built at first use, not import

    clouds: list[str] | None = Field(None, description="allowed clouds (None: every catalog cloud)")
    order: Literal["price", "preference"] = "price"
    max_price_per_hour: float | None = Field(None, description="skip offerings above this $/h")
    regions: list[str] | None = Field(None, description="allowed regions, added to the spec's")
    exclude_regions: list[str] | None = Field(None, description="denied regions, added to the spec's")

    @classmethod
    def from_provider(cls, provider: Any) -> RoutingPolicy:
        """``None``/``"cheapest"`` → every cloud by price; ``"aws"`` → one cloud; a list → that preference order."""
        if isinstance(provider, RoutingPolicy):
            return provider
        if isinstance(provider, dict):
            return cls.model_validate(provider)
        if provider is None or provider == "cheapest":
            return cls()
        if isinstance(provider, str):
            return cls(clouds=[provider.lower()])
        if isinstance(provider, list | tuple):
            return cls(clouds=[str(p).lower() for p in provider], order="preference")
        raise ConfigError(
            f"provider {provider!r} is not 'cheapest', a cloud, a list of clouds or a RoutingPolicy"
        )


class Request(BaseModel):
    """A parsed resource request."""

    model_config = ConfigDict(defer_build=True)  # built at first use, not import

    accelerator: str | None = Field(None, description="GPU name; None for CPU-only requests")
    accelerator_count: float | None = None
    accelerator_count_min: bool = False
    instance_type: str | None = Field(None, description="an explicit instance type such as g5.xlarge")
    cpus: float | None = None
    cpus_min: bool = True
    memory_gib: float | None = None
    memory_min: bool = True
    gpu_memory_gib: float | None = None
    gpu_memory_min: bool = True

    def describe(self) -> str:
        parts = []
        if self.instance_type:
            parts.append(self.instance_type)
        if self.accelerator:
            parts.append(
                f"{self.accelerator}:{_fmt(self.accelerator_count)}{'+' if self.accelerator_count_min else ''}"
            )
        if self.cpus is not None:
            parts.append(f"CPU:{_fmt(self.cpus)}{'+' if self.cpus_min else ''}")
        if self.memory_gib is not None:
            parts.append(f"memory={_fmt(self.memory_gib)}{'+' if self.memory_min else ''}GiB")
        if self.gpu_memory_gib is not None:
            parts.append(f"gpu_memory={_fmt(self.gpu_memory_gib)}{'+' if self.gpu_memory_min else ''}GiB")
        return " ".join(parts) or "CPU (any)"


class Candidate(BaseModel):
    """One offering considered for the request, with why it was ranked where it is or skipped."""

    model_config = ConfigDict(defer_build=True)  # built at first use, not import

    cloud: str
    region: str
    instance_type: str
    accelerator: str | None = None
    accelerator_count: int = 0
    gpu_memory_gib: float | None = None
    vcpus: float | None = None
    memory_gib: float | None = None
    price_per_hour: float | None = None
    use_spot: bool = False
    reason: str = ""

    @property
    def infra(self) -> str:
        """SkyPilot's ``infra`` string for this candidate: ``cloud/region`` (``cloud`` alone when any region)."""
        return self.cloud if self.region == "*" else f"{self.cloud}/{self.region}"

    @property
    def priced(self) -> bool:
        """False for Kubernetes / SSH-pool targets: SkyPilot picks the node there, the catalog has no price."""
        return self.cloud not in PRICELESS

    def label(self) -> str:
        return f"{self.cloud}/{self.region}/{self.instance_type}"


class Attempt(BaseModel):
    """One launch attempt made while walking the plan."""

    model_config = ConfigDict(defer_build=True)  # built at first use, not import

    candidate: str = Field(description="cloud/region/instance_type")
    outcome: Literal["ok", "capacity", "quota", "auth", "skipped"]
    message: str = ""


class Plan(BaseModel):
    """Ranked candidates (best first), the offerings that were skipped and why, and launch attempts so far."""

    model_config = ConfigDict(defer_build=True)  # built at first use, not import

    request: str
    policy: RoutingPolicy
    use_spot: bool = False
    candidates: list[Candidate] = Field(default_factory=list)
    skipped: list[Candidate] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    chosen: Candidate | None = Field(
        None, description="the candidate that launched, or the first one before any"
    )

    def __str__(self) -> str:
        lines = [
            f"plan for {self.request} ({'spot' if self.use_spot else 'on-demand'}, order={self.policy.order})"
        ]
        if not self.candidates:
            lines.append("  no candidate matches")
        for i, c in enumerate(self.candidates, 1):
            mark = "*" if self.chosen is not None and c.label() == self.chosen.label() else " "
            lines.append(f" {mark}{i:>2}. {_row(c)}  {c.reason}")
        for a in self.attempts:
            lines.append(f"  tried {a.candidate}: {a.outcome}{': ' + a.message if a.message else ''}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            lines.extend(f"      {_row(c)}  {c.reason}" for c in self.skipped)
        return "\n".join(lines)


def parse_request(spec: ClusterSpec) -> Request:
    """Read ``instance_type``, ``memory`` and ``gpu_memory`` of a spec into a :class:`Request`."""
    req = Request()
    text = (spec.instance_type or "CPU").strip()
    m = _COUNT_RE.match(text)
    if not m:
        raise ConfigError(
            f"cannot read instance_type {text!r}", hint="use e.g. 'A10G:1', 'CPU:4+' or 'g5.xlarge'"
        )
    name, count, plus = m.group("name"), m.group("count"), bool(m.group("plus"))
    if name.upper() == "CPU":
        req.cpus = float(count) if count else None
        req.cpus_min = plus or count is None
    elif count is not None or _is_accelerator(name):
        req.accelerator = _canonical_accelerator(name)
        req.accelerator_count = float(count) if count else 1.0
        req.accelerator_count_min = plus
    else:
        req.instance_type = name
    if spec.memory is not None:
        req.memory_gib, req.memory_min = _amount(spec.memory, "memory")
    if spec.gpu_memory is not None:
        req.gpu_memory_gib, req.gpu_memory_min = _amount(spec.gpu_memory, "gpu_memory")
    return req


def plan(spec: ClusterSpec, *, policy: RoutingPolicy | None = None) -> Plan:
    """Rank every catalog offering that can serve ``spec``; explain each skipped one. Launches nothing."""
    pol = policy or RoutingPolicy.from_provider(spec.provider)
    if spec.backend != "sky":  # local, ssh, endpoint: the machine is given, nothing to choose
        where = spec.host or [getattr(spec, "endpoint", None) or "127.0.0.1"]
        cand = Candidate(cloud=str(spec.backend), region=where[0], instance_type=spec.instance_type or "host",
                         price_per_hour=0.0, reason=f"{spec.backend} backend: runs on {', '.join(where)}")  # fmt: skip
        return Plan(request=spec.instance_type or spec.backend, policy=pol, candidates=[cand], chosen=cand)
    req = parse_request(spec)
    allowed = _lower(spec.regions) | _lower(pol.regions) if (spec.regions or pol.regions) else None
    denied = _lower(spec.exclude_regions) | _lower(pol.exclude_regions)
    out = Plan(request=req.describe(), policy=pol, use_spot=spec.use_spot)
    ranked: list[tuple[tuple[Any, ...], Candidate]] = []
    for o in catalog.offerings(clouds=None, use_spot=False):
        if not _relevant(req, o):
            continue
        cand = _candidate(o, spec.use_spot)
        why = _why_not(req, o, cand, pol, allowed, denied, spec.use_spot)
        if why:
            cand.reason = why
            out.skipped.append(cand)
            continue
        pref = pol.clouds.index(o.cloud) if pol.order == "preference" and pol.clouds else 0
        ranked.append(((pref, cand.price_per_hour, o.cloud, o.region, o.instance_type), cand))
    for i, entry in enumerate(pol.clouds or []):
        base, _, where = entry.partition("/")
        if base in PRICELESS:
            cand = Candidate(cloud="kubernetes" if base == "k8s" else base, region=where or "*",
                             instance_type=req.instance_type or "(any)", accelerator=req.accelerator,
                             accelerator_count=int(req.accelerator_count or 0), gpu_memory_gib=req.gpu_memory_gib,
                             vcpus=req.cpus, memory_gib=req.memory_gib, use_spot=spec.use_spot)  # fmt: skip
            pref = i if pol.order == "preference" else 0
            ranked.append(((pref, math.inf, cand.cloud, cand.region, ""), cand))
    ranked.sort(key=lambda kv: (kv[0][0], kv[0][1] if kv[0][1] is not None else math.inf, *kv[0][2:]))
    out.candidates = [c for _, c in ranked]
    _explain(out)
    out.chosen = out.candidates[0] if out.candidates else None
    return out


def run_plan(
    the_plan: Plan, attempt: Callable[[Candidate], T], *, on_attempt: Callable[[Attempt], None] | None = None
) -> T:
    """Call ``attempt(candidate)`` for each candidate in order until one succeeds; record every try in the plan.

    A capacity or quota error moves on to the next candidate; an auth error also skips the rest of that cloud.
    Any other error propagates. When nothing launches, raises :class:`ClusterUnavailable` listing the attempts.
    """
    bad_clouds: dict[str, str] = {}
    last: Exception | None = None
    for cand in the_plan.candidates:
        if cand.cloud in bad_clouds:
            _record(the_plan, Attempt(candidate=cand.label(), outcome="skipped", message=bad_clouds[cand.cloud]),
                    on_attempt)  # fmt: skip
            continue
        try:
            result = attempt(cand)
        except (CapacityError, QuotaError, AuthError) as exc:
            last = exc
            kind: Literal["capacity", "quota", "auth"] = (
                "capacity"
                if isinstance(exc, CapacityError)
                else "quota"
                if isinstance(exc, QuotaError)
                else "auth"
            )
            if kind == "auth":
                bad_clouds[cand.cloud] = f"auth failed for {cand.cloud} earlier"
            _record(the_plan, Attempt(candidate=cand.label(), outcome=kind, message=exc.message), on_attempt)
            continue
        _record(the_plan, Attempt(candidate=cand.label(), outcome="ok"), on_attempt)
        the_plan.chosen = cand
        return result
    the_plan.chosen = None
    tried = "; ".join(f"{a.candidate}: {a.outcome}" for a in the_plan.attempts) or "no candidates"
    # only auth failures: say so (fix credentials); otherwise the cluster is unavailable (retry, widen the search)
    only_auth = bool(bad_clouds) and not _other_failures(the_plan)
    err_cls: type[ClusterUnavailable] | type[AuthError] = AuthError if only_auth else ClusterUnavailable
    raise err_cls(
        f"no candidate for {the_plan.request} could be launched ({tried})",
        hint="allow more clouds/regions, try spot/on-demand, or retry later",
        details={"attempts": [a.model_dump() for a in the_plan.attempts]},
    ) from last


# --- helpers ---------------------------------------------------------------------------------------------


def _record(the_plan: Plan, a: Attempt, cb: Callable[[Attempt], None] | None) -> None:
    the_plan.attempts.append(a)
    if cb is not None:
        cb(a)


def _other_failures(the_plan: Plan) -> bool:
    return any(a.outcome in ("capacity", "quota") for a in the_plan.attempts)


def _relevant(req: Request, o: Offering) -> bool:
    """Offerings worth reporting for this request (the rest of the catalog is not even mentioned)."""
    if req.instance_type:
        return o.instance_type.lower() == req.instance_type.lower()
    if req.accelerator:
        return (o.accelerator or "").lower() == req.accelerator.lower()
    return o.accelerator is None


def _why_not(
    req: Request, o: Offering, cand: Candidate, pol: RoutingPolicy, allowed: set[str] | None, denied: set[str],
    use_spot: bool,
) -> str | None:  # fmt: skip
    if pol.clouds is not None and o.cloud not in pol.clouds:
        return f"cloud {o.cloud} not in {pol.clouds}"
    if allowed is not None and o.region.lower() not in allowed:
        return f"region {o.region} not allowed"
    if o.region.lower() in denied:
        return f"region {o.region} denied"
    if req.accelerator and not _matches(
        o.accelerator_count, req.accelerator_count, req.accelerator_count_min
    ):
        return f"has {o.accelerator_count}x{o.accelerator}, asked {_fmt(req.accelerator_count)}"
    if req.cpus is not None and not _matches(o.vcpus, req.cpus, req.cpus_min):
        return f"{_fmt(o.vcpus)} vCPUs, asked {_fmt(req.cpus)}{'+' if req.cpus_min else ''}"
    if req.memory_gib is not None and not _matches(o.memory_gib, req.memory_gib, req.memory_min):
        return f"{_fmt(o.memory_gib)} GiB RAM, asked {_fmt(req.memory_gib)}{'+' if req.memory_min else ''}"
    if req.gpu_memory_gib is not None and not _matches(
        o.gpu_memory_gib, req.gpu_memory_gib, req.gpu_memory_min
    ):
        return f"{_fmt(o.gpu_memory_gib)} GiB per GPU, asked {_fmt(req.gpu_memory_gib)}+"
    if use_spot and o.spot_price is None:
        return "no spot offer"
    if cand.price_per_hour is None:
        return "no price"
    if pol.max_price_per_hour is not None and cand.price_per_hour > pol.max_price_per_hour:
        return f"${cand.price_per_hour:.4f}/h over the ${pol.max_price_per_hour}/h limit"
    return None


def _explain(out: Plan) -> None:
    if not out.candidates:
        return
    best = out.candidates[0]
    if not best.priced:
        pass
    elif out.policy.order == "preference" and out.policy.clouds:
        best.reason = f"first allowed cloud in {out.policy.clouds} with a match, cheapest there"
    else:
        best.reason = "cheapest match"
    for c in out.candidates:
        if not c.priced:
            c.reason = f"{c.cloud} target: no catalog price, SkyPilot picks the node"
    for c in out.candidates[1:]:
        if c.priced and best.priced:
            c.reason = f"fallback (+${(c.price_per_hour or 0) - (best.price_per_hour or 0):.4f}/h)"
        elif c.priced:
            c.reason = "fallback"


def _candidate(o: Offering, use_spot: bool) -> Candidate:
    return Candidate(
        cloud=o.cloud, region=o.region, instance_type=o.instance_type, accelerator=o.accelerator,
        accelerator_count=o.accelerator_count, gpu_memory_gib=o.gpu_memory_gib, vcpus=o.vcpus,
        memory_gib=o.memory_gib, price_per_hour=o.hourly(use_spot), use_spot=use_spot,
    )  # fmt: skip


def _matches(have: float | None, want: float | None, at_least: bool) -> bool:
    if want is None:
        return True
    if have is None:
        return False
    return have >= want - 1e-9 if at_least else abs(have - want) < 1e-9


def _amount(value: str | int | float, what: str) -> tuple[float, bool]:
    m = _AMOUNT_RE.match(str(value))
    if not m:
        raise ConfigError(
            f"cannot read {what}={value!r}", hint="use GiB, e.g. '32' (exactly) or '32+' (at least)"
        )
    return float(m.group("n")), bool(m.group("plus"))


def _is_accelerator(name: str) -> bool:
    return name.upper() in {k.upper() for k in catalog.GPU_MEMORY_GIB}


def _canonical_accelerator(name: str) -> str:
    for known in catalog.GPU_MEMORY_GIB:
        if known.upper() == name.upper():
            return known
    return name


def _lower(values: list[str] | None) -> set[str]:
    return {v.lower() for v in values or []}


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _row(c: Candidate) -> str:
    gpu = f"{c.accelerator_count}x{c.accelerator}" if c.accelerator else "CPU"
    mem = f"{_fmt(c.gpu_memory_gib)}GiB/GPU" if c.accelerator else ""
    price = f"${c.price_per_hour:.4f}/h" if c.price_per_hour is not None else "$?/h"
    return f"{c.cloud:<11}{c.region:<13}{c.instance_type:<18}{gpu:<11}{mem:<12}{_fmt(c.vcpus):>4} vCPU {_fmt(c.memory_gib):>5} GiB  {price}"
