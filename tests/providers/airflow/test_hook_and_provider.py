"""The ``tether`` connection type: registration through the entry point, the hook's fields, token masking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import tether
from examples.services.embed import embed

FNS = "af_remote_fns"  # airflow_fns.py, deployed from its own code root (conftest)
TOKEN = "s3cr3t-team-token"


def _connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> str:
    """A ``tether`` connection in the environment, the way deployments hand Airflow its connections."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "tether", **fields}))
    return conn_id


@pytest.fixture
def team_connection(monkeypatch: pytest.MonkeyPatch, cluster) -> str:
    extra = {"scheme": "https", "cluster": {"name": cluster.name}}
    return _connection(
        monkeypatch, "tether_team", host="registry.example", port=8443, password=TOKEN, extra=extra
    )


@pytest.fixture
def cluster_connection(monkeypatch: pytest.MonkeyPatch, cluster) -> str:
    """No registry address (the local registry), a token, and the cluster calls go to."""
    return _connection(monkeypatch, "tether_lab", password=TOKEN, extra={"cluster": {"name": cluster.name}})


def test_provider_registers_the_tether_connection_type_and_hook(airflow_db) -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "tether" in manager.providers
    hook = ProvidersManagerTaskRuntime().hooks["tether"]
    assert hook is not None
    assert hook.hook_class_name == "tether.providers.airflow.hook.TetherHook"
    assert hook.connection_id_attribute_name == "tether_conn_id"
    behaviour = manager.field_behaviours["tether"]
    assert behaviour["relabeling"] == {"host": "Registry address", "password": "Token"}


def test_hook_reads_registry_address_token_and_cluster(team_connection: str, cluster) -> None:
    from tether.providers.airflow.hook import TetherHook

    hook = TetherHook(team_connection)
    conn = hook.get_conn()
    assert conn.registry_url == "https://registry.example:8443"
    assert conn.token == TOKEN
    assert TOKEN not in repr(conn)
    assert hook.get_cluster().name == cluster.name
    assert hook.get_cluster({"name": "elsewhere", "instance_type": "local:1GB"}).name == "elsewhere"
    with hook.environment():
        assert os.environ["TETHER_REGISTRY_URL"] == "https://registry.example:8443"
        assert os.environ["TETHER_TOKEN"] == TOKEN
    assert "TETHER_TOKEN" not in os.environ


def test_missing_default_connection_means_local_defaults(airflow_db) -> None:
    from airflow.sdk.exceptions import AirflowNotFoundException

    from tether.providers.airflow.hook import TetherHook

    conn = TetherHook().get_conn()
    assert (conn.registry_url, conn.token, conn.cluster) == (None, None, None)
    with pytest.raises(AirflowNotFoundException):
        TetherHook("no_such_connection").get_conn()


def test_task_uses_the_connection_cluster(
    run_operator, cluster_connection: str, cluster, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    result = run_operator(
        "hook_conn",
        "double",
        function=f"{FNS}:count_run",
        args=[str(ledger), 5],
        tether_conn_id=cluster_connection,
    )

    assert result.state == "success"
    assert result.xcoms["double"]["return_value"] == 10
    call_id = result.xcoms["double"]["call_id"]
    assert tether.call(call_id, cluster, on_log=None).status()["state"] == "succeeded"  # ran on that cluster


@pytest.mark.parametrize("where", ["password", "extra"])
def test_the_token_is_masked_in_logs(monkeypatch: pytest.MonkeyPatch, airflow_db, where) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    from tether.providers.airflow.hook import TetherHook

    token = f"tok-{where}-0123456789"
    fields = {"password": token} if where == "password" else {"extra": {"token": token}}
    conn_id = _connection(monkeypatch, f"tether_{where}", **fields)

    assert TetherHook(conn_id).get_conn().token == token
    assert redact(f"calling with {token}") == "calling with ***"  # end to end (Airflow masks these itself too)


def test_tether_masks_the_token_of_a_connection_airflow_did_not_mask(airflow_db) -> None:
    """What tether adds to Airflow's masking: Airflow masks a connection's password when *it* fetches the
    connection (and the values of ``extra`` when they are parsed); a ``Connection`` tether is handed otherwise
    (built in code, deserialized by a trigger) has its token masked by ``connection_settings`` alone."""
    from airflow.sdk import Connection
    from airflow.sdk._shared.secrets_masker import redact

    from tether.providers.airflow.hook import connection_settings

    token = "tok-built-in-code-0123456789"
    conn = Connection(conn_id="tether_built", conn_type="tether", password=token)
    assert redact(f"calling with {token}") == f"calling with {token}"  # nobody has masked it yet

    assert connection_settings(conn).token == token
    assert redact(f"calling with {token}") == "calling with ***"


def test_a_service_saved_in_the_team_registry_is_called_through_the_connection(
    run_operator, cluster, team_registry: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, token = team_registry
    with monkeypatch.context() as deployer:  # the IDE-style script saves to the team registry
        deployer.setenv("TETHER_REGISTRY_URL", url)
        deployer.setenv("TETHER_TOKEN", token)
        tether.function(embed).to(cluster, name="team-embed").save()
    with pytest.raises(tether.NotFound):
        tether.function(name="team-embed")  # not in this machine's local registry
    conn_id = _connection(monkeypatch, "tether_registry", host=url, password=token)

    result = run_operator(
        "team_registry", "embed", service="team-embed", args=["from the team"], tether_conn_id=conn_id
    )

    assert result.state == "success"
    assert result.xcoms["embed"]["return_value"] == embed("from the team")
    assert result.xcoms["embed"]["tether"]["service"] == "team-embed"


def test_a_connection_can_point_at_a_daemon_run_elsewhere(
    dag_run, cluster, tmp_path: Path, monkeypatch
) -> None:
    """``extra.cluster.endpoint`` + the password as its token: blocking and deferred tasks both reach it."""
    assert cluster.token, "the shared cluster's daemon requires a token"
    conn_id = _connection(
        monkeypatch,
        "tether_remote",
        password=cluster.token,
        extra={"cluster": {"name": "af-remote", "endpoint": cluster.endpoint}},
    )
    ledger = tmp_path / "ledger"
    result = dag_run(
        f"""
        import pendulum
        from airflow.sdk import DAG
        from tether.providers.airflow import RunhouseOperator

        with DAG("endpoint_conn", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
            for n, deferrable in ((1, False), (2, True)):
                RunhouseOperator(
                    task_id=f"double_{{n}}",
                    function="{FNS}:count_run",
                    args=[{str(ledger)!r}, n],
                    tether_conn_id={conn_id!r},
                    deferrable=deferrable,
                    poll_interval=0.1,
                )
        """,
        "endpoint_conn",
    )

    assert result.state == "success"
    assert (result.xcoms["double_1"]["return_value"], result.xcoms["double_2"]["return_value"]) == (2, 4)
    for task_id in ("double_1", "double_2"):  # both calls ran on the daemon behind the endpoint
        assert (
            tether.call(result.xcoms[task_id]["call_id"], cluster, on_log=None).status()["state"]
            == "succeeded"
        )
    assert cluster.status() == "up"
