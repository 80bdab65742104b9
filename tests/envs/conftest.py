"""Fixtures for env tests: real sshd hosts in network namespaces (tests/compute/hosts.py), the tether wheel built
once per module, and a tiny wheel to install as a requirement with no index."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compute.hosts import netns_hosts, pinned_tether_wheel  # noqa: F401  (netns_hosts: the fixture)


@pytest.fixture(scope="module")
def pinned_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tether wheel built once for the module (edits to the tree during the run do not reinstall)."""
    with pinned_tether_wheel(tmp_path_factory.mktemp("wheel")) as wheel:
        yield wheel


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_PROGRESS", "0")


def make_wheel(out: Path, name: str, version: str, source: str) -> Path:
    """A pure-python wheel holding one module ``name`` with ``source``: a requirement pip installs offline."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tether-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            data = text.encode()
            z.writestr(member, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path
