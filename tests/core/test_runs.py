"""What providers share (tether.runs): ids and the retry scheme, clusters from settings, labels, the log format,
cancelling (quietly), watching a call from async code; endpoint clusters."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest

import tether
import tether.runs
from tests.core import services as svc
from tether.protocol import CallState


def test_call_id_for_is_deterministic_and_distinct():
    a = tether.runs.call_id_for("dag", "task", "run1", 0)
    assert a == tether.runs.call_id_for("dag", "task", "run1", 0)
    assert a != tether.runs.call_id_for("dag", "task", "run1", 1)
    assert a != tether.runs.call_id_for("dag", "task", "run2", 0)


def test_run_remote_reattaches_and_retries_failed_calls(local_cluster, tmp_path):
    marker = tmp_path / "runs"
    lines: list[str] = []
    r1 = tether.runs.run_remote(svc.sleep_then, (0.05, str(marker)), call_id="job-1", cluster=local_cluster,
                                log=lines.append)
    r2 = tether.runs.run_remote(svc.sleep_then, (0.05, str(marker)), call_id="job-1", cluster=local_cluster)
    assert r1.value == r2.value == 0.05 and r1.call_id == r2.call_id == "job-1"
    assert marker.read_text().count("start") == 1  # ran once
    assert r1.metadata()["service"] == "sleep_then"
    with pytest.raises(ValueError):
        tether.runs.run_remote(svc.raises_value_error, ("boom",), call_id="job-2", cluster=local_cluster)
    with pytest.raises(ValueError):  # a retry of a failed call runs again under a successor id
        tether.runs.run_remote(svc.raises_value_error, ("boom",), call_id="job-2", cluster=local_cluster)
    ok = tether.runs.run_remote(svc.add, (1, 2), call_id="job-2", cluster=local_cluster)
    assert ok.call_id == "job-2-r2" and ok.value == 3


def test_run_remote_by_import_path_and_logs(local_cluster):
    lines: list[str] = []
    r = tether.runs.run_remote("tests.core.services:shout", ("hi", 2), call_id="job-3", cluster=local_cluster,
                               log=lines.append)
    assert r.value == 2
    assert "hi 0" in lines and "hi 1" in lines
    with pytest.raises(tether.ConfigError):
        tether.runs.run_remote("tests.core.services:nope", (), call_id="job-4", cluster=local_cluster)


def test_cancel_by_call_id(local_cluster, tmp_path):
    marker = tmp_path / "cancel"
    errors: list[BaseException] = []

    def run():
        try:
            tether.runs.run_remote(svc.sleep_then, (30, str(marker)), call_id="job-5", cluster=local_cluster)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 20
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert tether.runs.cancel("job-5", local_cluster) == ["job-5"]
    t.join(20)
    assert errors and isinstance(errors[0], tether.CallCancelled)


def test_endpoint_cluster_attaches_to_a_running_daemon(local_cluster):
    c = tether.cluster(name="attached", endpoint=local_cluster.endpoint, token=local_cluster.token).up_if_not()
    assert c.spec.backend == "endpoint"
    assert tether.function(svc.add).to(c, name="add_via_endpoint")(2, 2) == 4
    assert "token" not in c.config() and local_cluster.token not in str(c.config())
    with pytest.raises(tether.ConfigError):
        c.teardown()
    bad = tether.cluster(name="attached-bad", endpoint=local_cluster.endpoint, token="wrong").up_if_not()
    with pytest.raises(tether.AuthError):
        bad.keys()
    with pytest.raises(tether.ClusterUnavailable):
        tether.cluster(name="nobody", endpoint="http://127.0.0.1:9").up_if_not()


# -- the retry scheme ------------------------------------------------------------------------------------------------
BASE = "run-base"
R, S, F, C = CallState.RUNNING, CallState.SUCCEEDED, CallState.FAILED, CallState.CANCELLED


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({}, BASE),  # nothing reached the daemon yet: the first try
        ({BASE: R}, BASE),  # the killed try's call still runs: wait for it
        ({BASE: S}, BASE),  # it finished after the worker died: take its result
        ({BASE: F}, f"{BASE}-r1"),  # replaying a failure helps nobody: run again
        ({BASE: C}, f"{BASE}-r1"),
        ({BASE: F, f"{BASE}-r1": R}, f"{BASE}-r1"),  # the rerun still runs: re-attach to it
        ({BASE: F, f"{BASE}-r1": S}, f"{BASE}-r1"),
        ({BASE: F, f"{BASE}-r1": C}, f"{BASE}-r2"),  # the latest call decides
    ],
)
def test_choose_call_id_reattaches_to_a_live_or_successful_call_and_reruns_after_a_failure(states, expected):
    assert tether.runs.choose_call_id(BASE, states.get) == expected


def test_choose_call_id_stops_after_limit_successors():
    assert tether.runs.choose_call_id(BASE, lambda _id: CallState.FAILED, limit=3) == f"{BASE}-r3"


def test_attempt_call_id_asks_the_daemon(local_cluster, tmp_path):
    assert tether.runs.call_state("never-ran", local_cluster) is None
    assert tether.runs.attempt_call_id("never-ran", local_cluster) == "never-ran"
    add = tether.runs.resolve_target(svc.add, local_cluster)
    add.call((1, 2), call_id="attempt-ok")
    assert tether.runs.call_state("attempt-ok", local_cluster) is CallState.SUCCEEDED
    assert tether.runs.attempt_call_id("attempt-ok", local_cluster) == "attempt-ok"  # re-attach: no rerun
    boom = tether.runs.resolve_target(svc.raises_value_error, local_cluster)
    with pytest.raises(ValueError):
        boom.call(("boom",), call_id="attempt-bad")
    assert tether.runs.attempt_call_id("attempt-bad", local_cluster) == "attempt-bad-r1"
    (tmp_path / "release").touch()
    waiting = tether.runs.resolve_target(svc.log_wait_count, local_cluster)
    handle = waiting.spawn_with((str(tmp_path),), {}, call_id="attempt-bad-r1", on_log=None).wait_started()
    assert tether.runs.attempt_call_id("attempt-bad", local_cluster) == "attempt-bad-r1"  # running or done
    handle.result(timeout=30)
    # a name, a dict or None reach the same daemon: the scheme takes any cluster reference
    assert tether.runs.attempt_call_id("attempt-bad", local_cluster.name) == "attempt-bad-r1"


def test_call_counter_counts_per_key_and_forgets_the_oldest():
    counter = tether.runs.CallCounter(max_keys=2)
    assert [counter.next("a"), counter.next("a"), counter.next("b"), counter.next("a")] == [0, 1, 0, 2]
    counter.next("c")  # "b" is now the least recently used: forgotten
    assert counter.next("b") == 0 and counter.next("a") == 0  # "a" went when "b" came back
    many = tether.runs.CallCounter()
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.extend(many.next("k") for _ in range(200))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(800))


# -- clusters from settings ------------------------------------------------------------------------------------------
def test_cluster_config_normalises_names_json_dicts_and_clusters():
    assert tether.runs.cluster_config(None) is None and tether.runs.cluster_config("") is None
    assert tether.runs.cluster_config(" lab ") == {"name": "lab"}
    assert tether.runs.cluster_config('{"name": "a10", "instance_type": "A10G:1"}') == {
        "name": "a10", "instance_type": "A10G:1"}
    assert tether.runs.cluster_config({"kind": "cluster", "name": "x"}) == {"name": "x"}
    config = tether.runs.cluster_config(tether.cluster(name="c1", instance_type="local:256MB"))
    assert config is not None and config["name"] == "c1" and config["instance_type"] == "local:256MB"
    assert "kind" not in config
    json.dumps(config)  # plain data an orchestrator can store
    for bad in ('{"name": "x"', 42, ["x"]):
        with pytest.raises(tether.ConfigError):
            tether.runs.cluster_config(bad)


def test_cluster_from_config_builds_what_the_settings_describe(local_cluster):
    assert tether.runs.cluster_from_config(None) is None
    assert tether.runs.cluster_from_config(None, name=None, endpoint=None, token="t") is None
    assert tether.runs.cluster_from_config(local_cluster) is local_cluster
    tether.cluster(name="saved-small", instance_type="local:256MB").save()
    saved = tether.runs.cluster_from_config("saved-small")  # a bare name is the saved cluster
    assert saved is not None and saved.spec.instance_type == "local:256MB"
    spec = tether.runs.cluster_from_config({"instance_type": "local:256MB"}, name="renamed")
    assert spec is not None and spec.name == "renamed" and spec.spec.backend == "local"
    with pytest.raises(tether.ConfigError):
        tether.runs.cluster_from_config({"instance_tpye": "A10G:1"})


def test_cluster_from_config_attaches_to_an_endpoint_with_the_given_token(local_cluster):
    # the spec's other fields do not apply to a daemon someone else runs; the name defaults
    lab = tether.runs.cluster_from_config({"instance_type": "A10G:1"}, endpoint=local_cluster.endpoint,
                                          token=local_cluster.token, default_name="lab-endpoint")
    assert lab is not None and lab.name == "lab-endpoint" and lab.spec.backend == "endpoint"
    assert tether.function(svc.add).to(lab.up_if_not(), name="add_via_settings")(2, 3) == 5
    # an endpoint inside the config (as an orchestrator stored it) takes the token given alongside
    stored = tether.runs.cluster_config(lab)
    assert stored is not None and "token" not in stored
    again = tether.runs.cluster_from_config(stored, token=local_cluster.token)
    assert again is not None and again.name == "lab-endpoint"
    assert "add_via_settings" in again.up_if_not().keys()
    wrong = tether.runs.cluster_from_config({**stored, "name": "lab-wrong"}, token="wrong")
    assert wrong is not None
    with pytest.raises(tether.AuthError):
        wrong.up_if_not().keys()


# -- labels and logs -------------------------------------------------------------------------------------------------
def test_target_label_names_what_is_called(local_cluster):
    assert tether.runs.target_label("team/embed@prod") == "team/embed@prod"
    assert tether.runs.target_label("tests.core.services:add") == "tests.core.services:add"
    assert tether.runs.target_label(svc.add) == "add"
    assert tether.runs.target_label(tether.function(svc.add).to(local_cluster, name="add_label")) == "add_label"

    class Nameless:
        name = ""

        def __call__(self) -> None: ...

    assert tether.runs.target_label(Nameless()) == "Nameless"


def test_log_event_line_is_the_one_format():
    assert tether.runs.log_event_line({"text": "printed\n"}) == "printed"
    assert tether.runs.log_event_line({"text": "two\nlines\n"}) == "two\nlines"
    assert tether.runs.log_event_line({"name": "app", "msg": "hello", "level": "INFO"}) == "app: hello"
    assert tether.runs.log_event_line({"msg": "anonymous"}) == "remote: anonymous"
    lines: list[str] = []
    sink = tether.runs.log_sink(lines.append)
    for event in ({"text": "a\nb\n"}, {"name": "app", "msg": "m"}, {"text": "\n"}):
        sink(event)
    assert lines == ["a", "b", "app: m"]
    labelled: list[str] = []
    emit = tether.runs.labelled_log(labelled.append, "embed")
    for line in ("one", "", "two\n"):
        emit(line)
    assert labelled == ["[embed] one", "[embed] two"]


# -- stopping --------------------------------------------------------------------------------------------------------
class Recorder:
    """A provider's log: collects what cancel_quietly reports, by level."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def warning(self, msg: str) -> None:
        self.records.append(("warning", msg))

    def error(self, msg: str) -> None:
        self.records.append(("error", msg))


