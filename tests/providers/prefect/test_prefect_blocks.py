"""The ``TetherCluster`` Block: saved to and loaded from a real Prefect server, found through the entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

import tether.providers.prefect as provider
from tether.providers.prefect import TetherCluster


def test_block_round_trips_through_the_server_with_the_token_masked(prefect_server: None) -> None:
    TetherCluster(endpoint="http://127.0.0.1:9", token="s3cret-token", cluster_name="lab").save(
        "lab", overwrite=True
    )

    with get_client(sync_client=True) as client:
        stored = client.read_block_document_by_name("lab", "tether-cluster", include_secrets=False)
    assert stored.data["endpoint"] == "http://127.0.0.1:9"
    assert "s3cret-token" not in str(stored.data)

    loaded = TetherCluster.load("lab")
    assert loaded.token is not None and loaded.token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(loaded) and "s3cret-token" not in str(loaded.model_dump())
    assert loaded.get_cluster().name == "lab"


def test_block_rejects_an_invalid_cluster_spec_before_it_is_saved() -> None:
    with pytest.raises(ValidationError, match="instance_tpye"):
        TetherCluster(cluster_spec={"instance_tpye": "A10G:1"})
    assert TetherCluster(cluster_spec={"instance_type": "local:256MB"}).cluster_spec == {
        "instance_type": "local:256MB"
    }


def test_prefect_collections_entry_point_is_this_package() -> None:
    (entry,) = [e for e in entry_points(group="prefect.collections") if e.name == "tether"]
    assert entry.load() is provider


def test_prefect_loads_the_block_by_slug_without_importing_tether(prefect_server: None) -> None:
    TetherCluster(cluster_name="from-slug", token="t0k").save("by-slug", overwrite=True)
    script = textwrap.dedent(
        """
        import sys
        from prefect.blocks.core import Block
        block = Block.load("tether-cluster/by-slug")
        print(type(block).__module__, type(block).__name__, block.cluster_name, block.token.get_secret_value())
        print("providers.prefect imported by Prefect:", "tether.providers.prefect" in sys.modules)
        print("airflow/dagster imported:", any(m in sys.modules for m in ("airflow", "dagster")))
        """
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "tether.providers.prefect.blocks TetherCluster from-slug t0k" in lines
    assert "providers.prefect imported by Prefect: True" in lines
    assert "airflow/dagster imported: False" in lines


def test_importing_tether_does_not_import_prefect() -> None:
    script = "import sys, tether; tether.cluster, tether.function; print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'airflow', 'dagster')))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
