"""The Dagster example runs end to end on the local cluster: the saved ``embed`` service called by name."""

from pathlib import Path

import pytest

import tether


def test_dagster_example_materializes_embeddings_by_service_name(
    module_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples import dagster_job

    dagster_job.main()

    out = capsys.readouterr().out
    assert "dagster example OK" in out
    assert f"embedded {len(dagster_job.DOCS)} documents" in out
    assert "tether/service = embed" in out
    assert "tether/call_id = run-" in out
    assert tether.cluster(name="examples").status() != "up"  # the example tears down what it started
