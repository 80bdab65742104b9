"""Fixtures of the reliability tests: a daemon subprocess with an owner token, per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.daemons import DaemonProc, start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """A daemon with an owner token and a 1 MiB body limit, shared by a test module."""
    d = start_daemon(tmp_path_factory.mktemp("daemon") / "state", "--max-body", "1MB")
    yield d
    d.kill()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
