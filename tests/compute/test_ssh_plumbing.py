"""The pieces under the ssh backend that need no host: credentials, error classification, the wheelhouse pins,
wheel fingerprints and tunnel failures."""

from __future__ import annotations

import importlib.metadata as md
import os
import zipfile
from pathlib import Path

import pytest

from tether.compute.bootstrap import SSHTarget, pinned_requirements, step_error, wheel_fingerprint
from tether.compute.tunnel import open_tunnel, pid_alive, tunnel_alive
from tether.errors import AuthError, ClusterUnavailable, ConfigError

LINUX_311 = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
             "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip


def test_ssh_creds_become_ssh_options(tmp_path):
    t = SSHTarget.from_creds("10.0.0.5", {"user": "ml", "key": "~/.ssh/id", "port": "2222"}, tmp_path / "kh")
    argv = t.ssh_argv("true")
    assert argv[-2:] == ["ml@10.0.0.5", "true"]
    assert argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "2222"]
    assert str(Path("~/.ssh/id").expanduser()) in argv and "BatchMode=yes" in argv
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv
    with pytest.raises(ConfigError, match="password"):
        SSHTarget.from_creds("10.0.0.5", {"user": "ml", "password": "x"})


def test_remote_failures_are_classified_with_step_host_and_stderr():
    auth = step_error("connect", "h1", 255, "root@h1: Permission denied (publickey).")
    assert isinstance(auth, AuthError) and auth.details == {
        "step": "connect",
        "host": "h1",
        "returncode": 255,
        "stderr": "root@h1: Permission denied (publickey).",
    }
    unreachable = step_error("connect", "h1", 255, "ssh: connect to host h1 port 22: Connection timed out")
    assert type(unreachable) is ClusterUnavailable and unreachable.retryable
    failed = step_error("install", "h2", 1, "ERROR: No matching distribution found for aiohttp")
    assert type(failed) is ClusterUnavailable and not failed.retryable
    assert "install" in str(failed) and "h2" in str(failed) and "aiohttp" in str(failed)


def test_wheelhouse_pins_are_the_locally_installed_versions():
    pins = dict(p.split("==") for p in pinned_requirements("tether", LINUX_311))
    for dist in ("aiohttp", "pydantic", "cloudpickle", "rich", "structlog", "tenacity", "pydantic-core"):
        assert pins[dist] == md.version(dist)
    assert "apache-airflow" not in pins and "pytest" not in pins  # extras are not shipped


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2020 + len(path.name) % 5, 1, 1, 0, 0, 0)), data)
    return path


def test_wheel_fingerprint_ignores_zip_dates_but_not_content(tmp_path):
    a = _zip(tmp_path / "a.whl", {"tether/__init__.py": b"x = 1\n"})
    b = _zip(tmp_path / "bb.whl", {"tether/__init__.py": b"x = 1\n"})
    c = _zip(tmp_path / "c.whl", {"tether/__init__.py": b"x = 2\n"})
    assert a.read_bytes() != b.read_bytes()
    assert wheel_fingerprint(a) == wheel_fingerprint(b) != wheel_fingerprint(c)


def test_a_tunnel_that_cannot_connect_names_the_step_and_host(tmp_path):
    t = SSHTarget(host="127.0.0.1", port=1, connect_timeout=2, known_hosts=str(tmp_path / "kh"))
    with pytest.raises(ClusterUnavailable) as info:
        open_tunnel(t, 32300, log=tmp_path / "tunnel.log")
    assert info.value.details["step"] == "tunnel" and info.value.details["host"] == "127.0.0.1"
    assert "Connection refused" in info.value.details["stderr"]
    assert not tunnel_alive(None, None) and not pid_alive(0)


@pytest.mark.parametrize(("first_stderr", "calls"), [
    ("kex_exchange_identification: read: Connection reset by peer", 2),  # the handshake was cut: once more
    ("ssh: connect to host h1 port 22: No route to host", 1),  # unreachable: fail at once
])
def test_a_cut_ssh_handshake_is_retried_and_nothing_else(tmp_path, monkeypatch, first_stderr, calls):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    fake_ssh = bin_dir / "ssh"  # a real process standing in for ssh: fails the first time, then answers
    fake_ssh.write_text(f"""#!/bin/sh
echo call >> {log}
if [ "$(wc -l < {log})" -eq 1 ]; then echo "{first_stderr}" >&2; exit 255; fi
echo answered
""")
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    t = SSHTarget.from_creds("h1", {"user": "root"}, tmp_path / "kh")

    if calls == 2:
        assert t.run("true", step="connect") == "answered\n"
    else:
        with pytest.raises(ClusterUnavailable, match="No route to host"):
            t.run("true", step="connect")
    assert len(log.read_text().splitlines()) == calls
