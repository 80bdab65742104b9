"""OOM escalation applies to a whole pytorch rank group: a rank killed for memory (a real worker memory limit
on a local rung) makes the group rerun, every rank, on the next rung; later calls start there."""

from __future__ import annotations

import uuid

import pytest

import tether
from tests.distributed import fns
from tether.errors import OutOfMemory
from tether.escalation import Escalation

LADDER = ["local:256MB", "local:1GB"]


def test_a_rank_killed_for_memory_reruns_the_whole_group_on_the_next_rung(dist_home, dist_env):
    base = tether.cluster(name=f"dist-oom-{uuid.uuid4().hex[:6]}", instance_type=LADDER[0]).up_if_not()
    seen: list[tether.escalation.Attempt] = []
    fn = tether.function(fns.rank_allocates).to(base, env=dist_env, on_oom=Escalation(ladder=LADDER))
    ranks = fn.with_options(on_attempt=seen.append).distribute("pytorch", num_replicas=2)
    try:
        small = ranks({0: 8, 1: 8})  # fits the small rung
        assert [r["rank"] for r in small] == [0, 1] and [a.outcome for a in seen] == ["ok"]
        seen.clear()
        out = ranks({0: 8, 1: 600})  # rank 1 is killed for memory on 256MB: both ranks rerun on 1GB
        assert [(r["rank"], r["mib"]) for r in out] == [(0, 8), (1, 600)]
        assert [(a.instance_type, a.outcome) for a in seen] == [("local:256MB", "oom"), ("local:1GB", "ok")]
        assert seen[0].error_type == "OutOfMemory"
        seen.clear()
        assert [r["mib"] for r in ranks({0: 600, 1: 600})] == [600, 600]  # straight to the rung that worked
        assert [(a.instance_type, a.outcome) for a in seen] == [("local:1GB", "ok")]
        with pytest.raises(OutOfMemory):  # past the last rung: OutOfMemory listing the attempts
            ranks({0: 8, 1: 4000})
    finally:
        for name in (base.name, f"{base.name}-local-1gb"):
            tether.cluster(name=name).teardown()
