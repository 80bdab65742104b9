"""Mistakes fail at once, where they are made, with a typed error that says what to do."""

from __future__ import annotations

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
