"""One Prefect test server for the whole session (it takes seconds to start); the tether cluster is the shared
``local_cluster`` fixture of ``tests/conftest.py``."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

# Prefect reads these when it is first imported, which happens while collecting the test modules
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.2"
os.environ["PREFECT_SERVER_UI_ENABLED"] = "false"
for _service in (
    "cancellation_cleanup",
    "db_vacuum",
    "event_logger",
    "foreman",
    "late_runs",
    "scheduler",
    "pause_expirations",
    "repossessor",
    "cleanup_reconciler",
    "triggers",
):
    # background loops the tests never need; on a busy 2-core machine they slow the server's start
    os.environ[f"PREFECT_SERVER_SERVICES_{_service.upper()}_ENABLED"] = "false"
# TETHER_TEST_PREFECT_API_URL: reuse a running `prefect server start` instead of a fresh one (faster iteration)
_EXTERNAL_API = os.environ.get("TETHER_TEST_PREFECT_API_URL")
os.environ.pop("PREFECT_API_URL", None)
if _EXTERNAL_API:
    os.environ["PREFECT_API_URL"] = _EXTERNAL_API
os.environ.pop("PREFECT_PROFILE", None)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    if _EXTERNAL_API:
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture()
def markers(tmp_path: Path) -> Path:
    """A directory the remote functions leave their marks in."""
    d = tmp_path / "marks"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def steps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The remote functions (``prefect_fns.py``) as a user's own small project: its own code root and import path,
    untouched by edits elsewhere in this repository while the tests run."""
    project = tmp_path_factory.mktemp("flows-project")
    (project / "pyproject.toml").write_text('[project]\nname = "flows-project"\nversion = "0.1"\n')
    shutil.copy(Path(__file__).with_name("prefect_fns.py"), project / "remote_steps.py")
    sys.path.insert(0, str(project))
    try:
        yield importlib.import_module("remote_steps")
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("remote_steps", None)
