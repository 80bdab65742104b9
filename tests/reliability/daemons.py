"""Start a real ``python -m tether.daemon`` subprocess on 127.0.0.1 and talk to it over plain HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DaemonProc:
    """A daemon subprocess: where it listens, its owner token and its state dir."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    token: str | None
    state_dir: Path
    log: Path
    verify: Any = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(
            self.endpoint + path,
            headers=kw.pop("headers", self.headers),
            timeout=30,
            verify=self.verify,
            **kw,
        )

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(
            self.endpoint + path,
            headers=kw.pop("headers", self.headers),
            timeout=30,
            verify=self.verify,
            **kw,
        )

    def deploy(
        self,
        name: str,
        qualname: str,
        *,
        env: str = "default",
        module: str = "tests.core.services",
        root: Path = ROOT,
    ) -> dict[str, Any]:
        spec = {
            "name": name,
            "env": {"name": env},
            "code": {"root": str(root), "import_path": module, "qualname": qualname},
        }
        r = self.post("/deploy", json=spec)
        assert r.status_code == 200, r.text
        return r.json()

    def call(self, name: str, *args: Any, **kwargs: Any) -> requests.Response:
        return self.post(f"/{name}/call", json={"args": list(args), "kwargs": kwargs})

    def kill(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)


def limit_open_files(n: int) -> None:
    """In a child before exec: at most ``n`` open files, soft and hard (it cannot raise them again)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def daemon_cmd(state_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tether.daemon",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--state-dir",
        str(state_dir),
        *extra,
    ]


def start_daemon(
    state_dir: Path,
    *extra: str,
    token: str | None = "owner-token-0123456789",
    hashed_token_file: bool = True,
    scheme: str = "http",
    timeout: float = 60.0,
    nofile: int | None = None,
    env: dict[str, str] | None = None,
) -> DaemonProc:
    """Start a daemon; the token file holds ``sha256:<hex>`` unless ``hashed_token_file`` is False. ``nofile``
    caps its open files (soft and hard ``RLIMIT_NOFILE``), ``env`` adds to its environment."""
    from tether.daemon.auth import hash_token

    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir / "ready.json"
    ready.unlink(missing_ok=True)
    args = list(extra)
    if token:
        token_file = state_dir.parent / f"{state_dir.name}.token"
        token_file.write_text(f"sha256:{hash_token(token)}" if hashed_token_file else token)
        token_file.chmod(0o600)
        args += ["--token-file", str(token_file)]
    log = state_dir.parent / f"{state_dir.name}.log"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            daemon_cmd(state_dir, "--ready-file", str(ready), *args),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
            preexec_fn=(lambda: limit_open_files(nofile)) if nofile else None,
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"daemon did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    port = json.loads(ready.read_text())["port"]
    return DaemonProc(proc, f"{scheme}://127.0.0.1:{port}", token, state_dir, log)


def wait_for_text(path: Path, text: str, timeout: float = 30.0) -> None:
    """Wait until ``path`` holds ``text`` (a marker a remote function writes)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)


def worker_pid(d: DaemonProc, env: str) -> int:
    """The pid of ``env``'s live worker, from the daemon's /status."""
    return next(w["pid"] for w in d.get("/status").json()["workers"] if w["env"] == env and w["alive"])


def kill_quietly(*pids: int) -> None:
    """SIGKILL each of ``pids`` that still runs."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
