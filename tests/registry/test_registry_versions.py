"""Versions, tags, rollback, names and validation on the local registry — against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tether.registry as treg
from tether.errors import ConfigError, NotFound
from tether.registry import CallRecord, Registry, open_registry
from tether.specs import ClusterSpec, CodeRef, EnvSpec, ServiceSpec


@pytest.fixture
def reg(db_url: str) -> Iterator[Registry]:
    r = open_registry(db=db_url)
    yield r
    r.close()


def function_config(code_hash: str = "h1", reqs: list[str] | None = None) -> dict[str, Any]:
    service = ServiceSpec(
        name="embed",
        env=EnvSpec(name="embed-env", reqs=reqs or ["numpy"]),
        code=CodeRef(
            root="/code", import_path="examples.services.embed", qualname="embed", code_hash=code_hash
        ),
    )
    return {
        "kind": "function",
        "service": service.model_dump(mode="json"),
        "cluster": {
            "kind": "cluster",
            **ClusterSpec(name="a10", instance_type="A10G:1").model_dump(mode="json"),
        },
        "env": {"kind": "env", **EnvSpec(name="embed-env", reqs=reqs or ["numpy"]).model_dump(mode="json")},
    }


ROUND_TRIP = {
    "function": function_config(),
    "module": {**function_config(), "kind": "module", "methods": ["encode", "decode"]},
    "instance": {**function_config(), "kind": "instance", "of": "alice/Embedder", "init": "gASVAAAA"},
    "cluster": {
        "kind": "cluster",
        **ClusterSpec(name="lab", host=["10.0.0.5"], autostop_mins=30).model_dump(mode="json"),
    },
    "env": {
        "kind": "env",
        **EnvSpec(name="train", reqs=["torch==2.3"], env_vars={"A": "1"}).model_dump(mode="json"),
    },
}


@pytest.mark.parametrize("kind", sorted(ROUND_TRIP))
def test_every_kind_round_trips_exactly(reg: Registry, kind: str) -> None:
    config = ROUND_TRIP[kind]
    saved = reg.save(f"thing-{kind}", config)
    loaded = reg.get(f"thing-{kind}")
    assert loaded.config == config
    assert list(loaded.config) == list(config)  # key order kept too
    assert (loaded.kind, loaded.version, loaded.name, loaded.saved_by) == (
        kind,
        1,
        f"alice/thing-{kind}",
        "alice",
    )
    assert loaded == saved


def test_save_records_code_hash_and_import_path(reg: Registry) -> None:
    v = reg.save("embed", function_config(code_hash="abc123"))
    assert v.code_hash == "abc123"
    assert v.import_path == "examples.services.embed:embed"
    assert reg.save("embed", function_config(), code_hash="explicit").code_hash == "explicit"


def test_each_save_is_a_new_immutable_version(reg: Registry) -> None:
    for i in range(1, 4):
        assert reg.save("embed", function_config(code_hash=f"h{i}")).version == i
    assert reg.get("embed").code_hash == "h3"
    assert reg.get("embed@1").code_hash == "h1"
    assert reg.get("alice/embed@2").code_hash == "h2"
    assert [v.version for v in reg.history("embed")] == [1, 2, 3]
    assert [v.code_hash for v in reg.history("embed")] == ["h1", "h2", "h3"]


def test_tags_select_a_version_and_move(reg: Registry) -> None:
    for i in range(1, 4):
        reg.save("embed", function_config(code_hash=f"h{i}"))
    assert reg.tag("embed", 2, "prod").tags == ["prod"]
    assert reg.get("embed@prod").version == 2
    reg.tag("embed", 3, "prod")
    assert reg.get("embed@prod").version == 3
    assert [v.tags for v in reg.history("embed")] == [[], [], ["prod"]]
    assert reg.list()[0].tags == {"prod": 3}


def test_rollback_records_a_copy_as_the_new_latest(reg: Registry) -> None:
    reg.save("embed", function_config(code_hash="good"))
    reg.save("embed", function_config(code_hash="bad"))
    v = reg.rollback("embed", 1)
    assert (v.version, v.copied_from, v.code_hash) == (3, 1, "good")
    assert reg.get("embed").config == reg.get("embed@1").config
    assert [h.version for h in reg.history("embed")] == [1, 2, 3]  # nothing rewritten


def test_unknown_name_lists_close_matches(reg: Registry) -> None:
    reg.save("embed", function_config())
    reg.save("embedder", function_config())
    with pytest.raises(NotFound) as err:
        reg.get("embd")
    assert "alice/embed" in err.value.details["suggestions"]
    assert "alice/embed" in str(err.value)


def test_unknown_version_and_tag_are_not_found(reg: Registry) -> None:
    reg.save("embed", function_config())
    reg.tag("embed", 1, "prod")
    with pytest.raises(NotFound, match="no version 7"):
        reg.get("embed@7")
    with pytest.raises(NotFound) as err:
        reg.get("embed@prd")
    assert err.value.details["suggestions"] == ["prod"]
    with pytest.raises(NotFound):
        reg.tag("embed", 9, "prod")
    with pytest.raises(NotFound):
        reg.rollback("embed", 9)
    assert reg.get("embed@prod").version == 1


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"kind": "function", "env": {"name": "ok", "memory_limit": "lots"}}, "env.memory_limit"),
        ({"kind": "cluster", "name": "lab", "instance_typo": "A10G:1"}, "instance_typo"),
        ({"kind": "airflow_dag", "dag_id": "x"}, "kind"),
        ({"name": "no kind at all"}, "kind"),
        ({"kind": "env", "name": "bad name!"}, "name"),
        ({"kind": "function", "score": float("nan")}, "score"),
        ({"kind": "function", "args": [1, {"x": object()}]}, "args[1].x"),
        (["kind", "function"], "config"),
    ],
)
def test_corrupt_or_foreign_config_names_the_field_and_saves_nothing(
    reg: Registry, config: Any, field: str
) -> None:
    reg.save("keep", function_config())
    with pytest.raises(ConfigError) as err:
        reg.save("broken", config)
    assert err.value.details["field"] == field
    assert field in str(err.value)
    with pytest.raises(ConfigError):
        reg.save("keep", config)
    with pytest.raises(NotFound):
        reg.get("broken")
    assert [v.version for v in reg.history("keep")] == [1]


def test_a_name_keeps_its_kind(reg: Registry) -> None:
    reg.save("embed", function_config())
    with pytest.raises(ConfigError) as err:
        reg.save("embed", ROUND_TRIP["cluster"])
    assert err.value.details["field"] == "kind"
    assert len(reg.history("embed")) == 1


@pytest.mark.parametrize("bad", ["", "a/b/c", "-x", "embed@0", "embed@latest!", "has space"])
def test_invalid_names_are_config_errors(reg: Registry, bad: str) -> None:
    with pytest.raises(ConfigError):
        reg.get(bad)


def test_tag_names_cannot_look_like_versions(reg: Registry) -> None:
    reg.save("embed", function_config())
    for bad in ("2", "latest", "-x"):
        with pytest.raises(ConfigError):
            reg.tag("embed", 1, bad)


def test_namespaces_separate_names(reg: Registry) -> None:
    reg.save("embed", function_config(code_hash="mine"))
    reg.save("ml-platform/embed", function_config(code_hash="team"))
    assert reg.get("embed").code_hash == "mine"
    assert reg.get("ml-platform/embed").code_hash == "team"
    assert [e.name for e in reg.list()] == ["alice/embed", "ml-platform/embed"]
    assert [e.name for e in reg.list("ml-platform")] == ["ml-platform/embed"]


def test_usage_counts_calls_per_caller_and_version(reg: Registry) -> None:
    reg.save("embed", function_config())
    reg.save("embed", function_config(code_hash="h2"))
    made = [
        ("alice", 1, "ok", 0.5),
        ("alice", 1, "ok", 1.5),
        ("alice", 2, "error", 1.0),
        ("bob", 2, "ok", 2.0),
    ]
    for i, (caller, version, outcome, secs) in enumerate(made):
        reg.record_call(
            CallRecord(
                name="embed",
                version=version,
                call_id=f"c{i}",
                caller=caller,
                outcome=outcome,
                duration_s=secs,
                run_id="dag/task/run1" if caller == "bob" else None,
                instance_type="A10G:1",
            )
        )
    reg.record_call(
        CallRecord(name="embed", version=1, call_id="c0", caller="alice", duration_s=0.5)
    )  # re-sent
    rows = {(r.caller, r.version): r for r in reg.usage("embed")}
    assert set(rows) == {("alice", 1), ("alice", 2), ("bob", 2)}
    assert (rows["alice", 1].calls, rows["alice", 1].errors, rows["alice", 1].total_s) == (2, 0, 2.0)
    assert (rows["alice", 1].mean_s, rows["alice", 1].max_s) == (1.0, 1.5)
    assert (rows["alice", 2].calls, rows["alice", 2].errors) == (1, 1)
    assert (rows["bob", 2].calls, rows["bob", 2].run_ids) == (1, 1)
    calls = reg.calls("embed")
    assert len(calls) == 4 and calls[0].call_id == "c3" and calls[0].instance_type == "A10G:1"


def test_module_functions_use_the_default_registry(tether_env: Any) -> None:
    v = treg.save("embed", function_config())
    assert treg.get_registry().where.endswith(str(tether_env / "registry.db"))
    assert treg.get("embed@1") == v
    treg.tag("embed", 1, "prod")
    assert treg.rollback("embed", 1).version == 2
    assert [x.version for x in treg.history("embed")] == [1, 2]
    treg.record_call(CallRecord(name="embed", version=2, call_id="x1", duration_s=0.1))
    assert treg.usage("embed")[0].calls == 1
    assert [e.name for e in treg.list()] == ["alice/embed"]


def test_call_records_accept_the_runtime_field_names(reg: Registry) -> None:
    reg.save("embed", function_config())
    reg.record_call(CallRecord(service="embed", version=1, call_id="a", seconds=2.5, outcome="ValueError"))
    reg.record_call(CallRecord(service="embed", version=1, call_id="b", seconds=1.5, outcome="OutOfMemory"))
    reg.record_call(CallRecord(service="embed", version=1, call_id="c", seconds=0.5, method="encode"))
    by_id = {c.call_id: c for c in reg.calls("embed")}
    assert (by_id["a"].outcome, by_id["a"].error_type, by_id["a"].duration_s) == ("error", "ValueError", 2.5)
    assert (by_id["b"].outcome, by_id["b"].error_type) == ("oom", "OutOfMemory")
    assert (by_id["c"].outcome, by_id["c"].method) == ("ok", "encode")
    assert [(r.calls, r.errors) for r in reg.usage("embed")] == [(3, 2)]
