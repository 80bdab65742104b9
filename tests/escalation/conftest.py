"""Escalation fixtures: an isolated TETHER_HOME whose local clusters are all torn down afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

# the pinned v8 catalog sits beside the repo (../shared), as for the compute tests; else the workplace copy
CATALOG = Path(__file__).resolve().parents[3] / "shared" / "catalog" / "v8"
SHARED_CATALOG = Path("/work/shared/catalog/v8")


@pytest.fixture
def esc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TETHER_HOME in a tmp dir; every cluster started under it is torn down at the end."""
    home = tmp_path / "tether-home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("TETHER_REGISTRY_URL", raising=False)
    yield home
    from tether.api.clusters import Cluster
    from tether.specs import ClusterSpec

    for state in sorted((home / "clusters").glob("*.json")):
        try:
            spec = ClusterSpec.model_validate(json.loads(state.read_text())["spec"])
        except (OSError, ValueError, KeyError):
            continue
        Cluster(spec).teardown()


@pytest.fixture
def fixture_catalog(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pinned v8 catalog fixture, read by the CSV reader."""
    path = CATALOG if CATALOG.exists() else SHARED_CATALOG
    monkeypatch.setenv("TETHER_CATALOG_DIR", str(path))
    monkeypatch.setenv("TETHER_CATALOG_READER", "csv")
    return path
