"""Secrets on real SSH hosts in network namespaces: ``cluster.sync_secrets`` writes each tool's files 0600 into
every host's HOME and gives every env's workers the variables; ``env(secrets=...)`` reaches the head's worker;
the values are in no file of the daemons' folders (logs, manifest, state), no local log or state file, no
registry row, no ``ps`` line on the hosts."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

import tether
from tests.envs import fns
from tests.envs.leaks import files_holding
from tether.compute.bootstrap import SSHTarget

pytestmark = pytest.mark.netns

HF = "hf_sshtest" + "tokenvalue0042"
AWS_SECRET = "aws-ssh-secret-" + "value-5c4d"
MINE = "my-own-" + "value-ee01"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.timeout(400)  # two hosts bootstrapped and brought up more than once
def test_secrets_reach_workers_and_host_homes_and_no_log_or_row(netns_hosts, pinned_wheel, tether_home, tmp_path):
    hosts = netns_hosts
    c = tether.cluster(name="sshsec", host=hosts.addresses, ssh_creds=hosts.ssh_creds).up_if_not()
    try:
        hf = tether.secret("huggingface", values={"token": HF})
        aws = tether.secret("aws", values={"access_key": "AKIASSH", "secret_key": AWS_SECRET})
        own = hosts.hosts[1].home / "home" / ".aws" / "credentials"
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text("[default]\naws_access_key_id = HOSTS-OWN\n")
        assert c.sync_secrets([hf, aws]) == ["huggingface", "aws"]
        assert "HOSTS-OWN" in own.with_name("credentials.tether-bak").read_text()  # the host's own file kept aside
        for h in hosts.hosts:  # the tool's own layout in each host's HOME, 0600
            token = h.home / "home" / ".cache" / "huggingface" / "token"
            assert token.read_text() == HF and token.stat().st_mode & 0o777 == 0o600
            assert AWS_SECRET in (h.home / "home" / ".aws" / "credentials").read_text()
        seen = tether.function(fns.environ_digests).to(c)(["HF_TOKEN", "AWS_SECRET_ACCESS_KEY"])
        assert seen == {"HF_TOKEN": sha(HF), "AWS_SECRET_ACCESS_KEY": sha(AWS_SECRET)}  # every env's workers

        mine = tether.secret("mine", values={"MY_VALUE": MINE})
        remote = tether.function(fns.environ_digests).to(c, env=tether.env(name="own", secrets=[mine]))
        assert remote(["MY_VALUE", "HF_TOKEN"]) == {"MY_VALUE": sha(MINE), "HF_TOKEN": sha(HF)}
        tether.secret("later", values={"LATER": "x"}).to(c, env="own")  # Runhouse's secret.to(cluster)
        c.restart_server()
        assert remote(["LATER"]) == {"LATER": None}  # only envs that name it get an env-scoped secret
        remote.save()
        rows = json.dumps(tether.registry.get_registry().get("environ_digests").config)

        ps = "".join(SSHTarget.from_creds(a, hosts.ssh_creds, tmp_path / "kh").run("ps -eo args", step="test")
                     for a in hosts.addresses)
        ps += subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        for value in (HF, AWS_SECRET, MINE):
            assert value not in ps and value not in rows
            for h in hosts.hosts:
                assert files_holding(h.home / "home" / ".tether", value) == []  # daemon.log, manifest, state
            assert files_holding(tether_home, value) == []
        c.delete_secrets(["mine"])
        for h in hosts.hosts:
            assert not list((h.home / "home" / ".tether").rglob("mine.json"))
    finally:
        c.teardown()
