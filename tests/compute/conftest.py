"""Fixtures for compute tests: the offline catalog fixture (../shared/catalog/v8) and netns SSH hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compute.hosts import netns_hosts  # noqa: F401  (the fixture, for this folder)

CATALOG = Path(__file__).resolve().parents[3] / "shared" / "catalog" / "v8"
if not CATALOG.exists():  # the shared folder sits beside the repo; fall back to the workplace copy
    CATALOG = Path("/work/shared/catalog/v8")


@pytest.fixture
def catalog_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Read the real trimmed v8 catalog directly (the CSV reader, as when SkyPilot is not installed)."""
    monkeypatch.setenv("TETHER_CATALOG_DIR", str(CATALOG))
    monkeypatch.setenv("TETHER_CATALOG_READER", "csv")
    return CATALOG


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "netns_hosts" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """No rich progress bars in test output."""
    monkeypatch.setenv("TETHER_PROGRESS", "0")
