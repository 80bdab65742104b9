"""Import boundaries: ``import tether`` never pulls in Dagster; the Dagster provider needs neither Airflow nor Prefect."""

import subprocess
import sys

import dagster as dg
import pytest

from tether.providers.dagster import TetherResource


def test_import_tether_does_not_import_dagster() -> None:
    code = "import sys, tether, tether.runs; assert 'dagster' not in sys.modules, 'import tether imported dagster'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_provider_imports_with_neither_airflow_nor_prefect_installed() -> None:
    # a fresh interpreter where importing airflow or prefect fails, as if they were not installed
    code = (
        "import sys; sys.modules['airflow'] = None; sys.modules['prefect'] = None\n"
        "import tether.providers.dagster as m\n"
        "assert m.TetherResource.__name__ == 'TetherResource'\n"
        "assert not any(k.startswith(('tether.providers.airflow', 'tether.providers.prefect')) for k in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_resource_fields_are_described_and_the_token_stays_out_of_repr() -> None:
    resource = TetherResource(cluster_name="gpu", token="s3cret-token", cleanup="on_exception")

    assert "s3cret-token" not in repr(resource)
    fields = TetherResource.model_fields
    assert all(f.description for name, f in fields.items()), [
        n for n, f in fields.items() if not f.description
    ]
    assert set(fields) >= {"cluster_name", "cluster_spec", "endpoint", "token", "escalation", "cleanup"}


def test_unknown_cleanup_policy_is_refused_before_any_step_runs() -> None:
    @dg.asset
    def noop(tether: TetherResource) -> int:
        return 1

    with pytest.raises(dg.DagsterInvalidConfigError, match="sometimes"):
        dg.materialize(
            [noop],
            resources={"tether": TetherResource.configure_at_launch()},
            run_config={"resources": {"tether": {"config": {"cleanup": "sometimes"}}}},
        )