def test_cancel_quietly_cancels_and_reports(local_cluster, tmp_path: Path):
    waiting = tether.runs.resolve_target(svc.log_wait_count, local_cluster)
    handle = waiting.spawn_with((str(tmp_path),), {}, call_id="quiet-1", on_log=None).wait_started()
    log = Recorder()
    assert tether.runs.cancel_quietly("quiet-1", local_cluster, log=log) == ["quiet-1"]
    with pytest.raises(tether.CallCancelled):
        handle.result(timeout=30)
    assert log.records == [("warning", "tether: cancelled remote call quiet-1")]
    assert tether.runs.call_state("quiet-1", local_cluster) is CallState.CANCELLED


def test_cancel_quietly_never_raises():
    log = Recorder()
    gone = tether.cluster(name="gone", endpoint="http://127.0.0.1:9")
    assert tether.runs.cancel_quietly("quiet-2", gone, log=log) == []
    ((level, msg),) = log.records
    assert level == "error" and msg.startswith("tether: could not cancel remote call quiet-2: ")
    assert tether.runs.cancel_quietly("quiet-2", gone) == []  # no log: still quiet


# -- watching from async code ----------------------------------------------------------------------------------------
async def test_call_watch_polls_state_and_new_log_events_only(local_cluster, tmp_path: Path):
    waiting = tether.runs.resolve_target(svc.log_wait_count, local_cluster)
    waiting.spawn_with((str(tmp_path),), {}, call_id="watch-1", on_log=None).wait_started()
    watch = await tether.runs.CallWatch.open("watch-1", local_cluster)
    shown: list[str] = []
    show = tether.runs.log_sink(shown.append)
    deadline = time.monotonic() + 30
    while "before the wait" not in shown:
        state, events = await watch.poll()
        assert state is CallState.RUNNING and time.monotonic() < deadline
        for event in events:
            show(event)
    seen = watch.logs_seen
    assert seen >= 1
    (tmp_path / "release").touch()
    while True:
        state, events = await watch.poll()
        for event in events:
            show(event)
        if state.finished:
            break
        assert time.monotonic() < deadline
    assert state is CallState.SUCCEEDED
    assert shown.count("before the wait") == 1 and shown.count("after the wait") == 1
    # a watch rebuilt from a stored logs_seen (a restarted triggerer) shows only what came after
    rebuilt = await tether.runs.CallWatch.open("watch-1", local_cluster.name, logs_seen=seen)
    state, events = await rebuilt.poll()
    assert state is CallState.SUCCEEDED
    assert [tether.runs.log_event_line(e) for e in events] == ["after the wait"]
    assert rebuilt.logs_seen == watch.logs_seen
    assert await rebuilt.poll() == (CallState.SUCCEEDED, [])


