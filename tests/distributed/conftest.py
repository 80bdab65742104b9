"""A two-host cluster for the distributed tests: network-namespace hosts with their own sshd (as in
tests/compute), joined by veth pairs, one cluster brought up once for the whole folder. The functions run in
an env whose python is this venv's (.venv-dist: torch, ray, dask), which the hosts see on the shared
filesystem; the daemons come from tether's wheel, as on any ssh cluster."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compute.hosts import hosts_or_skip
from tests.processes import teardown_clusters

PYTHON = sys.executable


@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with hosts_or_skip(2, tmp_path_factory.mktemp("dist-hosts")) as h:
        yield h


@pytest.fixture(scope="session")
def dist_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("tether-home-dist")
    old = {k: os.environ.get(k) for k in ("TETHER_HOME", "TETHER_PROGRESS", "TETHER_WHEEL")}
    os.environ["TETHER_HOME"] = str(home)
    os.environ["TETHER_PROGRESS"] = "0"
    from tether.compute.bootstrap import build_wheel

    wheel = home / "wheel" / build_wheel().name  # pinned: edits to the tree during the run do not reinstall
    wheel.parent.mkdir()
    shutil.copy(build_wheel(), wheel)
    os.environ["TETHER_WHEEL"] = str(wheel)
    try:
        yield home
    finally:
        teardown_clusters(home)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def lab(hosts, dist_home: Path) -> Iterator[object]:
    """The two-node ssh cluster (head = host 0)."""
    import tether

    c = tether.cluster(name="dist", host=hosts.addresses, ssh_creds=hosts.ssh_creds).up_if_not()
    yield c
    c.teardown()


@pytest.fixture(scope="session")
def dist_env() -> object:
    import tether

    return tether.env(name="dist", python=PYTHON)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.netns)
