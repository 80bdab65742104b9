"""A stream whose call was lost in a daemon crash and re-run from its start (the journal says lost, the client's
retry with the same call id runs it again) never hands its consumer an item twice nor a re-run's items as if they
were the lost run's: the daemon names each run of a call id (``X-Tether-Call-Attempt``), and a client that already
handed out k items of the lost run raises ``WorkerDied`` naming the call and k — unless the handle is
``replayable`` (its items repeat on a re-run), in which case it skips the re-run's first k items and goes on.

Real daemon processes on a fixed port and token (the restarted daemon is where the client's retry goes), a real
generator service, SIGKILL mid-stream.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import tether
from tests.core import rerun_services
from tests.reliability.daemons import DaemonProc, start_daemon


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
