"""A name means one thing: typed errors where a mistake is made, a saved instance keeps its state, a cluster name
finds the cluster brought up here whatever its backend."""

from __future__ import annotations

from pathlib import Path

import pytest

import tether


def test_a_string_passed_as_the_function_names_the_fix() -> None:
    with pytest.raises(tether.ConfigError, match=r"name='embed'"):
        tether.function("embed")  # type: ignore[arg-type]
    with pytest.raises(tether.ConfigError, match=r"name='Counter'"):
        tether.module("Counter")


def test_unknown_ssh_creds_keys_fail_when_the_cluster_is_described() -> None:
    with pytest.raises(tether.ConfigError, match="unknown ssh_creds key 'password'"):
        tether.cluster(name="lab", host="10.0.0.1", ssh_creds={"user": "me", "password": "x"})


def test_runhouse_ssh_creds_spellings_mean_ours() -> None:
    c = tether.cluster(name="lab", host="10.0.0.1",
                       ssh_creds={"ssh_user": "me", "ssh_private_key": "~/.ssh/id_ed25519", "ssh_port": 2222})
    assert c.spec.ssh_creds == {"user": "me", "key": "~/.ssh/id_ed25519", "port": "2222"}
    with pytest.raises(tether.ConfigError, match="twice"):
        tether.cluster(name="lab", host="10.0.0.1", ssh_creds={"user": "me", "ssh_user": "you"})


def test_saving_a_live_instance_keeps_its_state(tether_home: object) -> None:
    from tests.core.services import Counter

    c = tether.cluster(name="identity-inst").up_if_not()
    try:
        ctr = tether.module(Counter).to(c, name="Counter")(start=5, name="ctr")
        for _ in range(3):
            ctr.incr()
        assert ctr.remote.n == 8
        ctr.save()
        assert ctr.remote.n == 8, "save() does not run __init__ again"
        loaded = tether.load("ctr")
        assert loaded.remote.n == 8 and loaded.incr() == 9
        assert ctr.remote.n == 9, "the copy loaded by name is the same live object"
    finally:
        c.teardown()


def test_setting_a_remote_attribute_sets_it(tether_home: object) -> None:
    from tests.core.services import Counter

    c = tether.cluster(name="identity-attr").up_if_not()
    try:
        ctr = tether.module(Counter).to(c, name="Counter")(start=1, name="ctr")
        ctr.remote.n = 41
        assert ctr.remote.n == 41 and ctr.incr() == 42
        with pytest.raises(AttributeError):
            ctr.remote._secret = 1
    finally:
        c.teardown()


def test_a_cluster_name_finds_the_cluster_brought_up_here_whatever_its_backend(tether_home: Path) -> None:
    """``tether.cluster(name=X)`` reconnects to the ssh cluster X brought up here (its state file, as the ssh
    backend writes it) instead of making a new local one, and no local daemon overwrites that state."""
    from tether.compute.state import save_state, state_path

    ssh_spec = tether.cluster(name="lab", host=["10.9.9.9"], ssh_creds={"user": "me"}).spec
    save_state("lab", {"backend": "ssh", "spec": ssh_spec.model_dump(mode="json"), "hosts": ["10.9.9.9"],
                       "token": "t0k3n", "remote_port": 32300})
    before = state_path("lab").read_bytes()
    try:
        found = tether.cluster(name="lab")
        assert found.spec.backend == "ssh" and found.spec.host == ["10.9.9.9"]
        with pytest.raises(tether.ConfigError, match="already a ssh cluster"):
            tether.cluster(name="lab", backend="local").up()
        assert state_path("lab").read_bytes() == before, "the ssh cluster's state (its token) is untouched"
    finally:  # no such host: the home's teardown would wait its ssh timeout out to stop it
        state_path("lab").unlink()


def test_local_state_is_written_privately_and_names_its_backend(tether_home: Path) -> None:
    from tether.compute.state import load_state, state_path

    c = tether.cluster(name="private").up_if_not()
    try:
        assert state_path("private").stat().st_mode & 0o077 == 0
        state = load_state("private")
        assert state is not None and state["backend"] == "local" and state["spec"]["name"] == "private"
        assert not list(state_path("private").parent.glob(".*.tmp"))
    finally:
        c.teardown()
