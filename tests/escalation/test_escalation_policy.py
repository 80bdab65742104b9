"""The Escalation policy as plain data: validation, JSON round-trip, catalog ladders, which rungs a call climbs."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

import tether
from tether import catalog
from tether.errors import ConfigError, OutOfMemory, RemoteError, WorkerDied
from tether.escalation import Escalation


def test_policy_round_trips_through_json_and_dicts() -> None:
    policy = Escalation(ladder=["A10G:1", "L40S:1", "A100-80GB:1", "H100:1"], max_attempts=4, max_cost=12.5,
                        on_smaller="stop", escalate_on=["OutOfMemory", "WorkerDied"])  # fmt: skip
    again = Escalation.model_validate_json(policy.model_dump_json())
    assert again == policy
    assert Escalation.coerce(policy.model_dump(mode="json")) == policy
    assert Escalation.coerce(policy.model_dump_json()) == policy
    assert Escalation.coerce(["local:256MB", "local:1GB"]).ladder == ["local:256MB", "local:1GB"]
    assert policy.model_dump()["kind"] == "escalation"


def test_defaults_are_safe() -> None:
    policy = Escalation(ladder=["T4:1"])
    assert policy.on_smaller == "down" and policy.escalate_on == ["OutOfMemory"]
    assert policy.max_cost is None and policy.max_attempts is None


@pytest.mark.parametrize(
    "bad",
    [
        {"ladder": []},
        {"ladder": ["A10G:1", "A10G:1"]},
        {"ladder": ["A10G:1"], "on_smaller": "delete"},
        {"ladder": ["A10G:1"], "max_attempts": 0},
        {"ladder": ["A10G:1"], "max_cost": -1},
        {"ladder": ["A10G:1"], "retries": 3},
    ],
)
def test_invalid_policies_are_rejected(bad: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        Escalation.model_validate(bad)


def test_tether_exports_the_policy() -> None:
    assert tether.Escalation is Escalation


def test_by_memory_orders_by_gpu_memory_then_price_and_skips_what_adds_nothing(fixture_catalog: Path) -> None:
    policy = Escalation.by_memory(start="T4:1", providers="cheapest")
    ladder = policy.ladder
    assert ladder[0] == "T4:1"
    mems = [policy.memory_gib[r] for r in ladder]
    prices = [policy.price_per_hour[r] for r in ladder]
    assert mems == sorted(mems) and len(set(mems)) == len(mems), "every rung adds memory"
    # each rung is the cheapest single-GPU offer of its size, and no later rung is cheaper with more memory
    cheapest: dict[str, tuple[float, float]] = {}
    for o in catalog.offerings():
        if o.accelerator and o.accelerator_count == 1 and o.price is not None:
            m, p = cheapest.get(o.accelerator, (o.gpu_memory_gib, float("inf")))
            cheapest[o.accelerator] = (o.gpu_memory_gib, min(p, o.price))
    for rung, mem, price in zip(ladder, mems, prices, strict=True):
        acc = rung.split(":")[0]
        assert cheapest[acc] == (mem, price)
        same_size = [p for m, p in cheapest.values() if m == mem]
        assert price == min(same_size) or rung == "T4:1"
    for i in range(1, len(ladder)):
        assert all(p > prices[i] for p in prices[i + 1 :]), "a dominated rung was kept"
    # an accelerator left out is one that adds no memory (V100: 16 GiB like T4) or is dominated
    assert "V100:1" not in ladder and "A10G:1" not in ladder
    assert set(policy.price_per_hour) == set(ladder) and policy.provider == "cheapest"


def test_by_memory_respects_providers_exclusions_and_a_cap(fixture_catalog: Path) -> None:
    aws = Escalation.by_memory(start="T4:1", providers="aws")
    aws_accs = {o.accelerator for o in catalog.offerings(clouds=["aws"]) if o.accelerator}
    assert {r.split(":")[0] for r in aws.ladder} <= aws_accs and aws.provider == "aws"
    no_arm = Escalation.by_memory(start="T4:1", exclude=["GH200"])
    assert all(not r.startswith("GH200") for r in no_arm.ladder)
    capped = Escalation.by_memory(start="T4:1", max_gpu_memory_gib=48)
    assert max(capped.memory_gib.values()) <= 48 and len(capped.ladder) >= 2
    with pytest.raises(ConfigError, match="not offered"):
        Escalation.by_memory(start="TPU-v9:1")


def test_a_call_climbs_from_where_it_starts() -> None:
    policy = Escalation(ladder=["local:256MB", "local:1GB", "local:4GB"])
    assert policy.rungs_from("local:1GB") == ["local:1GB", "local:4GB"]
    assert policy.rungs_from("local:512MB") == ["local:512MB", "local:1GB", "local:4GB"], "only larger rungs"
    assert policy.rungs_from("local:2GB") == ["local:2GB", "local:4GB"]
    assert policy.rungs_from(None) == [None, "local:256MB", "local:1GB", "local:4GB"]
    gpus = Escalation(ladder=["T4:1", "A10G:1", "A100-80GB:1"])
    assert gpus.rungs_from("L4:1") == ["L4:1", "A100-80GB:1"], "A10G adds nothing over an L4 (24 GiB)"
    assert gpus.rungs_from("mystery-box") == ["mystery-box", "T4:1", "A10G:1", "A100-80GB:1"]


def test_which_errors_escalate() -> None:
    default = Escalation(ladder=["T4:1"])
    assert default.escalates(MemoryError())
    assert default.escalates(OutOfMemory("x"))
    assert default.escalates(RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"))
    assert not default.escalates(ValueError("bad input"))
    assert not default.escalates(WorkerDied("segfault", details={"returncode": -11, "evidence": {}}))
    wider = Escalation(ladder=["T4:1"], escalate_on=["OutOfMemory", "WorkerDied", "mylib.TooBig"])
    assert wider.escalates(WorkerDied("segfault"))
    assert wider.escalates(RemoteError("TooBig: 3", details={"remote_type": "mylib.TooBig"}))
    only_named = Escalation(ladder=["T4:1"], escalate_on=["TimeoutError"])
    assert only_named.escalates(TimeoutError()) and not only_named.escalates(MemoryError())


def test_memory_of_rungs() -> None:
    policy = Escalation(ladder=["local:256MB", "A100-80GB:2"], memory_gib={"custom": 7})
    assert policy.memory_of("local:256MB") == 0.25
    assert policy.memory_of("A100-80GB:2") == 160
    assert policy.memory_of("custom") == 7
    assert policy.memory_of("g5.xlarge") is None and policy.memory_of(None) is None
