"""Lineage in the real registry (SQLite and PostgreSQL, direct and through the team server): per-call edges, the
upstream walk (what produced this artifact, with which code, from which inputs) and the downstream walk (what
depends on this service version), access filtering, idempotent re-sends, and databases made before the tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tether.errors import AuthError, NotFound
from tether.registry import CallRecord, Registry, open_registry
from tether.registry.models import Artifact

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def config(code_hash: str) -> dict[str, Any]:
    return {"kind": "function", "code": {"import_path": "pipeline.steps", "qualname": "step", "code_hash": code_hash}}


def chain(reg: Registry, prefix: str = "") -> None:
    """prep@1 reads raw@w, writes dataset@1; pretrain@2 reads dataset@1, writes ckpt@y; bert@1 reads ckpt@y."""
    reg.save(f"{prefix}prep", config("hp1"))
    reg.save(f"{prefix}pretrain", config("hz1"))
    reg.save(f"{prefix}pretrain", config("hz2"))
    reg.save(f"{prefix}bert", config("hb1"))
    reg.record_call(CallRecord(
        name=f"{prefix}prep", version=1, call_id="c-prep", duration_s=2.0, started_at=T0, cluster="cpu-pool",
        run_id="airflow/daily/2026-11-30", inputs=[Artifact(uri="s3://lake/raw", version="w")],
        outputs=[Artifact(uri="s3://lake/dataset", version="1")],
    ))
    reg.record_call(CallRecord(
        name=f"{prefix}pretrain", version=2, call_id="c-pre", duration_s=3600.0, started_at=T0 + timedelta(hours=1),
        cluster="a100", inputs=[Artifact(uri="s3://lake/dataset", version="1")],
        outputs=[Artifact(uri="s3://ckpt/bert", version="y")],
    ))
    reg.record_call(CallRecord(
        name=f"{prefix}bert", version=1, call_id="c-bert", duration_s=0.1, started_at=T0 + timedelta(hours=3),
        cluster="a10", inputs=[Artifact(uri="s3://ckpt/bert", version="y")],
        outputs=[Artifact(uri="s3://preds/today")],
    ))


def check_chain(reg: Registry, ns: str) -> None:
    graph = reg.lineage("s3://preds/today")
    assert graph.direction == "upstream" and not graph.truncated
    assert [c.ref for c in graph.calls] == [f"{ns}/bert@1", f"{ns}/pretrain@2", f"{ns}/prep@1"]
    bert, pretrain, prep = graph.calls
    assert (bert.code_hash, bert.cluster, bert.caller) == ("hb1", "a10", ns)
    assert [str(a) for a in bert.inputs] == ["s3://ckpt/bert@y"]
    assert graph.producers_of("s3://ckpt/bert", "y") == [pretrain]
    assert (pretrain.code_hash, pretrain.import_path, pretrain.cluster) == ("hz2", "pipeline.steps:step", "a100")
    assert prep.run_id == "airflow/daily/2026-11-30" and [str(a) for a in prep.inputs] == ["s3://lake/raw@w"]
    assert {str(a) for a in graph.artifacts} == {
        "s3://preds/today", "s3://ckpt/bert@y", "s3://lake/dataset@1", "s3://lake/raw@w"}

    down = reg.dependents(f"{ns}/prep@1")
    assert down.direction == "downstream" and down.root == f"{ns}/prep@1"
    assert [c.ref for c in down.calls] == [f"{ns}/prep@1", f"{ns}/pretrain@2", f"{ns}/bert@1"]
    assert [c.ref for c in reg.dependents(f"{ns}/pretrain@2").calls] == [f"{ns}/pretrain@2", f"{ns}/bert@1"]
    assert reg.dependents(f"{ns}/pretrain@1").calls == []  # version 1 of pretrain never ran
    assert reg.lineage("s3://ckpt/bert", "y").services() == [f"{ns}/pretrain@2", f"{ns}/prep@1"]
    assert reg.lineage("s3://lake/raw", "w").calls == []  # nothing recorded producing the raw data

    one = reg.call(f"{ns}/pretrain", "c-pre")
    assert one.outputs == [Artifact(uri="s3://ckpt/bert", version="y")] and one.duration_s == 3600.0
    with pytest.raises(NotFound):
        reg.call(f"{ns}/pretrain", "nope")


def test_a_three_step_chain_in_the_store(db_url: str) -> None:
    reg = open_registry(db=db_url)
    try:
        chain(reg)
        check_chain(reg, "alice")
    finally:
        reg.close()


def test_a_three_step_chain_through_the_team_server(team_server: Any) -> None:
    alice = open_registry(url=team_server.url, token=team_server.tokens["alice"])
    carol = open_registry(url=team_server.url, token=team_server.tokens["carol"])
    chain(alice)
    check_chain(alice, "alice")
    # carol may read none of it: the walk hides the calls and says how many; the service itself is refused
    graph = carol.lineage("s3://preds/today")
    assert graph.calls == [] and graph.hidden == 1
    with pytest.raises(AuthError):
        carol.dependents("alice/prep@1")
    with pytest.raises(AuthError):
        carol.call("alice/bert", "c-bert")
    alice.share("bert", "carol", "read")  # bert only: its call shows, the producer of its checkpoint does not
    graph = carol.lineage("s3://preds/today")
    assert [c.ref for c in graph.calls] == ["alice/bert@1"] and graph.hidden == 1


def test_unversioned_inputs_link_to_the_latest_writer_before_the_read(db_url: str) -> None:
    reg = open_registry(db=db_url)
    try:
        reg.save("writer", config("w1"))
        reg.save("reader", config("r1"))
        for i, hour in enumerate((0, 2, 4)):
            reg.record_call(CallRecord(name="writer", version=1, call_id=f"w{i}", started_at=T0 + timedelta(hours=hour),
                                       outputs=[Artifact(uri="file:///data/table")]))
        reg.record_call(CallRecord(name="reader", version=1, call_id="r", started_at=T0 + timedelta(hours=3),
                                   inputs=[Artifact(uri="file:///data/table")], outputs=[Artifact(uri="file:///out")]))
        graph = reg.lineage("file:///out")
        assert [c.call_id for c in graph.calls] == ["r", "w1"]  # w2 wrote after the read, w0 was overwritten
        # downstream from w0: the reader started after it, and read the uri without a version
        assert [c.call_id for c in reg.dependents("writer").calls][:3] == ["w2", "w1", "w0"]
        assert "r" in [c.call_id for c in reg.dependents("writer").calls]
        # the root without a version: every writer, newest first
        assert [c.call_id for c in reg.lineage("file:///data/table").calls] == ["w2", "w1", "w0"]
    finally:
        reg.close()


def test_a_resent_record_adds_no_edge_twice_and_depth_limits_the_walk(db_url: str) -> None:
    reg = open_registry(db=db_url)
    try:
        reg.save("step", config("s1"))
        for i in range(6):  # a chain of 6 calls: a0 -> a1 -> ... -> a6
            record = CallRecord(name="step", version=1, call_id=f"s{i}", started_at=T0 + timedelta(minutes=i),
                                inputs=[Artifact(uri=f"mem://a{i}", version="1")],
                                outputs=[Artifact(uri=f"mem://a{i + 1}", version="1")] * 2)
            reg.record_call(record)
            reg.record_call(record)  # the same call id again: counted once, edges once
        reg.flush()
        store: Any = reg.backend
        with store.engine.connect() as conn:
            assert conn.execute(text("select count(*) from tether_lineage")).scalar() == 12
            assert conn.execute(text("select count(*) from tether_calls")).scalar() == 6
        assert len(reg.lineage("mem://a6", "1").calls) == 6
        short = reg.lineage("mem://a6", "1", depth=2)
        assert [c.call_id for c in short.calls] == ["s5", "s4"] and short.truncated
        assert len(reg.dependents("step@1", depth=0).calls) == 6  # every call of the version is a start
    finally:
        reg.close()


def test_a_registry_made_before_lineage_gets_the_tables(db_url: str) -> None:
    from tether.registry.store import Store

    old = Store(db_url)
    old.save(Registry(old, where="x").ref("embed", allow_selector=False), config("e1"), by="alice")
    old.record_calls([CallRecord(name="alice/embed", version=1, call_id="before", duration_s=1.0, caller="alice")])
    with old.engine.begin() as conn:  # the database as an older tether left it
        conn.execute(text("drop table tether_lineage"))
        conn.execute(text("drop table tether_call_context"))
    old.close()
    reg = open_registry(db=db_url)
    try:
        reg.record_call(CallRecord(name="embed", version=1, call_id="after", cluster="gpu",
                                   outputs=[Artifact(uri="s3://x", version=2)]))
        assert [u.calls for u in reg.usage("embed")] == [2]
        assert reg.call("embed", "before").outputs == [] and reg.call("embed", "before").cluster is None
        graph = reg.lineage("s3://x", "2")
        assert [(c.call_id, c.cluster) for c in graph.calls] == [("after", "gpu")]
    finally:
        reg.close()
