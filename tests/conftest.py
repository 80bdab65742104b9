"""Shared fixtures: an isolated TETHER_HOME and a real local cluster (daemon subprocess on 127.0.0.1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def tether_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("tether-home")
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("TETHER_REGISTRY_URL", raising=False)
    return home


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("tether-home-mod")
    old = os.environ.get("TETHER_HOME")
    os.environ["TETHER_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TETHER_HOME", None)
    else:
        os.environ["TETHER_HOME"] = old


@pytest.fixture(scope="module")
def local_cluster(module_home: Path) -> Iterator[object]:
    """A real local cluster shared by a test module; torn down afterwards."""
    import tether

    c = tether.cluster(name="test-local").up_if_not()
    yield c
    c.teardown()