async def test_call_watch_cancels_and_reports_unknown_calls(local_cluster, tmp_path: Path):
    waiting = tether.runs.resolve_target(svc.log_wait_count, local_cluster)
    handle = waiting.spawn_with((str(tmp_path),), {}, call_id="watch-2", on_log=None).wait_started()
    watch = await tether.runs.CallWatch.open("watch-2", local_cluster)
    assert await watch.cancel() is True
    with pytest.raises(tether.CallCancelled):
        await asyncio.to_thread(handle.result, 30)
    assert (await watch.poll())[0] is CallState.CANCELLED
    nobody = await tether.runs.CallWatch.open("watch-nobody", local_cluster)
    assert await nobody.cancel() is False
    with pytest.raises(tether.NotFound):
        await nobody.poll()


# -- call identity ---------------------------------------------------------------------------------------------------
def test_args_digest_is_equal_for_equal_arguments_in_any_process():
    import subprocess
    import sys

    digest = tether.runs.args_digest
    assert digest((1, "a"), {"x": [1, 2]}) == digest([1, "a"], {"x": [1, 2]})  # the tuple of args, as given
    assert digest((), {"a": 1, "b": 2}) == digest((), {"b": 2, "a": 1})  # keyword order does not matter
    assert digest(({"k1": 1, "k2": 2},)) == digest(({"k2": 2, "k1": 1},))
    others = {digest((1,)), digest((2,)), digest((1.0,)), digest(("1",)), digest(((1,),)), digest(([1],)),
              digest((), {"a": 1}), digest((True,))}
    assert len(others) == 8  # different values (and types) are different calls
    big = bytes(range(256)) * 8192  # 2 MiB: hashed as a buffer, not copied into a pickle
    assert digest((big,)) == digest((bytes(big),)) != digest((big[:-1] + b"x",))
    code = ("import tether.runs; print(tether.runs.args_digest(({'alpha', 'beta', 'gamma', 'delta'},), "
            "{'m': {'x': frozenset({'p', 'q', 'r'})}}))")
    seen = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout for seed in ("1", "2", "3")}
    assert len(seen) == 1  # string hashing differs per process; set order must not leak into the digest


