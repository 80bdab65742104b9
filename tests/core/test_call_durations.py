"""A saved service's usage record holds the remote call's duration (its daemon's start to finish), not how long
the caller waited: a caller slowed down by its own log sink, and a re-attach to a call that already finished,
both record what the daemon measured. Real local daemon and worker, real registry (SQLite in TETHER_HOME)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.core import services as svc
from tether.registry import get_registry


@pytest.fixture
def cluster(tether_home: Path) -> Iterator[tether.Cluster]:
    c = tether.cluster(name=f"dur-{uuid.uuid4().hex[:6]}").up_if_not()
    yield c
    c.teardown()


def _record(name: str, call_id: str) -> Any:
    (record,) = [r for r in get_registry().calls(name, limit=1000) if r.call_id == call_id]
    return record


def _remote_seconds(c: tether.Cluster, call_id: str) -> float:
    summary = tether.call(call_id, c).status()
    return float(summary["finished"]) - float(summary["started"])


def test_a_caller_delayed_by_its_log_sink_records_the_remote_duration(cluster: tether.Cluster) -> None:
    def slow_sink(event: dict[str, Any]) -> None:
        time.sleep(1.0)  # the caller is busy: it reads the call's end a second after the call ended

    talk = tether.function(svc.shout).to(cluster, name="talker")
    talk.save()
    call_id = f"slow-sink-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    assert talk.with_options(on_log=slow_sink).call(("hi",), {"n": 1}, call_id=call_id) == 1
    waited = time.perf_counter() - started
    remote = _remote_seconds(cluster, call_id)
    record = _record("talker", call_id)
    assert record.duration_s == pytest.approx(remote, abs=1e-6), (record.duration_s, remote, waited)
    assert record.duration_s < waited


def test_a_reattach_to_a_finished_call_records_the_remote_duration(cluster: tether.Cluster) -> None:
    nap = tether.function(svc.sleep_then).to(cluster, name="napper")
    nap.save()
    handle = nap.spawn(0.5)  # started elsewhere (an orchestrator's first try)
    assert handle.result(60) == 0.5
    started = time.perf_counter()
    assert nap.call((0.5,), call_id=handle.call_id) == 0.5  # re-attaches to the finished call
    waited = time.perf_counter() - started
    remote = _remote_seconds(cluster, handle.call_id)
    record = _record("napper", handle.call_id)
    assert record.duration_s == pytest.approx(remote, abs=1e-6), (record.duration_s, remote, waited)
    assert remote > waited  # the re-attach waited less than the call ran


def test_a_spawned_call_is_recorded_once_its_handle_has_the_outcome(cluster: tether.Cluster) -> None:
    """Every call of a saved version is recorded, spawned ones too: when the handle gets the result (or the remote
    error), with the remote duration; fetching it again, or re-attaching by id, records nothing twice."""
    nap = tether.function(svc.sleep_then).to(cluster, name="spawned-nap")
    nap.save()
    handle = nap.spawn(0.3)
    assert handle.result(60) == 0.3
    record = _record("spawned-nap", handle.call_id)
    assert record.outcome == "ok" and record.version == nap.spec.version
    assert record.duration_s == pytest.approx(_remote_seconds(cluster, handle.call_id), abs=1e-6)
    assert nap.call((0.3,), call_id=handle.call_id) == 0.3 and handle.result(60) == 0.3
    _record("spawned-nap", handle.call_id)  # still exactly one

    boom = tether.function(svc.raises_value_error).to(cluster, name="spawned-boom")
    boom.save()
    failing = boom.spawn("no")
    with pytest.raises(ValueError):
        failing.result(60)
    assert _record("spawned-boom", failing.call_id).outcome == "error"
