"""Call records never hold up a call: the writer queues, batches in the background, and survives sink failures."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from tether.errors import AuthError, TetherError
from tether.registry import CallRecord
from tether.registry.usage import CallWriter


def rec(i: int) -> CallRecord:
    return CallRecord(name="alice/embed", version=1, call_id=f"c{i}", duration_s=0.1)


def test_put_returns_while_the_sink_is_stuck() -> None:
    release, entered = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def sink(batch: list[CallRecord]) -> int:
        entered.set()
        release.wait()
        batches.append([r.call_id for r in batch])
        return len(batch)

    writer = CallWriter(sink, batch_size=50)
    writer.put(rec(0))
    assert entered.wait(30)
    for i in range(1, 121):  # the sink is blocked: these must still return
        writer.put(rec(i))
    assert writer.flush(timeout=0.2) is False  # the sink still holds the first batch
    release.set()
    assert writer.flush(timeout=60) is True
    written = [c for b in batches for c in b]
    assert written == [f"c{i}" for i in range(121)]
    assert max(len(b) for b in batches) <= 50 and len(batches) >= 3  # batched, in order
    assert writer.written == 121


def test_a_full_queue_drops_instead_of_blocking() -> None:
    release = threading.Event()
    writer = CallWriter(lambda batch: release.wait(), batch_size=1, max_queue=5)
    for i in range(20):
        writer.put(rec(i))
    assert writer.dropped >= 20 - 5 - 1
    release.set()
    writer.close()


def test_transient_failures_are_retried_refusals_are_not() -> None:
    attempts = {"flaky": 0, "refused": 0}

    def flaky(batch: list[CallRecord]) -> None:
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise TetherError("db blip", retryable=True)

    def refused(batch: list[CallRecord]) -> None:
        attempts["refused"] += 1
        raise AuthError("no read access")

    w1, w2 = CallWriter(flaky), CallWriter(refused)
    w1.put(rec(1))
    w2.put(rec(1))
    assert w1.flush(60) and w2.flush(60)
    assert (attempts["flaky"], w1.written, w1.failed) == (3, 1, 0)
    assert (attempts["refused"], w2.written, w2.failed) == (1, 0, 1)


def test_records_queued_at_exit_are_written(tmp_path: object, db_url: str) -> None:
    code = (
        "import sys\n"
        "from tether.registry import open_registry, CallRecord\n"
        "r = open_registry(db=sys.argv[1]); r.save('embed', {'kind': 'function'})\n"
        "for i in range(40): r.record_call(CallRecord(name='embed', version=1, call_id=f'c{i}', duration_s=0.5))\n"
    )  # no flush: the atexit hook must write them
    subprocess.run([sys.executable, "-c", code, db_url], check=True, env=os.environ.copy(), timeout=120)
    from tether.registry import open_registry

    rows = open_registry(db=db_url).usage("embed")
    assert [(r.caller, r.calls, r.total_s) for r in rows] == [("alice", 40, 20.0)]
