"""A stream whose call was lost in a daemon crash and re-run from its start (the journal says lost, the client's
retry with the same call id runs it again) never hands its consumer an item twice nor a re-run's items as if they
were the lost run's: the daemon names each run of a call id (``X-Tether-Call-Attempt``), and a client that already
handed out k items of the lost run raises ``WorkerDied`` naming the call and k — unless the handle is
``replayable`` (its items repeat on a re-run), in which case it skips the re-run's first k items and goes on.

Real daemon processes on a fixed port and token (the restarted daemon is where the client's retry goes), a real
generator service, SIGKILL mid-stream.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from pathlib import Path

import tether
from tests.core import rerun_services
from tests.reliability.daemons import DaemonProc, start_daemon
from tether.client import AsyncClient
from tether.client.loop import run_sync
from tether.client.outcome import Outcome
from tether.client.payloads import dumps_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _crash_mid_stream(tmp_path: Path, replayable: bool) -> tuple[list[int], BaseException | None, list[str]]:
    """Take 3 items, SIGKILL the daemon while the generator holds, bring it back on the same port, read on."""
    state, port = tmp_path / "state", _free_port()
    d: DaemonProc = start_daemon(state, "--port", str(port))
    got: list[int] = []
    error: BaseException | None = None
    try:
        c = tether.cluster(name=f"rerun-{port}", endpoint=d.endpoint, token=d.token).up_if_not()
        fn = tether.function(rerun_services.ticks).to(c).with_options(replayable=replayable)
        items = iter(fn(str(tmp_path), 6, 3))
        got += [next(items) for _ in range(3)]
        _wait_for(tmp_path / "held")  # the lost run holds before item 3: nothing more is on its way
        d.kill(signal.SIGKILL)
        d = start_daemon(state, "--port", str(port))  # same address and token: the client's retry lands here
        (tmp_path / "go").touch()  # the re-run does not hold
        try:
            got += list(items)
        except tether.WorkerDied as exc:
            error = exc
    finally:
        d.kill()
    return got, error, (tmp_path / "runs").read_text().split()


def test_a_rerun_stream_raises_naming_the_call_and_the_items_already_seen(tether_home, tmp_path):
    got, error, runs = _crash_mid_stream(tmp_path, replayable=False)
    assert got == [0, 1, 2], got  # nothing of the re-run passed for the lost run's items 3, 4, 5
    assert error is not None and not error.retryable
    assert error.details["reason"] == "rerun_after_items" and error.details["items_seen"] == 3
    assert error.details["attempt"] == 2 and error.details["call_id"] in str(error)
    assert error.hint and "replayable" in error.hint
    assert runs == ["run", "run"]  # the lost run, then its re-run (once)


def test_a_replayable_stream_skips_the_items_it_already_gave(tether_home, tmp_path):
    got, error, runs = _crash_mid_stream(tmp_path, replayable=True)
    assert error is None, error
    assert got == [0, 1, 2, 3, 4, 5]  # each item once: the re-run's first three were skipped
    assert runs == ["run", "run"]


def test_a_call_resumed_after_its_link_dropped_takes_the_reruns_result(tmp_path):
    """The blocking call path: its first attempt read three log frames of run 1 (``Outcome.attempt`` = its
    response's ``X-Tether-Call-Attempt``) when the daemon died; the resumed attempt meets run 2, which prints
    nothing — it must not skip the re-run's first three frames (its result among them)."""
    state, port = tmp_path / "state", _free_port()
    d = start_daemon(state, "--port", str(port))
    try:
        d.deploy("talk", "talk_then_hold", module="tests.core.rerun_services")
        client = AsyncClient(d.endpoint, d.token)
        body = dumps_args((str(tmp_path),), {})
        out = Outcome(None)

        async def first_attempt() -> None:
            async with contextlib.aclosing(client.frames("talk", None, body, call_id="talk-1")) as frames:
                async for kind, payload in frames:
                    out.feed(kind, payload)
                    if out.seen == 3:
                        return

        run_sync(first_attempt())
        out.attempt = "1"  # what call_sync read from its response
        _wait_for(tmp_path / "held")
        d.kill(signal.SIGKILL)
        d = start_daemon(state, "--port", str(port))
        (tmp_path / "go").touch()
        assert run_sync(client.call("talk", None, (str(tmp_path),), {}, call_id="talk-1", resume=out)) == "done"
        assert (tmp_path / "runs").read_text().split() == ["run", "run"]
    finally:
        d.kill()
