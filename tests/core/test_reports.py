"""Reports from remote code to its caller (tether.report, tether.api.report.emit) through a real daemon and
worker: they arrive with the call, again on a re-attach, in a trigger's poll, never as log lines."""

from __future__ import annotations

import asyncio
import logging

import pytest

import tether
import tether.runs
from tests.core import report_fns
from tether.api.report import Report, collecting, emit


def test_reports_reach_the_caller_and_are_not_log_lines(local_cluster):
    lines: list[str] = []
    seen: list[Report] = []
    r = tether.runs.run_remote(report_fns.train, (12,), call_id="rep-1", cluster=local_cluster, log=lines.append,
                               on_report=seen.append)

    assert r.value == 24
    assert [x.kind for x in r.reports] == ["metadata", "asset_check", "lineage.output"] and seen == r.reports
    assert r.reported_metadata == {"rows": 12, "model": {"raw_value": "s3://models/1", "type": "path"}}
    assert r.reported_checks == [{"name": "enough_rows", "passed": True, "severity": "ERROR",
                                  "metadata": {"rows": 12}}]
    assert r.reports[2].payload == {"uri": "s3://models/1"}
    assert "train: 12 rows" in lines and "report_fns: train: done" in lines
    assert not any("tether.report" in line or "enough_rows" in line for line in lines)
    assert r.metadata()["reports"][0] == {"kind": "metadata", "payload": {"metadata": r.reported_metadata}}


def test_a_reattach_gets_the_reports_again(local_cluster):
    first = tether.runs.run_remote(report_fns.train, (3,), call_id="rep-2", cluster=local_cluster)
    again = tether.runs.run_remote(report_fns.train, (3,), call_id="rep-2", cluster=local_cluster)
    assert again.reattached and again.reports == first.reports
    assert again.reported_checks[0]["passed"] is False


def test_a_plain_call_shows_a_report_as_a_debug_record_only(local_cluster, caplog, capsys):
    remote = tether.function(report_fns.train).to(local_cluster)
    with caplog.at_level(logging.DEBUG, logger="tether.report"):
        assert remote(1) == 2
    records = [r for r in caplog.records if r.name == "tether.report"]
    assert [r.levelno for r in records] == [logging.DEBUG] * 3
    assert records[0].getMessage().startswith("metadata {")
    assert "enough_rows" not in capsys.readouterr().out


def test_a_trigger_poll_sees_report_events(local_cluster):
    tether.function(report_fns.train).to(local_cluster).spawn_with((5,), {}, call_id="rep-3", on_log=None).result(30)

    async def poll():
        watch = await tether.runs.CallWatch.open("rep-3", local_cluster)
        return await watch.poll()

    _, events = asyncio.run(poll())
    kinds = [e["report"]["kind"] for e in events if "report" in e]
    assert kinds == ["metadata", "asset_check", "lineage.output"]


def test_a_report_that_is_not_json_fails_the_call_with_a_typed_error(local_cluster):
    with pytest.raises(tether.SerializationError, match="not JSON data"):
        tether.runs.run_remote(report_fns.bad_report, (), call_id="rep-4", cluster=local_cluster)


def test_outside_a_call_reports_go_to_a_collecting_block_or_nowhere():
    assert emit("x", {"a": 1}) is False
    with collecting() as got:
        assert report_fns.train(10) == 20
    assert [r.kind for r in got] == ["metadata", "asset_check", "lineage.output"]
    with pytest.raises(tether.ConfigError, match="passed"):
        tether.report(asset_check={"name": "c"})
    with pytest.raises(tether.ConfigError, match="severity"):
        tether.report(asset_check={"name": "c", "passed": True, "severity": "FATAL"})