def test_call_identity_changes_with_the_arguments_and_the_version(local_cluster):
    add = tether.function(svc.add).to(local_cluster, name="add_identity")
    same = tether.runs.call_identity(add, (1, 2))
    assert same == tether.runs.call_identity(add, [1, 2], {}) != tether.runs.call_identity(add, (2, 1))
    v1 = add.save()
    loaded = tether.function(name="add_identity")
    assert tether.runs.service_version(loaded).endswith(f"add_identity@{v1.version}")  # owner/name@version
    tether.function(svc.echo).to(local_cluster, name="add_identity").save()
    newer = tether.function(name="add_identity")
    assert tether.runs.call_identity(newer, (1, 2)) != tether.runs.call_identity(loaded, (1, 2))


def test_choose_attempt_says_whether_it_reattaches(local_cluster, tmp_path):
    fresh = tether.runs.choose_attempt("choice-new", local_cluster)
    assert fresh == tether.runs.CallChoice("choice-new", None) and not fresh.reattached
    assert tether.runs.describe_call("add", fresh) == "tether: calling add (call id choice-new)"
    tether.function(svc.add).to(local_cluster, name="add_choice").call((1, 1), call_id="choice-done")
    done = tether.runs.choose_attempt("choice-done", local_cluster)
    assert done.reattached and done.state is CallState.SUCCEEDED
    assert tether.runs.describe_call("add", done) == (
        "tether: re-attaching add to its finished call (call id choice-done)")
    for bad in ("always", None, True):
        with pytest.raises(tether.ConfigError):
            tether.runs.check_reattach(bad)
    assert tether.runs.check_reattach("run") == "run"


