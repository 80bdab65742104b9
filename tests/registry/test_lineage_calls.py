"""Lineage from the point of execution: remote code on a real local daemon declares inputs and outputs
(``tether.lineage``), the caller stores them with each call's usage record, and the registry answers upstream
and downstream questions about a three-step chain."""

from __future__ import annotations

from typing import Any

import pytest

import tether
from tests.registry import lineage_fns
from tether.api.report import collecting
from tether.errors import ConfigError


def test_a_three_step_chain_declared_where_it_runs(local: Any) -> None:
    prep = tether.function(lineage_fns.prep).to(local, name="prep")
    pretrain = tether.function(lineage_fns.pretrain).to(local, name="pretrain")
    bert = tether.function(lineage_fns.serve_bert).to(local, name="bert")
    versions = {h.name: h.save() for h in (prep, pretrain, bert)}
    prep, pretrain, bert = (tether.function(name=n) for n in ("prep", "pretrain", "bert"))
    lines: list[str] = []

    dataset = prep("2026-11-30")
    ckpt = pretrain.with_options(on_log=lambda e: lines.append(str(e)), caller="airflow/train/r1")(dataset)
    assert bert(ckpt, "the quick brown fox") == 4
    assert any("pretrain step 3/3" in line for line in lines), lines  # the ordinary log still reaches the caller's sink

    reg = tether.registry.get_registry()
    graph = tether.lineage.upstream("s3://preds/today")
    assert graph.services() == ["alice/bert@1", "alice/pretrain@1", "alice/prep@1"]
    b, p, d = graph.calls
    assert [str(a) for a in b.inputs] == ["s3://ckpt/bert@step-3"]
    assert [str(a) for a in p.inputs] == ["s3://lake/dataset@2026-11-30-clean"]
    assert [str(a) for a in p.outputs] == ["s3://ckpt/bert@step-3"]  # declared twice, stored once
    assert [str(a) for a in d.inputs] == ["s3://lake/raw@2026-11-30"]
    assert p.code_hash == versions["pretrain"].code_hash and p.import_path.endswith("lineage_fns:pretrain")
    assert p.run_id == "airflow/train/r1" and p.caller == "alice"
    assert {c.cluster for c in graph.calls} == {local.name}
    assert all(c.outcome == "ok" and c.duration_s > 0 for c in graph.calls)

    down = tether.lineage.downstream("prep@1")
    assert down.services() == ["alice/prep@1", "alice/pretrain@1", "alice/bert@1"]
    assert [u.calls for u in reg.usage("pretrain")] == [1]


def test_a_failing_declaration_fails_only_that_call_and_outside_a_call_nothing_is_sent(local: Any) -> None:
    bad = tether.function(lineage_fns.bad_lineage).to(local, name="bad")
    bad.save()
    with pytest.raises(ConfigError, match="uri"):
        tether.function(name="bad")()
    assert tether.lineage.output("s3://x", version=3) == ("s3://x", "3")  # no call here: nothing to send
    with collecting() as reports:
        assert lineage_fns.serve_bert("c1", "a b") == 2
    assert [(r.kind, r.payload["direction"], r.payload["uri"]) for r in reports] == [
        ("lineage", "in", "s3://ckpt/bert"), ("lineage", "out", "s3://preds/today")]
    with pytest.raises(ConfigError):
        tether.lineage.input("s3://x", version=1.5)  # type: ignore[arg-type]
