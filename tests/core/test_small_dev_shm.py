"""A host whose /dev/shm is small (64 MiB in a default Docker container): big payloads that do not fit in shared
memory fall back to the socket instead of crashing the client or the worker with SIGBUS.

The client, the daemon and its worker run in a private mount namespace with an 8 MiB tmpfs on /dev/shm."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import asyncio, os, sys, tempfile
    os.environ["TETHER_HOME"] = tempfile.mkdtemp(prefix="tether-small-shm-")
    import tether
    from tests.core import services as svc

    c = tether.cluster(name="small-shm").up_if_not()
    try:
        echo = tether.function(svc.echo).to(c)
        make = tether.function(svc.make_bytes).to(c)
        for mib in (2, 6, 12, 30):  # fits, nearly fills, then does not fit at all
            data = os.urandom(mib * 1024 * 1024)
            assert echo(data) == data, mib
            assert asyncio.run(echo.remote_async(data)) == data, mib
            assert make(mib * 1024 * 1024, 5) == bytes([5]) * (mib * 1024 * 1024), mib
        print("all sizes round-tripped")
    finally:
        c.teardown()
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_payloads_bigger_than_dev_shm_fall_back_to_the_socket(tmp_path):
    script = tmp_path / "small_shm.py"
    script.write_text(SCRIPT)
    mount = f"mount -t tmpfs -o size=8m tmpfs /dev/shm && exec {sys.executable} {script}"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "all sizes round-tripped" in proc.stdout
