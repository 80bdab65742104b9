"""SkyPilot tests run only in the sky environment (.venv-sky); elsewhere they are not collected.

SkyPilot resolves ``~/.sky`` when it is imported, so HOME is pointed at a temp dir holding the offline
v8 catalog fixture before any test imports ``sky`` (no catalog is ever downloaded).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.compute.conftest import CATALOG

HAVE_SKY = importlib.util.find_spec("sky") is not None
collect_ignore_glob = [] if HAVE_SKY else ["test_*.py"]

if HAVE_SKY:
    _home = Path(tempfile.mkdtemp(prefix="tether-sky-home-"))
    shutil.copytree(CATALOG, _home / ".sky" / "catalogs" / "v8")
    os.environ["HOME"] = str(_home)
    os.environ.pop("TETHER_CATALOG_DIR", None)
    os.environ.pop("TETHER_CATALOG_READER", None)
    atexit.register(shutil.rmtree, _home, True)


@pytest.fixture
def sky_home() -> Path:
    return Path(os.environ["HOME"])
