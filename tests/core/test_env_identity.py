"""An env name means one env spec: used as it is by name, never silently rebuilt, the same after a daemon
restart, and a deploy into it never kills the calls running there. Real daemon and workers."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tests.core import services as svc


@pytest.fixture
def cluster(tether_home: Path) -> Iterator[tether.Cluster]:
    c = tether.cluster(name=f"envs-{uuid.uuid4().hex[:6]}").up_if_not()
    try:
        yield c
    finally:
        c.teardown()


PROD = tether.env(name="envA", env_vars={"API_URL": "https://prod"})


def test_an_env_named_by_a_later_deploy_is_used_as_it_is(cluster: tether.Cluster) -> None:
    reader = tether.function(svc.env_var).to(cluster, env=PROD, name="reader")
    assert reader("API_URL") == "https://prod"
    tether.function(svc.add).to(cluster, env="envA", name="adder")  # by name: "that env, as it is"
    assert reader("API_URL") == "https://prod", "the env was not rebuilt empty"
    assert tether.function(svc.env_var).to(cluster, env="envA", name="reader2")("API_URL") == "https://prod"


def test_another_spec_under_a_known_env_name_is_refused_with_the_difference(cluster: tether.Cluster) -> None:
    reader = tether.function(svc.env_var).to(cluster, env=PROD, name="reader")
    staging = tether.env(name="envA", env_vars={"API_URL": "https://staging"})
    with pytest.raises(tether.ConfigError, match="env_vars differ in API_URL") as info:
        tether.function(svc.add).to(cluster, env=staging, name="adder")
    assert "https://" not in info.value.message, "env var values are not shown"
    assert reader("API_URL") == "https://prod"
    tether.function(svc.add).to(cluster, env=staging, name="adder", replace_env=True)
    assert reader("API_URL") == "https://staging", "replace_env restarts the env, its services with it"


def test_after_a_daemon_restart_every_env_runs_its_own_spec(cluster: tether.Cluster) -> None:
    tether.function(svc.add).to(cluster, env="envA", name="adder")  # envA first made by name: empty
    reader = tether.function(svc.env_var).to(cluster, env=tether.env(name="envB", env_vars={"API_URL": "b"}),
                                             name="reader")
    with pytest.raises(tether.ConfigError):
        tether.function(svc.env_var).to(cluster, env=PROD, name="reader-a")  # envA exists, empty: refused
    pid = cluster.handle.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    assert reader("API_URL") == "b"
    assert tether.function(svc.env_var).to(cluster, env="envA", name="reader-a")("API_URL") is None


def test_a_deploy_into_a_busy_env_does_not_kill_its_running_calls(cluster: tether.Cluster, tmp_path: Path) -> None:
    sleeper = tether.function(svc.sleep_then).to(cluster, env=PROD, name="sleeper")
    running = sleeper.spawn(1.5, str(tmp_path / "marker"))
    tether.function(svc.add).to(cluster, env="envA", name="adder")  # same env by name: no restart
    assert running.result(timeout=30) == 1.5
    replaced = sleeper.spawn(1.0, str(tmp_path / "marker2"))
    staging = tether.env(name="envA", env_vars={"API_URL": "https://staging"})
    tether.function(svc.env_var).to(cluster, env=staging, name="reader", replace_env=True)  # waits for the call
    assert replaced.result(timeout=30) == 1.0
    assert tether.function(svc.env_var).to(cluster, env="envA", name="reader")("API_URL") == "https://staging"
