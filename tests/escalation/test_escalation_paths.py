"""OOM escalation on every call path: async, streamed and spawned calls climb the ladder exactly as a sync call
does (real daemons with real memory limits)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import tether
from tests.escalation import oom_jobs
from tether.escalation import Attempt, Escalation

LADDER = ["local:256MB", "local:1GB", "local:4GB"]


def _escalating(target: object, name: str) -> tuple[tether.Function, list[Attempt]]:
    base = tether.cluster(name=f"esc-{uuid.uuid4().hex[:6]}", instance_type="local:256MB").up_if_not()
    seen: list[Attempt] = []
    fn = tether.function(target, name=name).to(base, on_oom=Escalation(ladder=LADDER)).with_options(
        on_attempt=seen.append)
    return fn, seen


def _rungs(seen: list[Attempt]) -> list[tuple[str | None, str]]:
    return [(a.instance_type, a.outcome) for a in seen]


def test_an_async_call_escalates(esc_home: Path) -> None:
    fn, seen = _escalating(oom_jobs.allocate, "alloc")
    out = asyncio.run(fn.remote_async(600))
    assert out["mib"] == 600
    assert _rungs(seen) == [("local:256MB", "oom"), ("local:1GB", "ok")]


def test_an_async_function_escalates(esc_home: Path) -> None:
    fn, seen = _escalating(oom_jobs.aallocate, "aalloc")
    assert asyncio.run(fn(600))["mib"] == 600
    assert _rungs(seen) == [("local:256MB", "oom"), ("local:1GB", "ok")]


def test_a_stream_that_runs_out_of_memory_before_its_first_item_escalates(esc_home: Path) -> None:
    fn, seen = _escalating(oom_jobs.allocate_then_count, "gen")
    assert list(fn(600)) == [(0, 600), (1, 600), (2, 600)]
    assert _rungs(seen) == [("local:256MB", "oom"), ("local:1GB", "ok")]
    seen.clear()
    assert list(fn(600, 1)) == [(0, 600)], "the next stream starts on the rung that worked"
    assert _rungs(seen) == [("local:1GB", "ok")]


def test_a_spawned_call_escalates_and_its_handle_lists_the_attempts(esc_home: Path) -> None:
    fn, seen = _escalating(oom_jobs.allocate, "alloc")
    handle = fn.spawn(600)
    assert handle.result(timeout=120)["mib"] == 600
    assert _rungs(handle.attempts) == _rungs(seen) == [("local:256MB", "oom"), ("local:1GB", "ok")]
