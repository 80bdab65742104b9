"""Sharing a live service writes two secrets: the tokens handed out (``clusters/issued-tokens.json``) and the
daemon's grants (its access file, hashes only). Another unix user on the machine reads neither, and reaches
nothing of the shared service without a token. Runs the attacker's side as a second, unprivileged user (see
tests/reliability/test_local_privacy.py, whose fixtures these are)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import tether as rh
from tests.compat import services as svc
from tests.reliability.test_local_privacy import SYSTEM_PYTHON, as_user, home, intruder, shared

__all__ = ["home", "intruder", "shared"]  # the fixtures, imported for pytest


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_another_user_reads_no_shared_token_and_cannot_call(home, intruder):
    c = rh.cluster(name="share-priv").up_if_not()
    remote = rh.function(svc.add).to(c, name="priv_add")
    token = remote.share(users=["alice"], access_level="read")["alice"]
    issued = home / "clusters" / "issued-tokens.json"
    access = next(p for p in home.rglob("access.json"))
    assert _mode(issued) == 0o600 and _mode(access) == 0o600
    assert token not in access.read_text()  # the daemon keeps only the hash
    for path in (issued, access):
        r = as_user(intruder, "cat", str(path))
        assert r.returncode != 0 and token not in r.stdout
    probe = (f"import urllib.request, urllib.error\n"
             f"try:\n    urllib.request.urlopen('{remote.endpoint()}?a=1&b=2', timeout=10)\n"
             f"    print('called')\nexcept urllib.error.HTTPError as e:\n    print(e.code)\n")
    r = as_user(intruder, SYSTEM_PYTHON, "-c", probe)
    assert r.stdout.strip() == "401", r.stdout + r.stderr
    grants = json.loads(access.read_text())["grants"]
    assert [g["principal"] for g in grants] == ["alice"] and grants[0]["services"] == {"priv_add": "read"}
