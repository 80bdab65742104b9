"""Start a real ``python -m tether.registry serve`` subprocess on 127.0.0.1 (its output kept in a log file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.reliability.daemons import ROOT, limit_open_files


@dataclass
class RegistryProc:
    """A registry server subprocess: its URL, a token of principal ``fuzzer`` and its log file."""

    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, data: bytes) -> requests.Response:
        headers = {**self.headers, "Content-Type": "application/json"}
        return requests.post(self.url + path, data=data, headers=headers, timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)


def start_registry(tmp: Path, *extra: str, principal: str = "fuzzer", nofile: int | None = None) -> RegistryProc:
    """A registry server on a fresh SQLite database with one token for ``principal`` (``nofile``: at most that
    many open files)."""
    from tether.registry.store import Store

    db = tmp / "registry.db"
    store = Store(str(db))
    try:
        token = store.create_token(principal)
    finally:
        store.close()
    ready = tmp / "registry-ready.json"
    log = tmp / "registry.log"
    env = {**os.environ, "TETHER_HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tether.registry", "serve", "--db", str(db), "--port", "0",
           "--ready-file", str(ready), *extra]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                preexec_fn=(lambda: limit_open_files(nofile)) if nofile else None)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"registry server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return RegistryProc(proc, json.loads(ready.read_text())["url"], token, log)
