"""Secrets on the local cluster: read from where each tool keeps them, delivered to a real worker as env vars
and 0600 files, rotated, and absent from every log, state file, manifest, registry row and ``ps``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

import tether
from tests.envs import fns
from tests.envs.leaks import files_holding
from tether.api.secrets import secret

# built at run time, so the test's own source (synced to the cluster as code) never holds a whole value
AWS_KEY, AWS_SECRET = "AKIATETHER" + "TEST0001", "s3cr3t-aws-" + "value-9f8e7d"
HF_TOKEN = "hf_tethertest" + "tokenvalue1234"
WANDB_KEY = "wandbkey-0123456789" + "abcdef0123456789abcdef"
CUSTOM = "custom-db-pass" + "word-77aa11"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def tool_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME holding each tool's credentials where that tool keeps them."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {AWS_KEY}\naws_secret_access_key = {AWS_SECRET}\n")
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text(HF_TOKEN + "\n")
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {WANDB_KEY}\n")
    (home / ".netrc").chmod(0o600)
    (home / ".config" / "gcloud").mkdir(parents=True)
    (home / ".config" / "gcloud" / "application_default_credentials.json").write_text(
        json.dumps({"type": "authorized_user", "client_secret": "gcp-client-secret-xyz", "quota_project_id": "p1"}))
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsshkeybody\n")
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA test\n")
    monkeypatch.setenv("HOME", str(home))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE",
                "HF_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "WANDB_API_KEY", "NETRC", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_provider_secrets_are_read_from_where_each_tool_keeps_them(tool_home, tether_home, monkeypatch):
    assert secret("aws").values == {"access_key": AWS_KEY, "secret_key": AWS_SECRET}
    assert secret("hf").values == {"token": HF_TOKEN}
    assert secret("wandb").values["api_key"] == WANDB_KEY
    assert "gcp-client-secret-xyz" in secret("gcp").values["credentials_json"]
    assert "sshkeybody" in secret("ssh").values["private_key"]
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert secret("huggingface").values == {"token": "hf_from_env"}
    s = secret("aws")
    assert AWS_SECRET not in repr(s) and AWS_SECRET not in json.dumps(s.config())
    with pytest.raises(tether.NotFound) as info:
        secret("nothing-saved")
    assert "nothing-saved" in str(info.value)


def test_env_secrets_reach_the_worker_and_no_log_config_or_registry_row(tool_home, tether_home):
    c = tether.cluster(name="sec").up_if_not()
    mine = tether.secret("db", values={"DB_PASSWORD": CUSTOM})
    env = tether.env(name="withsecrets", secrets=[mine, "aws", "huggingface", "wandb"])
    assert env.config()["secrets"] == ["db", "aws", "huggingface", "wandb"]
    remote = tether.function(fns.environ_digests).to(c, env=env)
    names = ["DB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "HF_TOKEN",
             "HF_TOKEN_PATH", "WANDB_API_KEY", "NETRC"]
    seen = remote(names)
    assert seen["DB_PASSWORD"] == sha(CUSTOM) and seen["AWS_SECRET_ACCESS_KEY"] == sha(AWS_SECRET)
    assert seen["HF_TOKEN"] == sha(HF_TOKEN) and seen["WANDB_API_KEY"] == sha(WANDB_KEY)
    paths = tether.function(fns.environ).to(c, env=env)(["AWS_SHARED_CREDENTIALS_FILE", "NETRC"])
    creds = tether.function(fns.file_digest).to(c, env=env)(paths["AWS_SHARED_CREDENTIALS_FILE"])
    assert creds["mode"] == 0o600 and creds["first_line"] == "[default]" and creds["path"].endswith(".aws/credentials")
    assert creds["sha"] == sha(f"[default]\naws_access_key_id = {AWS_KEY}\naws_secret_access_key = {AWS_SECRET}\n")
    assert tether.function(fns.file_digest).to(c, env=env)(paths["NETRC"])["first_line"] == "machine api.wandb.ai"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    remote.save()
    version = tether.registry.get_registry().get("environ_digests")
    for value in (CUSTOM, AWS_SECRET, HF_TOKEN, WANDB_KEY):
        assert value not in ps
        assert value not in json.dumps(version.config)
        assert files_holding(tether_home, value) == []  # logs, state, manifest, registry.db: names only
    assert version.config["service"]["env"]["secrets"] == ["db", "aws", "huggingface", "wandb"]
    c.teardown()


def test_a_rotated_value_reaches_the_env_on_its_next_start(tool_home, tether_home):
    c = tether.cluster(name="rot").up_if_not()
    s = tether.secret("api", values={"API_KEY": "old-value-1"}).save()
    env = tether.env(name="rot", secrets=["api"])
    remote = tether.function(fns.environ_digests).to(c, env=env)
    assert remote(["API_KEY"]) == {"API_KEY": sha("old-value-1")}
    s.rotate({"API_KEY": "new-value-2"})
    assert tether.secret("api").values == {"API_KEY": "new-value-2"}
    assert remote(["API_KEY"]) == {"API_KEY": sha("old-value-1")}  # the running worker keeps its environment
    c.sync_secrets(["api"])
    c.restart_server()  # next start of the env's worker
    assert remote(["API_KEY"]) == {"API_KEY": sha("new-value-2")}
    s.delete()
    with pytest.raises(tether.NotFound):
        tether.secret("api")
    c.teardown()


def test_a_secret_missing_on_the_cluster_is_a_typed_error_naming_it(tool_home, tether_home):
    c = tether.cluster(name="miss").up_if_not()
    tether.secret("gone", values={"GONE": "value-never-shown"}).save()
    remote = tether.function(fns.environ).to(c, env=tether.env(name="gone", secrets=["gone"]))
    c.delete_secrets(["gone"])
    c.restart_server()
    with pytest.raises(tether.ConfigError) as info:
        remote(["GONE"])
    assert "gone" in str(info.value) and "value-never-shown" not in str(info.value)
    assert "sync_secrets" in (info.value.hint or "")
    c.teardown()


def test_secret_files_land_0600_in_the_tools_layout(tool_home, tether_home):
    c = tether.cluster(name="files").up_if_not()
    env = tether.env(name="files", secrets=["gcp", "ssh"])
    seen = tether.function(fns.environ).to(c, env=env)(["GOOGLE_APPLICATION_CREDENTIALS", "TETHER_SSH_KEY"])
    adc = Path(seen["GOOGLE_APPLICATION_CREDENTIALS"])
    assert adc.name == "application_default_credentials.json" and adc.parent.name == "gcloud"
    assert os.stat(adc).st_mode & 0o777 == 0o600 and "gcp-client-secret-xyz" in adc.read_text()
    key = Path(seen["TETHER_SSH_KEY"])
    assert key.parent.name == ".ssh" and os.stat(key).st_mode & 0o777 == 0o600
    c.teardown()