def test_run_remote_records_the_remote_duration_of_a_call_it_reattached_to(local_cluster, tmp_path):
    sleepy = tether.function(svc.sleep_then).to(local_cluster, name="sleep_duration")
    marker = tmp_path / "marker"
    sleepy.spawn_with((1.5, str(marker)), {}, call_id="duration-1", on_log=None).wait_started()
    time.sleep(1.2)  # the orchestrator's retry comes late: it waits ~0.3 s of the call's 1.5 s
    started = time.perf_counter()
    result = tether.runs.run_remote(sleepy, (1.5, str(marker)), call_id="duration-1")
    waited = time.perf_counter() - started
    assert result.seconds >= 1.45 > waited  # the call's own duration, not this caller's wait
    assert result.reattached and result.call_id == "duration-1"
    assert result.metadata()["reattached"] is True
    assert marker.read_text().count("start") == 1
    fresh = tether.runs.run_remote(svc.add, (1, 2), call_id="duration-2", cluster=local_cluster)
    assert not fresh.reattached and 0 <= fresh.seconds < 5


# -- where: the orchestrator's settings decide, and no daemon starts unasked ------------------------------------------
@pytest.fixture
def other_cluster(module_home):
    c = tether.cluster(name="runs-other").up_if_not()
    try:
        yield c
    finally:
        c.teardown()


def test_a_saved_service_runs_on_the_cluster_given(local_cluster, other_cluster):
    tether.function(svc.add).to(local_cluster, name="add_where").save()
    result = tether.runs.run_remote("add_where", (2, 3), call_id="where-1", cluster=other_cluster)
    assert result.value == 5
    assert "add_where" in {r["name"] for r in other_cluster.ls()}
    assert tether.runs.call_state("where-1", other_cluster) is CallState.SUCCEEDED
    assert tether.runs.call_state("where-1", local_cluster) is None  # not where it was saved
    # an endpoint (a daemon someone else runs) is a cluster given too; its token comes with the settings
    place = tether.runs.where({"name": "other-ep"}, endpoint=other_cluster.endpoint, token=other_cluster.token,
                              setting="the block")
    via = tether.runs.run_remote("add_where", (3, 4), call_id="where-2", cluster=place)
    assert via.value == 7 and tether.runs.call_state("where-2", other_cluster) is CallState.SUCCEEDED
    # no cluster given: the saved service runs where it was saved (that daemon runs: nothing is started)
    home = tether.runs.run_remote("add_where", (1, 1), call_id="where-3", cluster=tether.runs.where(None, setting="x"))
    assert home.value == 2 and tether.runs.call_state("where-3", local_cluster) is CallState.SUCCEEDED


def test_providers_never_start_a_daemon_unasked(local_cluster, module_home, monkeypatch):
    monkeypatch.delenv(tether.runs.ALLOW_LOCAL_DAEMON_ENV, raising=False)
    nowhere = tether.runs.where(None, setting="the connection 'tether_default'")
    with pytest.raises(tether.ConfigError, match="no cluster to run add") as info:
        tether.runs.resolve_target(svc.add, nowhere)
    assert "the connection 'tether_default'" in (info.value.hint or "")
    assert "TETHER_ALLOW_LOCAL_DAEMON=1" in (info.value.hint or "")
    by_name = tether.runs.where("runs-not-running", setting="the block 'lab'")  # names no saved cluster
    with pytest.raises(tether.ConfigError, match="would start a tether daemon") as info:
        tether.runs.resolve_target("tests.core.services:add", by_name)
    assert info.value.details["cluster"] == "runs-not-running" and "the block 'lab'" in (info.value.hint or "")
    tether.cluster(name="runs-saved-down").save()  # a saved local cluster that is not up on this worker
    tether.function(svc.add).to(local_cluster, name="add_on_down").save()
    saved = tether.load("add_on_down").config()
    saved["cluster"] = tether.cluster(name="runs-saved-down").config()
    tether.registry.get_registry().save("add_down", saved)
    with pytest.raises(tether.ConfigError, match="would start a tether daemon"):
        tether.runs.resolve_target("add_down", nowhere)
    assert not (module_home / "clusters" / "runs-not-running").exists()
    assert tether.cluster(name="runs-saved-down").status() == "down"
    assert tether.cluster(name="local").status() == "down"  # the embedded local cluster was not started
    # a running local cluster is fine, and so is a spec the settings describe themselves
    assert tether.runs.resolve_target(svc.add, tether.runs.where(local_cluster.name, setting="x"))(1, 2) == 3
    assert tether.runs.where({"name": "runs-spec", "instance_type": "local:256MB"}, setting="x").described
    monkeypatch.setenv(tether.runs.ALLOW_LOCAL_DAEMON_ENV, "1")  # the user opted in
    assert tether.runs.where(None, setting="x").allow_local_daemon
