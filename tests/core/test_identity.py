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
