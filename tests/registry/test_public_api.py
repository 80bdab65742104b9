"""The registry through the public API: save a deployed function, reload it by name (relaunching a stopped
local daemon from the saved spec), pinned versions, every resource type through ``tether.load``, usage, sharing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import tether
from examples.services.embed import embed, embed_batch
from tether.errors import AuthError, NotFound

ROOT = Path(__file__).resolve().parents[2]


def test_saved_function_relaunches_after_the_daemon_stopped(local: Any) -> None:
    remote = tether.function(embed).to(local, name="embed")
    expected = remote("hello world")
    v = remote.save()
    assert (v.name, v.version, v.kind) == ("alice/embed", 1, "function")
    assert v.code_hash and v.import_path == "examples.services.embed:embed"

    local.stop()
    assert tether.cluster().status() != "up"
    again = tether.function(name="embed")
    assert again("hello world") == expected
    assert tether.cluster().status() == "up"


def test_save_in_one_process_call_from_another(local: Any) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import tether
        from examples.services.embed import embed
        c = tether.cluster()
        r = tether.function(embed).to(c, name="shared-embed")
        print(r.save().version)
        c.stop()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=170,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1"
    loaded = tether.function(name="alice/shared-embed")
    assert loaded("from another process") == embed("from another process")


def test_pinned_versions_and_rollback_resolve_to_their_spec(local: Any) -> None:
    tether.function(embed).to(local, name="vec").save()
    tether.function(embed_batch).to(local, name="vec").save()
    assert tether.function(name="vec")(["a b"]) == [embed("a b")]
    assert tether.function(name="vec@1").spec.code.qualname == "embed"
    assert tether.function(name="vec").spec.code.qualname == "embed_batch"
    # a pinned version runs its own code under its own daemon name; the latest keeps serving other callers
    assert tether.function(name="vec@1")("a b") == embed("a b")
    assert tether.function(name="vec")(["a b"]) == [embed("a b")]
    tether.registry.tag("vec", 1, "prod")
    assert tether.function(name="vec@prod").spec.version == 1
    assert tether.registry.rollback("vec", 1).version == 3
    latest = tether.function(name="vec")
    assert (latest.spec.version, latest.spec.code.qualname) == (3, "embed")
    assert latest("a b") == embed("a b")  # the rolled-back version is what runs
    assert [h.import_path for h in tether.registry.history("vec")] == [
        "examples.services.embed:embed",
        "examples.services.embed:embed_batch",
        "examples.services.embed:embed",
    ]


def test_load_returns_each_resource_type() -> None:
    cluster = tether.cluster(name="lab", host="10.0.0.5", autostop_mins=30)
    cluster.save()
    env = tether.env(reqs=["numpy"], name="train")
    env.save()
    loaded_cluster, loaded_env = tether.load("lab"), tether.load("train")
    assert isinstance(loaded_cluster, tether.Cluster) and loaded_cluster.config() == cluster.config()
    assert isinstance(loaded_env, tether.Env) and loaded_env.config() == env.config()
    assert type(loaded_cluster).from_config(loaded_cluster.config()).config() == cluster.config()
    with pytest.raises(NotFound) as err:
        tether.load("trian")
    assert "alice/train" in err.value.details["suggestions"]


def test_usage_counts_the_calls_made(local: Any) -> None:
    remote = tether.function(embed).to(local, name="counted")
    remote.save()
    loaded = tether.function(name="counted")
    for i in range(5):
        loaded(f"text {i}")
    rows = tether.registry.usage("counted")
    assert [(r.caller, r.version, r.calls, r.errors) for r in rows] == [("alice", 1, 5, 0)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_share_through_the_team_server(local: Any, team_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_REGISTRY_URL", team_server.url)
    monkeypatch.setenv("TETHER_TOKEN", team_server.tokens["alice"])
    remote = tether.function(embed).to(local, name="team-embed")
    remote.save()
    monkeypatch.setenv("TETHER_TOKEN", team_server.tokens["carol"])
    with pytest.raises(AuthError) as err:
        tether.function(name="alice/team-embed")
    assert err.value.details["needed"] == "read"

    monkeypatch.setenv("TETHER_TOKEN", team_server.tokens["alice"])
    remote.share("carol", access_level="read")
    monkeypatch.setenv("TETHER_TOKEN", team_server.tokens["carol"])
    as_carol = tether.function(name="alice/team-embed")
    assert as_carol("shared") == embed("shared")
    tether.registry.flush()
    rows = tether.registry.usage("alice/team-embed")  # recorded under alice's service, with carol as caller
    assert [(r.caller, r.calls) for r in rows] == [("carol", 1)]
    with pytest.raises(AuthError) as err:
        as_carol.save("alice/team-embed")
    assert err.value.details["needed"] == "write"


def test_a_saved_version_keeps_its_code_after_the_source_changes(local: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text("[project]\nname='proj'\n")
    (proj / "versioned.py").write_text("def answer():\n    return 'v1'\n")
    monkeypatch.syspath_prepend(str(proj))
    mod = importlib.import_module("versioned")
    tether.function(mod.answer).to(local, name="answer").save()
    (proj / "versioned.py").write_text("def answer():\n    return 'v2'\n")
    importlib.reload(mod)
    tether.function(mod.answer).to(local, name="answer").save()
    assert tether.function(name="answer")() == "v2"
    assert tether.function(name="answer@1")() == "v1"  # from the snapshot taken when v1 was saved
    assert tether.function(name="answer")() == "v2"


def test_an_ad_hoc_deploy_never_answers_a_loaded_saved_version(local: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A teammate's ``tether.function(train).to(c)`` under the saved name does not make a handle loaded earlier
    run the teammate's code: calls carry the deployment they expect and the daemon answers only from it."""
    import importlib

    for name, text in (("team_train", "def train():\n    return 'saved v1'\n"),
                       ("my_train", "def train():\n    return 'ad hoc'\n")):
        proj = tmp_path / name
        proj.mkdir()
        (proj / "pyproject.toml").write_text(f"[project]\nname='{name}'\n")
        (proj / f"{name}.py").write_text(text)
        monkeypatch.syspath_prepend(str(proj))
    saved = importlib.import_module("team_train")
    mine = importlib.import_module("my_train")
    tether.function(saved.train).to(local, name="train").save()
    loaded = tether.function(name="train")
    assert loaded() == "saved v1"

    adhoc = tether.function(mine.train).to(local, name="train")  # replaces "train" on the daemon
    assert adhoc() == "ad hoc"
    assert loaded() == "saved v1", "the loaded handle runs the version it loaded, not the ad-hoc code"
    assert adhoc() == "ad hoc", "and the ad-hoc handle its own code"
    assert loaded.expects == "v1" and adhoc.expects is not None and adhoc.expects.startswith("h:")

    client = local.client.sync  # a caller that expects what is not there gets a typed error naming both
    with pytest.raises(NotFound) as info:
        client.call("train", None, (), {}, call_id=uuid.uuid4().hex, expect="v7")
    assert info.value.details["expected"] == "v7" and info.value.details["running"] == adhoc.expects


def test_a_loaded_version_moved_to_another_cluster_runs_its_saved_code(local: Any, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``with_cluster`` of a loaded handle ships the version's code snapshot, not whatever the source tree holds
    now (an orchestrator's connection moves saved services to its own cluster this way)."""
    import importlib

    proj = tmp_path / "moved"
    proj.mkdir()
    (proj / "pyproject.toml").write_text("[project]\nname='moved'\n")
    (proj / "moved_mod.py").write_text("def answer():\n    return 'saved'\n")
    monkeypatch.syspath_prepend(str(proj))
    mod = importlib.import_module("moved_mod")
    tether.function(mod.answer).to(local, name="moved").save()
    (proj / "moved_mod.py").write_text("def answer():\n    return 'edited, never saved'\n")
    other = tether.cluster(name=f"other-{uuid.uuid4().hex[:6]}")
    try:
        moved = tether.function(name="moved").with_cluster(other)
        assert moved() == "saved"
    finally:
        other.teardown()
