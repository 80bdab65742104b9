"""What providers share (tether.runs): deterministic ids, re-attach, retry after failure, cancel; endpoint clusters."""

from __future__ import annotations

import threading
import time

import pytest

import tether
import tether.runs
from tests.core import services as svc


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
