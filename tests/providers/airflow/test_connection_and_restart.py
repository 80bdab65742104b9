"""The connection form's Test reaches the daemon and checks the token; a restarted triggerer shows no remote log
line twice (both failed before: a dead endpoint tested green, a rebuilt trigger replayed every line)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

import tether
import tether.runs
from tether.providers.airflow.hook import TetherHook
from tether.providers.airflow.triggers import TetherCallTrigger

FNS = "af_remote_fns"


def _connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "tether", **fields}))
    return conn_id


def test_the_connection_test_fails_for_a_dead_endpoint(airflow_db, monkeypatch) -> None:
    conn = _connection(monkeypatch, "tether_dead", password="t",
                       extra={"cluster": {"name": "dead", "endpoint": "http://127.0.0.1:9"}})
    ok, message = TetherHook(conn).test_connection()
    assert ok is False, message
    assert "127.0.0.1:9" in message


def test_the_connection_test_checks_the_token(airflow_db, cluster, monkeypatch) -> None:
    bad = _connection(monkeypatch, "tether_badtoken", password="not-the-token",
                      extra={"cluster": {"name": "af-badtoken", "endpoint": cluster.endpoint}})
    ok, message = TetherHook(bad).test_connection()
    assert ok is False and "token" in message.lower(), message

    good = _connection(monkeypatch, "tether_goodtoken", password=cluster.token,
                       extra={"cluster": {"name": "af-goodtoken", "endpoint": cluster.endpoint}})
    ok, message = TetherHook(good).test_connection()
    assert ok is True, message
    assert cluster.endpoint in message


def test_the_cluster_token_field_is_a_password(airflow_db) -> None:
    from airflow.providers_manager import ProvidersManager

    widgets = ProvidersManager().connection_form_widgets
    assert widgets["extra__tether__cluster_token"].is_sensitive is True


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _rebuild(trigger: TetherCallTrigger) -> TetherCallTrigger:
    """What a restarted triggerer does: the class path and the JSON kwargs stored at deferral make a new one."""
    from airflow.sdk._shared.module_loading import import_string

    classpath, kwargs = trigger.serialize()
    return import_string(classpath)(**json.loads(json.dumps(kwargs)))


async def test_a_restarted_triggerer_does_not_show_lines_again(cluster, tmp_path: Path) -> None:
    call_id = tether.runs.call_id_for("restart-test", str(tmp_path))
    args = (str(tmp_path / "ledger"), str(tmp_path), 1)
    tether.runs.resolve_target(f"{FNS}:slow_count", cluster).spawn_with(
        args, {"seconds": 3.0, "lines": 6}, call_id=call_id, on_log=None)
    stored = TetherCallTrigger(call_id=call_id, cluster=cluster.config(), poll_interval=0.05)
    shown: list[str] = []
    first = _rebuild(stored)  # the triggerer builds its trigger from what the deferral stored
    first._emit = lambda level, line: shown.append(line)  # type: ignore[method-assign]

    running = asyncio.ensure_future(anext(first.run()))
    deadline = time.monotonic() + 60
    while len(shown) < 2:
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.02)
    running.cancel()  # the triggerer process goes away mid-call
    await asyncio.gather(running, return_exceptions=True)
    before = list(shown)

    second = _rebuild(stored)  # a new triggerer: the same stored kwargs
    second._emit = lambda level, line: shown.append(line)  # type: ignore[method-assign]
    event = await anext(second.run())

    assert event.payload["state"] == "succeeded"
    steps = [line for line in shown if line.startswith("slow_count: step")]
    assert steps == [f"slow_count: step {i} of 6" for i in range(1, 7)], (before, shown)


def test_the_connection_test_checks_the_registry_and_its_token(airflow_db, cluster, team_registry,
                                                               monkeypatch) -> None:
    url, token = team_registry
    extra = {"cluster": {"name": "af-reg", "endpoint": cluster.endpoint}, "cluster_token": cluster.token}
    good = _connection(monkeypatch, "tether_reg_good", host=url, password=token, extra=extra)
    ok, message = TetherHook(good).test_connection()
    assert ok is True and f"registry {url} answered" in message, message

    bad = _connection(monkeypatch, "tether_reg_bad", host=url, password="not-a-team-token", extra=extra)
    ok, message = TetherHook(bad).test_connection()
    assert ok is False and "token" in message.lower(), message
