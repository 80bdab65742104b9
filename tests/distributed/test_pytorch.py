"""``.distribute("pytorch")`` on two real hosts: torchrun's environment on every rank, a gloo all-reduce and one
DDP step across the hosts, per-rank log prefixes, a failing rank stopping the others, a timeout stopping all."""

from __future__ import annotations

import threading
import time

import pytest

import tether
from tests.distributed import fns
from tests.distributed.helpers import worker_envs
from tether.errors import CallCancelled, CallTimeout


def _no_ranks_left(hosts) -> bool:
    return all(not [e for e in worker_envs(hosts, i) if ".rank" in e] for i in range(2))


def test_every_rank_gets_torchruns_contract_spread_over_the_nodes(lab, hosts, dist_env):
    ranks = tether.function(fns.contract).to(lab, env=dist_env).distribute(
        "pytorch", num_replicas=4, replicas_per_node=2)
    out = ranks()
    assert [o["RANK"] for o in out] == ["0", "1", "2", "3"]
    assert {o["WORLD_SIZE"] for o in out} == {"4"} and {o["LOCAL_WORLD_SIZE"] for o in out} == {"2"}
    assert [o["LOCAL_RANK"] for o in out] == ["0", "1", "0", "1"]
    assert [o["GROUP_RANK"] for o in out] == ["0", "0", "1", "1"]
    assert {o["MASTER_ADDR"] for o in out} == {hosts.addresses[0]} and len({o["MASTER_PORT"] for o in out}) == 1
    homes = [str(h.home / "home") for h in hosts.hosts]
    assert [o["home"] for o in out] == [homes[0], homes[0], homes[1], homes[1]]
    assert len({o["pid"] for o in out}) == 4
    assert _no_ranks_left(hosts)  # the ranks' processes end with the call, as torchrun's do


def test_gloo_all_reduce_and_a_ddp_step_across_two_hosts_with_rank_prefixed_logs(lab, hosts, dist_env):
    events: list[dict] = []
    fn = tether.function(fns.allreduce_and_ddp_step).to(lab, env=dist_env).with_options(on_log=events.append)
    out = fn.distribute("pytorch", num_replicas=2, replicas_per_node=1)()
    assert [o["rank"] for o in out] == [0, 1] and {o["world"] for o in out} == {2}
    assert {o["sum"] for o in out} == {3.0}  # 1 + 2, reduced across the hosts
    assert out[0]["weights"] == out[1]["weights"]  # DDP averaged the gradients: one model on both ranks
    assert out[0]["home"] != out[1]["home"]
    texts = "".join(e.get("text", "") for e in events)
    assert "[rank 0] rank 0 of 2: all_reduce=3" in texts and "[rank 1] rank 1 of 2: all_reduce=3" in texts


def test_a_failing_rank_stops_the_others_and_raises_its_own_exception(lab, hosts, dist_env, tmp_path):
    ranks = tether.function(fns.fail_on_rank).to(lab, env=dist_env).distribute("pytorch", num_replicas=2)
    with pytest.raises(fns.RankFailed, match="rank 1 refuses") as info:
        ranks(1, str(tmp_path))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "raised by rank 1 of 2" in notes and "fail_on_rank" in notes  # its own remote traceback
    assert len(list(tmp_path.glob("rank-*"))) == 2  # both ran
    assert _no_ranks_left(hosts)  # rank 0, blocked in a barrier forever, was stopped


def test_a_timed_out_call_stops_every_rank(lab, hosts, dist_env, tmp_path):
    ranks = tether.function(fns.sleep_then_mark).to(lab, env=dist_env).distribute("pytorch", num_replicas=2)
    with pytest.raises(CallTimeout):
        ranks.call((0, str(tmp_path), 600.0), timeout=10)
    assert len(list(tmp_path.glob("start-*"))) == 2  # both ranks were running
    assert _no_ranks_left(hosts)


def test_cancel_from_another_thread_stops_every_rank(lab, hosts, dist_env, tmp_path):
    ranks = tether.function(fns.sleep_then_mark).to(lab, env=dist_env).distribute("pytorch", num_replicas=2)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            ranks.call((0, str(tmp_path), 600.0))
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    while len(list(tmp_path.glob("start-*"))) < 2 and t.is_alive():
        time.sleep(0.1)
    ranks.cancel()
    t.join(timeout=120)
    assert not t.is_alive() and isinstance(outcome[0], CallCancelled)
    assert _no_ranks_left(hosts)
