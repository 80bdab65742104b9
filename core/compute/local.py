"""The embedded default backend: a daemon subprocess on 127.0.0.1, no cloud, no credentials.

``instance_type="local:256MB"`` runs the daemon's workers under that memory limit (the local OOM ladder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from tether.client.health import probe_health
from tether.compute.base import ClusterHandle, ClusterStatus
from tether.compute.daemons import ANSWER_TIMEOUT, is_daemon, local_address, pid_alive
from tether.compute.setup import LocalRunner, apply_image, image_hash, local_image_env
from tether.compute.state import claim_name, load_state, state_path, write_private
from tether.errors import ClusterUnavailable
from tether.home import clusters_dir, file_lock, open_private, private_dir
from tether.protocol.tls import ensure_self_signed
from tether.protocol.tokens import hash_token, new_token
from tether.specs import ClusterSpec

START_TIMEOUT = 60.0


def _healthy(endpoint: str) -> bool:
    # /health carries no secret; the client pins the certificate on every request that does
    return probe_health(endpoint, timeout=ANSWER_TIMEOUT) is not None


class LocalBackend:
    """Runs the daemon as a local subprocess; its state lives in ``$TETHER_HOME/clusters/<name>/``."""

    name: ClassVar[str] = "local"

    def _paths(self, spec: ClusterSpec) -> tuple[Path, Path]:
        return state_path(spec.name), clusters_dir() / spec.name

    def _read(self, spec: ClusterSpec) -> dict | None:
        return load_state(spec.name)

    def handle(self, spec: ClusterSpec) -> ClusterHandle | None:
        """The running daemon's handle, or None."""
        where = local_address(self._read(spec), self._paths(spec)[1])
        if where is None:
            return None
        return ClusterHandle(endpoint=where.endpoint, token=where.token, hosts=["127.0.0.1"],
                             instance_type=spec.instance_type or "local", cloud="local", price_per_hour=0.0,
                             pid=where.pid, tls_fingerprint=where.tls_fingerprint, unix_socket=where.unix_socket)

    def up(self, spec: ClusterSpec) -> ClusterHandle:
        state_file, state_dir = self._paths(spec)
        with file_lock(state_file.with_suffix(".lock")):
            claim_name(spec.name, "local")
            handle = self.handle(spec)
            same_image = (self._read(spec) or {}).get("image_hash") == image_hash(spec.image)
            if handle is not None and same_image and _healthy(handle.endpoint):
                return handle
            if handle is not None:  # alive but not answering, or another image: replace it
                self._kill(handle.pid, state_dir)
            return self._start(spec, state_file, state_dir)

    def _start(self, spec: ClusterSpec, state_file: Path, state_dir: Path) -> ClusterHandle:
        private_dir(state_dir)
        image_env, python, image_steps = self._apply_image(spec, state_dir)
        token = new_token() if spec.auth else None
        ready = state_dir / "ready.json"
        ready.unlink(missing_ok=True)
        cmd = [python, "-m", "tether.daemon", "--host", "127.0.0.1", "--port", str(spec.server_port or 0),
               "--state-dir", str(state_dir), "--ready-file", str(ready)]
        if token:
            token_file = state_dir / "token"
            with os.fdopen(open_private(token_file), "w") as f:  # 0600 from creation, never chmodded later
                f.write(f"sha256:{hash_token(token)}")  # the daemon's dir keeps only the hash
            cmd += ["--token-file", str(token_file)]
        fingerprint = None
        if spec.server_connection_type == "tls":
            cert, key = state_dir / "tls" / "cert.pem", state_dir / "tls" / "key.pem"
            fingerprint = ensure_self_signed(cert, key)
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
        if spec.autostop_mins is not None:
            cmd += ["--autostop-mins", str(spec.autostop_mins)]
        if spec.instance_type and ":" in spec.instance_type:
            cmd += ["--memory-limit", spec.instance_type.split(":", 1)[1]]
        sock = state_dir / "daemon.sock"
        unix_socket = str(sock) if fingerprint is None and len(str(sock)) < 100 else None  # AF_UNIX path limit
        if unix_socket:
            cmd += ["--unix-socket", unix_socket]
        log_fd = open_private(state_dir / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(log_fd, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **image_env} if image_env else None)
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                tail = (state_dir / "daemon.log").read_text(errors="replace")[-2000:]
                raise ClusterUnavailable(f"the local daemon for cluster {spec.name!r} did not start: {tail}",
                                         hint=f"see {state_dir / 'daemon.log'}")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        state = {"backend": "local", "pid": info["pid"], "port": info["port"], "token": token, "state_dir": str(state_dir),
                 "tls_fingerprint": fingerprint, "unix_socket": unix_socket, "spec": spec.model_dump(mode="json"),
                 "image_hash": image_hash(spec.image), "image": image_steps}
        write_private(state_file, json.dumps(state).encode())
        handle = self.handle(spec)
        assert handle is not None
        return handle

    def _apply_image(self, spec: ClusterSpec, state_dir: Path) -> tuple[dict[str, str], str, dict[str, Any]]:
        """An image's steps on this machine (cached per step in the cluster's folder, like on ssh hosts): the env
        vars and python the daemon and its workers then run with, and which steps ran / were cached."""
        if spec.image is None:
            for stale in ("image.env", "image.venv"):
                (state_dir / stale).unlink(missing_ok=True)
            return {}, sys.executable, {}
        report = apply_image(LocalRunner(), spec.image, daemon_dir=str(state_dir), python=sys.executable)
        print(report.line(spec.image.name), file=sys.stderr)
        env, python = local_image_env(state_dir)
        return env, python, {report.host: {"ran": report.ran, "cached": report.cached}}

    def status(self, spec: ClusterSpec) -> ClusterStatus:
        if self.handle(spec) is not None:
            return "up"
        _, state_dir = self._paths(spec)
        return "stopped" if (state_dir / "manifest.json").exists() else "down"

    def _kill(self, pid: int | None, state_dir: Path, timeout: float = 10.0) -> None:
        """Stop the daemon ``pid`` if it is this cluster's (never a process that took its pid over)."""
        if not is_daemon(pid, state_dir):
            return
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def stop(self, spec: ClusterSpec) -> None:
        """Stop the daemon but keep its manifest, so the next ``up`` restores its services."""
        state_file, state_dir = self._paths(spec)
        with file_lock(state_file.with_suffix(".lock")):
            state = self._read(spec)
            if state:
                self._kill(state.get("pid"), state_dir)
                state["pid"] = None
                write_private(state_file, json.dumps(state).encode())

    def down(self, spec: ClusterSpec) -> None:
        """Stop the daemon and delete everything it held."""
        state_file, state_dir = self._paths(spec)
        with file_lock(state_file.with_suffix(".lock")):
            state = self._read(spec)
            if state:
                self._kill(state.get("pid"), state_dir)
            state_file.unlink(missing_ok=True)
            shutil.rmtree(state_dir, ignore_errors=True)

    def sync_code(self, spec: ClusterSpec, handle: ClusterHandle, root: Path) -> str:
        return str(root)  # same filesystem: nothing to copy
