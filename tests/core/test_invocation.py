"""One call path: sync, async, streamed and spawned calls recover the same way from a daemon that lost the
service or died, and an interrupted caller leaves no remote call running. Real daemons and workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.core import services as svc


@pytest.fixture
def cluster(tether_home: Path) -> Iterator[tether.Cluster]:
    c = tether.cluster(name=f"inv-{uuid.uuid4().hex[:6]}").up_if_not()
    yield c
    c.teardown()


def _drop_services(c: tether.Cluster, *names: str) -> None:
    """What a torn-down-and-relaunched daemon looks like: it no longer holds the services."""
    for name in names:
        c.delete(name)
    assert not {r["name"] for r in c.ls()} & set(names)


def _kill_daemon(c: tether.Cluster) -> None:
    """The daemon dies under a live handle (the handle still points at it)."""
    pid = c.handle.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1][0] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.02)


def _run_async(fn: tether.Function, *args: Any) -> Any:
    return asyncio.run(fn.remote_async(*args))


def _stream(fn: tether.Function, *args: Any) -> list[Any]:
    return list(fn(*args))


def _stream_async(fn: tether.Function, *args: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [x async for x in fn.remote_async(*args)]

    return asyncio.run(collect())


def _spawned(fn: tether.Function, *args: Any) -> Any:
    return fn.spawn(*args).result(timeout=60)


PATHS: dict[str, tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...], Any]] = {
    # name: (service, how it is called, args, expected)
    "sync": (svc.add, lambda fn, *a: fn(*a), (2, 3), 5),
    "async": (svc.aadd, lambda fn, *a: asyncio.run(fn(*a)), (2, 3), 5),
    "remote_async": (svc.add, _run_async, (2, 3), 5),
    "stream": (svc.count_up, _stream, (3,), [0, 1, 2]),
    "astream": (svc.acount, _stream_async, (3,), [0, 10, 20]),
    "spawn": (svc.add, _spawned, (2, 3), 5),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_call_path_redeploys_a_service_the_daemon_lost(cluster: tether.Cluster, path: str) -> None:
    target, call, args, expected = PATHS[path]
    fn = tether.function(target).to(cluster, name=f"svc-{path}")
    assert call(fn, *args) == expected
    _drop_services(cluster, f"svc-{path}")
    assert call(fn, *args) == expected
    assert f"svc-{path}" in {r["name"] for r in cluster.ls()}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_call_path_relaunches_a_daemon_that_died(cluster: tether.Cluster, path: str) -> None:
    target, call, args, expected = PATHS[path]
    fn = tether.function(target).to(cluster, name=f"svc-{path}")
    assert call(fn, *args) == expected
    old = cluster.handle.pid
    _kill_daemon(cluster)
    assert call(fn, *args) == expected
    assert cluster.handle.pid != old, "a new daemon answered"


def test_a_not_found_for_another_name_is_not_mistaken_for_a_lost_service(cluster: tether.Cluster) -> None:
    """Recovery reads ``details["missing_service"]``, not the message: an error that merely mentions the
    name (here: the remote function's own NotFound) is raised as it is, with no redeploy."""
    fn = tether.function(svc.raises_value_error).to(cluster, name="raiser")
    deployed = {r["name"]: r for r in cluster.ls()}["raiser"]
    with pytest.raises(ValueError, match="raiser"):
        fn("no service 'raiser' here")
    assert {r["name"]: r for r in cluster.ls()}["raiser"] == deployed


def _running(c: tether.Cluster) -> list[dict[str, Any]]:
    return list(c.daemon_status().get("running_calls", []))


def _wait_no_running(c: tether.Cluster, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while (running := _running(c)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def _wait_for(path: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never said {text!r}")


class _Interrupt:
    """Raise KeyboardInterrupt in this (the main) thread once ``marker`` says the remote call started."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __enter__(self) -> _Interrupt:
        def fire(_sig: int, _frame: Any) -> None:
            if self.marker.exists() and "start" in self.marker.read_text():
                raise KeyboardInterrupt
            signal.setitimer(signal.ITIMER_REAL, 0.05)

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)


def test_ctrl_c_in_a_sync_call_cancels_the_remote_call(cluster: tether.Cluster, tmp_path: Path) -> None:
    fn = tether.function(svc.sleep_then).to(cluster, name="sleeper")
    marker = tmp_path / "marker"
    call_id = f"ctrl-c-{uuid.uuid4().hex[:6]}"
    with _Interrupt(marker), pytest.raises(KeyboardInterrupt):
        fn.call((30, str(marker)), call_id=call_id)
    assert _wait_no_running(cluster) == []
    assert tether.call(call_id, cluster).status()["state"] == "cancelled"
    time.sleep(0.3)
    assert "end" not in marker.read_text()


def test_cancel_on_interrupt_false_leaves_the_call_running(cluster: tether.Cluster, tmp_path: Path) -> None:
    fn = tether.function(svc.sleep_then).to(cluster, name="sleeper").with_options(cancel_on_interrupt=False)
    marker = tmp_path / "marker"
    call_id = f"keep-{uuid.uuid4().hex[:6]}"
    with _Interrupt(marker), pytest.raises(KeyboardInterrupt):
        fn.call((30, str(marker)), call_id=call_id)
    handle = tether.call(call_id, cluster)
    assert handle.status()["state"] == "running"
    handle.cancel()


def test_an_async_caller_timing_out_cancels_the_remote_call(cluster: tether.Cluster, tmp_path: Path) -> None:
    fn = tether.function(svc.sleep_then).to(cluster, name="sleeper")
    marker = tmp_path / "marker"

    async def main() -> None:
        task = asyncio.ensure_future(fn.remote_async(30, str(marker)))
        while not (marker.exists() and "start" in marker.read_text()):
            await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, 0.2)  # an orchestrator's timeout: the task is cancelled

    asyncio.run(main())
    assert _wait_no_running(cluster) == []
    time.sleep(0.3)
    assert "end" not in marker.read_text()


def test_leaving_a_stream_early_cancels_the_remote_generator(cluster: tether.Cluster) -> None:
    fn = tether.function(svc.count_up).to(cluster, name="counter")
    items = fn(1000, 0.05)
    assert [next(items), next(items)] == [0, 1]
    assert len(_running(cluster)) == 1
    items.close()
    assert _wait_no_running(cluster) == []


def test_ctrl_c_while_a_stream_waits_cancels_it(cluster: tether.Cluster, tmp_path: Path) -> None:
    fn = tether.function(svc.count_up).to(cluster, name="counter")
    marker = tmp_path / "marker"
    marker.write_text("start\n")  # the stream is running once its first item arrived
    items = fn(1000, 0.5)
    assert next(items) == 0
    with _Interrupt(marker), pytest.raises(KeyboardInterrupt):
        for _ in items:
            pass
    assert _wait_no_running(cluster) == []


def test_a_spawned_call_outlives_its_spawner(cluster: tether.Cluster, tmp_path: Path) -> None:
    """spawn() is the detached form: nothing the spawner does (here: never waiting) cancels the call."""
    fn = tether.function(svc.sleep_then).to(cluster, name="sleeper")
    marker = tmp_path / "marker"
    handle = fn.spawn(0.5, str(marker))
    assert handle.status()["state"] == "running"
    assert tether.call(handle.call_id, cluster).result(timeout=30) == 0.5
    assert "end" in marker.read_text()


def test_handles_are_immutable(cluster: tether.Cluster, tether_home: Path) -> None:
    base = tether.function(svc.add)
    deployed = base.to(cluster, name="adder")
    assert base.cluster is None and deployed.cluster is cluster
    quiet = deployed.with_options(caller="run-1", on_log=None)
    assert (deployed.caller, quiet.caller) == (None, "run-1")
    assert deployed.options.on_log is not None and quiet.options.on_log is None
    other = tether.cluster(name=f"other-{uuid.uuid4().hex[:6]}")
    try:
        moved = deployed.with_cluster(other)
        assert moved.cluster is other and deployed.cluster is cluster
        assert moved(1, 2) == deployed(1, 2) == 3
    finally:
        other.teardown()


def test_a_handle_outlives_a_daemon_another_process_restarted(cluster: tether.Cluster) -> None:
    """Another process (here: another Cluster object of the same name) brings the daemon back up with a new
    token; calls through the handle made before adopt the new daemon instead of failing with AuthError."""
    fn = tether.function(svc.add).to(cluster, name="adder")
    assert fn(1, 2) == 3
    old_token = cluster.token
    _kill_daemon(cluster)
    other = tether.cluster(name=cluster.name).up_if_not()
    assert other.token != old_token
    assert fn(2, 3) == 5
    assert cluster.token == other.token
    assert asyncio.run(fn.remote_async(3, 4)) == 7


def test_a_cancel_that_reaches_the_worker_with_its_call_ends_the_call(cluster: tether.Cluster,
                                                                      tmp_path: Path) -> None:
    """A busy (here: stopped) worker reads the call and its cancel together. The call's task is cancelled before
    it ran a step, so the call's own handler never ran: the call still ends, cancelled, instead of hanging."""
    fn = tether.function(svc.log_wait_count).to(cluster, env=tether.env(name="cancel-race"), name="race")
    pid = next(w["pid"] for w in cluster.daemon_status()["workers"] if w["env"] == "cancel-race")
    os.kill(pid, signal.SIGSTOP)
    try:
        handle = fn.spawn(str(tmp_path))
        handle.cancel()
    finally:
        os.kill(pid, signal.SIGCONT)
    with pytest.raises(tether.CallCancelled):
        handle.result(timeout=20)  # hung forever before: no answer ever came for the call
    assert not (tmp_path / "runs").exists()  # it never ran
    again = tmp_path / "again"
    again.mkdir()
    (again / "release").touch()
    assert fn(str(again)) == 1  # the env serves on
