"""The ``ssh`` backend: static hosts you already have, reached with the system ssh.

``up`` bootstraps every host (idempotent: see :mod:`tether.compute.bootstrap`), then tunnels to the head's
daemon (the first host). State lives in ``$TETHER_HOME/clusters/<name>.json``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console

from tether.client.health import probe_health
from tether.compute.base import ClusterHandle, ClusterStatus
from tether.compute.bootstrap import DEFAULT_PORT, REMOTE_DIR, SSHTarget, bootstrap_hosts, stop_daemon
from tether.compute.nodes import Node, close_node_tunnels, ssh_nodes
from tether.compute.setup import ImagePrep, image_hash
from tether.compute.sshtarget import control_dir
from tether.compute.state import claim_name, load_state, save_state, state_path
from tether.compute.tunnel import close_tunnel, open_tunnel, tunnel_alive
from tether.errors import ClusterUnavailable, ConfigError, TetherError
from tether.home import clusters_dir, file_lock, tether_home
from tether.specs import ClusterSpec

__all__ = ["SSHBackend"]

_SYNC_EXCLUDES = (".git", "__pycache__", "*.pyc", ".venv*", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                  "node_modules", "*.egg-info")  # fmt: skip


class SSHBackend:
    """Static SSH hosts: one daemon per host, the first host is the head the client talks to."""

    name: ClassVar[str] = "ssh"

    def __init__(self, *, show_progress: bool | None = None) -> None:
        self.show_progress = (os.environ.get("TETHER_PROGRESS", "1") != "0") if show_progress is None \
            else show_progress  # fmt: skip

    # -- helpers ------------------------------------------------------------------------------------------

    def targets(self, spec: ClusterSpec) -> list[SSHTarget]:
        if not spec.host:
            raise ConfigError(f"cluster {spec.name!r} has no hosts", hint="pass host=['10.0.0.5', ...]")
        known = tether_home() / "ssh" / "known_hosts"
        known.parent.mkdir(parents=True, exist_ok=True)
        mux = str(control_dir(tether_home()))  # one shared connection per host for bootstrap, sync and status
        return [replace(SSHTarget.from_creds(h, spec.ssh_creds, known), control_dir=mux) for h in spec.host]

    def _handle(self, spec: ClusterSpec, st: dict[str, Any]) -> ClusterHandle:
        return ClusterHandle(endpoint=f"http://127.0.0.1:{st['local_port']}", token=st.get("token"),
                             hosts=list(st["hosts"]), instance_type=spec.instance_type, cloud="ssh",
                             region=None, price_per_hour=None)  # fmt: skip

    # -- Backend protocol ---------------------------------------------------------------------------------

    def up(self, spec: ClusterSpec) -> ClusterHandle:
        """Bootstrap the hosts that need it, (re)open the tunnel to the head, check the daemon's health.

        Serialized per cluster across processes, so two callers never bootstrap the same hosts at once."""
        with file_lock(clusters_dir() / f"{spec.name}.lock"):
            return self._up(spec)

    def _up(self, spec: ClusterSpec) -> ClusterHandle:
        claim_name(spec.name, "ssh")
        targets = self.targets(spec)
        st = load_state(spec.name) or {}
        if st.get("hosts") != list(spec.host or []):
            st = {}
        if st and st.get("image_hash") == image_hash(spec.image) and \
                tunnel_alive(st.get("tunnel_pid"), st.get("local_port")):  # another image: apply it first
            handle = self._handle(spec, st)
            if probe_health(handle.endpoint, token=handle.token) is not None:
                return handle
        token = st.get("token") or (secrets.token_urlsafe(32) if spec.auth else None)
        port = spec.server_port or DEFAULT_PORT
        prep = ImagePrep(spec.image) if spec.image else None  # an image's steps: once per host, cached
        infos = bootstrap_hosts(targets, port=port, token=token, autostop_mins=spec.autostop_mins,
                                show_progress=self.show_progress, image_key=image_hash(spec.image),
                                prepare=prep)  # fmt: skip
        if prep is not None:
            st["image"] = prep.announce()
        st["image_hash"] = image_hash(spec.image)
        st.update(
            {
                "backend": "ssh",
                "spec": spec.model_dump(mode="json"),
                "hosts": list(spec.host or []),
                "token": token,
                "remote_port": infos[0].port,
                "ports": {i.host: i.port for i in infos},
                "remote_dirs": {i.host: i.remote_dir for i in infos},
                "homes": {i.host: i.home for i in infos},
            }
        )
        self._ensure_tunnel(spec, st, targets[0])
        handle = self._handle(spec, st)
        if probe_health(handle.endpoint, token=token, timeout=30) is None:
            raise ClusterUnavailable(f"daemon on {targets[0].host} does not answer /health through the tunnel",
                                     details={"step": "health", "host": targets[0].host})  # fmt: skip
        return handle

    def _ensure_tunnel(self, spec: ClusterSpec, st: dict[str, Any], head: SSHTarget) -> None:
        """Keep a live tunnel to the head's daemon, on the same local port as before when it is free."""
        if tunnel_alive(st.get("tunnel_pid"), st.get("local_port")):
            return
        close_tunnel(st.get("tunnel_pid"))
        log = clusters_dir() / f"{spec.name}.tunnel.log"
        try:
            tunnel = open_tunnel(head.unshared(), st["remote_port"], local_port=st.get("local_port"), log=log)
        except TetherError:
            if not st.get("local_port"):
                raise
            tunnel = open_tunnel(head.unshared(), st["remote_port"], log=log)  # the old port is taken: use a new one
        st.update(tunnel_pid=tunnel.pid, local_port=tunnel.local_port)
        save_state(spec.name, st)

    def handle(self, spec: ClusterSpec) -> ClusterHandle | None:
        """The handle of a running cluster (reconnecting the tunnel if needed), or None."""
        if self.status(spec) != "up":
            return None
        st = load_state(spec.name)
        return self._handle(spec, st) if st else None

    def nodes(self, spec: ClusterSpec, handle: ClusterHandle) -> list[Node]:
        """Every host as a :class:`~tether.compute.nodes.Node`; the non-head ones reached through the head."""
        return ssh_nodes(spec.name, [t.unshared() for t in self.targets(spec)], handle.endpoint, handle.token)

    def status(self, spec: ClusterSpec) -> ClusterStatus:
        """``up`` when the head's daemon answers (the tunnel is reopened on its old port if it dropped),
        ``stopped`` when the hosts are there without a daemon, ``down`` when the cluster is unknown.
        Raises :class:`ClusterUnavailable` when the head cannot be reached at all."""
        st = load_state(spec.name)
        if not st or not st.get("remote_port"):
            return "down"
        endpoint = f"http://127.0.0.1:{st.get('local_port')}"
        if tunnel_alive(st.get("tunnel_pid"), st.get("local_port")) and probe_health(endpoint, token=st.get("token")) is not None:
            return "up"
        head = self.targets(spec)[0]
        rdir = st.get("remote_dirs", {}).get(head.host, f"$HOME/{REMOTE_DIR}")
        out = head.run(f"kill -0 $(cat {rdir}/supervisor.pid 2>/dev/null) 2>/dev/null && echo up || echo stopped",
                       step="status")  # fmt: skip
        if out.strip() != "up":
            return "stopped"
        old_port = st.get("local_port")
        self._ensure_tunnel(spec, st, head)
        same = st.get("local_port") == old_port
        return (
            "up" if same and probe_health(f"http://127.0.0.1:{st['local_port']}", token=st.get("token")) is not None else "stopped"
        )

    def stop(self, spec: ClusterSpec) -> None:
        """Stop the daemons (installs stay) and close the tunnel."""
        st = load_state(spec.name) or {}
        close_tunnel(st.get("tunnel_pid"))
        close_node_tunnels(st)
        errors = self._each_host(spec, st, lambda t, rdir: stop_daemon(t, rdir))
        self._close_connections(spec)
        if st:
            st["tunnel_pid"], st["local_port"] = None, None
            save_state(spec.name, st)
        if errors:
            raise errors[0]

    def down(self, spec: ClusterSpec) -> None:
        """Stop the daemons, remove their state and synced code on the hosts, forget the cluster locally."""
        st = load_state(spec.name) or {}
        close_tunnel(st.get("tunnel_pid"))
        close_node_tunnels(st)

        def clean(t: SSHTarget, rdir: str) -> None:
            stop_daemon(t, rdir, step="down")
            t.run(
                f"rm -rf {rdir}/state {rdir}/token {rdir}/daemon.key {rdir}/daemon.log {rdir}/code",
                step="down",
            )

        errors = self._each_host(spec, st, clean)
        self._close_connections(spec)
        state_path(spec.name).unlink(missing_ok=True)
        if errors:
            raise errors[0]

    def sync_code(self, spec: ClusterSpec, handle: ClusterHandle, root: Path) -> str:
        """rsync ``root`` to every host (unchanged files are skipped); return its path on the head."""
        st = load_state(spec.name) or {}
        root = Path(root).resolve()
        sub = f"code/{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
        excludes = [f"--exclude={e}" for e in _SYNC_EXCLUDES]
        paths = []
        console = Console(stderr=True, quiet=not self.show_progress)
        for t in self.targets(spec):
            with console.status(f"syncing {root} to {t.host}"):
                rdir = st.get("remote_dirs", {}).get(t.host)
                if rdir is None:
                    home = t.run("echo $HOME", step="sync code").strip()
                    rdir = f"{home}/{REMOTE_DIR}"
                t.rsync([f"{root}/"], f"{rdir}/{sub}/", step="sync code", extra=["--delete", *excludes])
            paths.append(f"{rdir}/{sub}")
        return paths[0]

    def _close_connections(self, spec: ClusterSpec) -> None:
        """Close the hosts' shared SSH connections (they would otherwise linger ``ControlPersist`` seconds)."""
        if spec.host:
            for t in self.targets(spec):
                t.close()

    def _each_host(self, spec: ClusterSpec, st: dict[str, Any], fn: Any) -> list[TetherError]:
        errors: list[TetherError] = []
        for t in self.targets(spec):
            rdir = st.get("remote_dirs", {}).get(t.host) or f"$HOME/{REMOTE_DIR}"
            try:
                fn(t, shlex.quote(rdir) if not rdir.startswith("$HOME") else rdir)
            except TetherError as exc:
                errors.append(exc)
        return errors
