"""Test helpers that start real tether processes (shared by several test folders)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def registry_server(db: str, workdir: Path, timeout: float = 60.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``tether registry serve`` on a free 127.0.0.1 port as a subprocess; yields (url, process)."""
    ready = workdir / "registry-ready.json"
    log_path = workdir / "registry-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether.registry", "serve", "--db", db, "--port", "0", "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registry server did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield json.loads(ready.read_text())["url"], proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
