"""Envs that ask for resources (``tether.env(compute={"CPU": .., "GPU": .., "memory": ..}, node=...)``): placed on
a node that has them, a request no node satisfies is a CapacityError naming what is missing, GPUs partitioned
with CUDA_VISIBLE_DEVICES across the envs of a node. Real GPUs are not here: the node's GPU count is faked by
TETHER_NODE_GPUS (read by the node-facts code, :func:`tether.api.placement.node_facts`); what each worker sees
is read from the worker itself."""

from __future__ import annotations

import os
import signal

import pytest

import tether
from tests.distributed import fns
from tether.api.placement import node_facts, place_env
from tether.compute.state import load_state
from tether.errors import CapacityError, ConfigError


def test_compute_is_validated_and_kept_in_the_env_spec():
    e = tether.env(name="gpu", compute={"CPU": 2, "GPU": 1, "memory": "8GB"}, node=1)
    assert e.spec.compute == {"CPU": 2.0, "GPU": 1.0, "memory": 8 * 1024**3} and e.spec.node == 1
    with pytest.raises(ConfigError, match="TPU"):
        tether.env(name="bad", compute={"TPU": 1})
    with pytest.raises(ConfigError, match="GPU"):
        tether.env(name="bad", compute={"GPU": 0.5})


def test_gpus_are_partitioned_among_envs_of_a_node_and_a_request_too_big_names_what_is_missing(
        dist_home, dist_env, monkeypatch):
    monkeypatch.setenv("TETHER_NODE_GPUS", "3")
    c = tether.cluster(name="dist-res").up_if_not()
    try:
        (facts,) = node_facts(c)
        assert facts.gpus == 3 and facts.cpus >= 1 and facts.memory and facts.memory > 0
        gpu2 = tether.env(name="two", python=dist_env.spec.python, compute={"GPU": 2})
        gpu1 = tether.env(name="one", python=dist_env.spec.python, compute={"GPU": 1, "CPU": 1})
        a = tether.function(fns.gpus_seen).to(c, env=place_env(c, gpu2), name="a")
        b = tether.function(fns.gpus_seen).to(c, env=place_env(c, gpu1), name="b")  # sees what "two" left
        assert a() == "0,1" and b() == "2"
        with pytest.raises(CapacityError, match="GPU") as err:
            place_env(c, tether.env(name="three", compute={"GPU": 1}))  # all 3 taken by the envs above
        assert err.value.details["missing"]
        with pytest.raises(CapacityError, match="memory"):
            place_env(c, tether.env(name="huge", compute={"memory": "1000TB"}))
        c.delete("two")  # its GPUs are free again
        pool = tether.function(fns.gpus_seen).to(
            c, env=tether.env(name="pg", python=dist_env.spec.python, compute={"GPU": 1})).distribute(
            "pool", num_replicas=2)
        try:
            assert set(pool.map(range(8))) == {"0", "1"}  # each replica its own GPU
        finally:
            pool.delete()
    finally:
        c.teardown()


def test_envs_are_placed_on_the_node_asked_for_or_one_that_has_the_resources(lab, hosts, dist_env):
    pinned = tether.env(name="pin", python=dist_env.spec.python, node=1)
    pool = tether.function(fns.where).to(lab, env=pinned).distribute("pool", num_replicas=2)
    try:
        homes = {o["home"] for o in pool.map(range(6))}
        assert homes == {str(hosts.hosts[1].home / "home")}  # both replicas on node 1
    finally:
        pool.delete()
    facts = node_facts(lab)
    assert len(facts) == 2 and all(f.cpus >= 1 for f in facts)
    big = tether.env(name="big", python=dist_env.spec.python, compute={"CPU": facts[0].cpus})
    pool = tether.function(fns.where).to(lab, env=big).distribute("pool", num_replicas=2)
    try:  # each replica takes every CPU of a node: one per node
        assert {o["home"] for o in pool.map(range(6))} == {str(h.home / "home") for h in hosts.hosts}
    finally:
        pool.delete()
    try:
        with pytest.raises(CapacityError, match="CPU"):
            tether.function(fns.where).to(lab, env=big).distribute("pool", num_replicas=3)
    finally:
        lab.delete("big")  # the service's own env holds every CPU of the head: free them for the tests after this
    with pytest.raises(ConfigError, match="node"):
        tether.function(fns.where).to(lab, env=tether.env(name="nowhere", node=5)).distribute("pool")


def test_a_plain_to_checks_the_heads_resources_and_partitions_its_gpus(dist_home, dist_env, monkeypatch):
    """``.to(c, env=env(compute=...))`` without ``.distribute()``: the service runs on the head, so the head must
    have what the env asks for, and its GPUs are shared out among such envs."""
    monkeypatch.setenv("TETHER_NODE_GPUS", "2")
    c = tether.cluster(name="dist-to").up_if_not()
    try:
        first = tether.function(fns.gpus_seen).to(
            c, env=tether.env(name="g1", python=dist_env.spec.python, compute={"GPU": 1}), name="first")
        again = tether.function(fns.gpus_seen).to(c, env="g1", name="again")  # the same env, not counted twice
        second = tether.function(fns.gpus_seen).to(
            c, env=tether.env(name="g2", python=dist_env.spec.python, compute={"GPU": 1}), name="second")
        assert {first(), second()} == {"0", "1"} and again() == first()
        with pytest.raises(CapacityError, match="GPU"):
            tether.function(fns.gpus_seen).to(c, env=tether.env(name="g3", compute={"GPU": 1}), name="third")
    finally:
        c.teardown()


def test_a_service_whose_env_names_a_node_runs_on_that_node(lab, hosts, dist_env):
    """``.to(c, env=env(node=k))`` without ``.distribute()``: the service itself lives on node k, and every way of
    calling it goes there (before: it was deployed on the head and ran there, silently)."""
    on1 = str(hosts.hosts[1].home / "home")
    fn = tether.function(fns.where).to(lab, env=tether.env(name="on1", python=dist_env.spec.python, node=1),
                                       name="where1")
    try:
        assert fn.env.spec.node == 1
        out = fn(3)
        assert out["square"] == 9 and out["home"] == on1
        assert fn.spawn(4).result(timeout=60)["home"] == on1
        assert [o["home"] for o in fn.map([1, 2])] == [on1, on1]
        tunnels = list((load_state(lab.name) or {}).get("node_tunnels", {}).values())
        assert len(tunnels) == 1
        os.kill(tunnels[0]["pid"], signal.SIGKILL)  # the client's tunnel to node 1 dies
        assert fn(6)["home"] == on1  # the next call reopens it
        assert type(fn).from_config(fn.config())(5)["home"] == on1  # a handle made from its config goes there too
        nodes = lab.nodes()
        assert "where1" in nodes[1]["services"] and "where1" not in nodes[0]["services"]
        tally = tether.module(fns.Tally).to(lab, env=tether.env(name="on1t", python=dist_env.spec.python,
                                                                node=nodes[1]["host"]))  # a node by its host
        t = tally(5, name="tally1")
        assert t.add() == 6 and t.add(2) == 8 and t.home() == on1
        assert "tally1" in lab.nodes()[1]["services"]
    finally:
        fn.delete()
    assert "where1" not in lab.nodes()[1]["services"]
    with pytest.raises(ConfigError, match="no node 7"):
        tether.function(fns.where).to(lab, env=tether.env(name="on7", node=7), name="where7")
