"""Dagster fixtures; the tether ones (``module_home``, ``local_cluster``) come from ``tests/conftest.py``."""

from collections.abc import Iterator

import dagster as dg
import pytest


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An ephemeral Dagster instance whose event log the tests read back."""
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst
