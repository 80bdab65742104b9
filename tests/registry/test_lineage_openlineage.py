"""OpenLineage run events for recorded calls, through the openlineage-python client's file transport, with the
records stored in the real registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tether.registry import CallRecord, open_registry
from tether.registry.models import Artifact
from tether.registry.openlineage import transport_config

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_each_call_is_a_start_and_an_end_event_with_its_datasets(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("TETHER_OPENLINEAGE", f"file:{out}")
    monkeypatch.setenv("TETHER_OPENLINEAGE_NAMESPACE", "team-ml")
    reg = open_registry(db=db_url)
    try:
        reg.save("pretrain", {"kind": "function"})
        reg.record_call(CallRecord(
            name="pretrain", version=1, call_id="c-1", duration_s=90.0, started_at=T0, cluster="a100",
            run_id="airflow/train/2026-11-30", inputs=[Artifact(uri="s3://lake/dataset/day", version="7")],
            outputs=[Artifact(uri="s3://ckpt/bert", version="y"), Artifact(uri="warehouse.table")],
        ))
        reg.record_call(CallRecord(name="pretrain", version=1, call_id="c-2", duration_s=1.5, outcome="OutOfMemory",
                                   started_at=T0 + timedelta(hours=1)))
        assert reg.flush()
        assert [c.call_id for c in reg.lineage("s3://ckpt/bert", "y").calls] == ["c-1"]  # stored as well
    finally:
        reg.close()

    got = events(out)
    assert [(e["eventType"], e["run"]["facets"]["tether"]["callId"]) for e in got] == [
        ("START", "c-1"), ("COMPLETE", "c-1"), ("START", "c-2"), ("FAIL", "c-2")]
    start, end, _, failed = got
    assert start["run"]["runId"] == end["run"]["runId"] != failed["run"]["runId"]
    assert start["job"] == {"namespace": "team-ml", "name": "alice/pretrain", "facets": start["job"]["facets"]}
    assert datetime.fromisoformat(end["eventTime"]) - datetime.fromisoformat(start["eventTime"]) == timedelta(seconds=90)
    assert [(d["namespace"], d["name"], d["facets"]["version"]["datasetVersion"]) for d in start["inputs"]] == [
        ("s3://lake", "/dataset/day", "7")]
    assert [(d["namespace"], d["name"]) for d in end["outputs"]] == [("s3://ckpt", "/bert"), ("tether", "warehouse.table")]
    tether_facet = end["run"]["facets"]["tether"]
    assert (tether_facet["serviceVersion"], tether_facet["cluster"], tether_facet["orchestratorRunId"]) == (
        1, "a100", "airflow/train/2026-11-30")
    assert end["run"]["facets"]["processing_engine"]["name"] == "tether"
    assert failed["run"]["facets"]["errorMessage"]["message"] == "OutOfMemory"
    assert all(e["producer"].startswith("https://") and e["schemaURL"].startswith("https://openlineage.io/") for e in got)


def test_a_bad_setting_loses_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_OPENLINEAGE", "carrier-pigeon")
    reg = open_registry(db=tmp_path / "r.db")
    try:
        reg.save("embed", {"kind": "function"})
        reg.record_call(CallRecord(name="embed", version=1, call_id="x", outputs=[Artifact(uri="s3://x")]))
        assert reg.flush() and [u.calls for u in reg.usage("embed")] == [1]
    finally:
        reg.close()


def test_transport_settings() -> None:
    assert transport_config("console") == {"transport": {"type": "console"}}
    assert transport_config("file:///tmp/x.jsonl")["transport"]["log_file_path"] == "/tmp/x.jsonl"
    assert transport_config("http://marquez:5000") == {"transport": {"type": "http", "url": "http://marquez:5000"}}
    assert transport_config("env") is None
    assert transport_config('{"transport": {"type": "noop"}}') == {"transport": {"type": "noop"}}
