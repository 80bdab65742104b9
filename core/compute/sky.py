"""The ``sky`` backend: clusters on any cloud (or Kubernetes / SSH node pools) through SkyPilot's Python API.

Provisioning, failover inside SkyPilot, autostop and teardown are SkyPilot's (``sky.launch`` / ``stop`` /
``down`` / ``status`` with ``idle_minutes_to_autostop``). tether picks the candidates with
:mod:`tether.routing`, pins each attempt to one cloud/region/instance type so the choice and every failure are
recorded in the plan, installs the local tether wheel in the task's setup and runs the daemon as the task.
The client reaches the daemon through an ssh tunnel to the head (SkyPilot writes an ssh alias per cluster).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any, ClassVar

from tether.client.health import probe_health
from tether.compute import routing
from tether.compute.base import ClusterHandle, ClusterStatus
from tether.compute.bootstrap import DEFAULT_PORT, SSHTarget, build_wheel
from tether.compute.state import claim_name, load_state, save_state, state_path
from tether.compute.tunnel import close_tunnel, open_tunnel, tunnel_alive
from tether.errors import AuthError, CapacityError, ClusterUnavailable, ConfigError, QuotaError, TetherError
from tether.home import clusters_dir, file_lock
from tether.specs import ClusterSpec

__all__ = ["SkyBackend", "build_task", "translate_error"]

REMOTE_WHEELS = "~/.tether/wheels"
REMOTE_DIR = "~/.tether/daemon"
_QUOTA_WORDS = ("quota", "limitexceeded", "vcpulimitexceeded", "insufficient quota")


def _sky() -> Any:
    try:
        import sky
    except ImportError as exc:
        raise ConfigError("the sky backend needs SkyPilot", hint="pip install 'tether[sky]'") from exc
    return sky


def translate_error(exc: BaseException, where: str) -> TetherError | None:
    """Map a SkyPilot exception onto tether's error tree (None when it is not a launch failure we know)."""
    from sky import exceptions as sx

    msg = f"{where}: {exc}"
    details = {"candidate": where, "sky_error": type(exc).__name__}
    if isinstance(exc, sx.ResourcesUnavailableError):
        if any(w in str(exc).lower() for w in _QUOTA_WORDS):
            return QuotaError(
                msg, hint="request a quota increase or use another region/cloud", details=details
            )
        return CapacityError(msg, hint="another region or cloud may have capacity", details=details)
    auth_types = tuple(
        t for t in (getattr(sx, n, None) for n in ("CloudUserIdentityError", "NoCloudAccessError",
                                                  "InvalidCloudCredentials", "InvalidCloudConfigs"))
        if isinstance(t, type)
    )  # fmt: skip
    if isinstance(exc, auth_types):
        return AuthError(msg, hint="check this cloud's credentials (`sky check`)", details=details)
    return None


def build_task(spec: ClusterSpec, cand: routing.Candidate, *, wheel: Path, token: str | None) -> Any:
    """The SkyPilot task for one candidate: ship the wheel, install it in setup, run the daemon."""
    sky = _sky()
    port = spec.server_port or DEFAULT_PORT
    accelerators = {cand.accelerator: cand.accelerator_count} if cand.accelerator else None
    if cand.priced:
        resources = sky.Resources(infra=cand.infra, instance_type=cand.instance_type, accelerators=accelerators,
                                  use_spot=cand.use_spot)  # fmt: skip
    else:  # Kubernetes / SSH node pool: SkyPilot fits the request onto a node
        resources = sky.Resources(infra=cand.infra, accelerators=accelerators,
                                  cpus=f"{cand.vcpus:g}+" if cand.vcpus else None,
                                  memory=f"{cand.memory_gib:g}+" if cand.memory_gib else None)  # fmt: skip
    setup = (
        f"set -e; mkdir -p {REMOTE_DIR}; test -x ~/.tether/venv/bin/python || python3 -m venv ~/.tether/venv; "
        f"~/.tether/venv/bin/pip install -q --disable-pip-version-check {REMOTE_WHEELS}/{wheel.name}"
    )
    daemon = (f"~/.tether/venv/bin/python -m tether.daemon --host 127.0.0.1 --port {port} "
              f"--state-dir {REMOTE_DIR}/state --ready-file {REMOTE_DIR}/ready.json")  # fmt: skip
    if token:
        daemon += f" --token-file {REMOTE_DIR}/token"
    if spec.autostop_mins is not None:
        # the daemon knows about calls; it exits when idle, which makes the cluster idle for SkyPilot's autostop
        daemon += f" --autostop-mins {spec.autostop_mins}"
    run = (f'umask 077; printf %s "$TETHER_TOKEN" > {REMOTE_DIR}/token; ' if token else "") + f"exec {daemon}"
    task = sky.Task(name=f"tether-{spec.name}", setup=setup, run=run,
                    secrets={"TETHER_TOKEN": token} if token else None,
                    file_mounts={f"{REMOTE_WHEELS}/{wheel.name}": str(wheel)})  # fmt: skip
    task.set_resources(resources)
    return task


class SkyBackend:
    """Clusters launched by SkyPilot, one candidate (cloud/region/type) at a time in the routing plan's order."""

    name: ClassVar[str] = "sky"

    def launch(self, spec: ClusterSpec, *, plan: routing.Plan | None = None) -> routing.Plan:
        """Launch the first candidate that SkyPilot can provision; the returned plan records every attempt."""
        sky = _sky()
        the_plan = plan or routing.plan(spec)
        st = load_state(spec.name) or {}
        token = st.get("token") or (secrets.token_urlsafe(32) if spec.auth else None)
        wheel = build_wheel()

        def attempt(cand: routing.Candidate) -> Any:
            task = build_task(spec, cand, wheel=wheel, token=token)
            try:
                request = sky.launch(task, cluster_name=spec.name, retry_until_up=False,
                                     idle_minutes_to_autostop=spec.autostop_mins)  # fmt: skip
                return sky.stream_and_get(request)
            except Exception as exc:  # noqa: BLE001 - SkyPilot errors are translated, the rest propagate
                mapped = translate_error(exc, cand.label())
                if mapped is None:
                    raise
                raise mapped from exc

        if not the_plan.candidates:
            raise ClusterUnavailable(f"no catalog offering matches {the_plan.request}", details={"plan": str(the_plan)},
                                     hint="relax the filters; see cluster.plan()")  # fmt: skip
        routing.run_plan(the_plan, attempt)
        chosen = the_plan.chosen
        assert chosen is not None
        save_state(spec.name, {"backend": "sky", "spec": spec.model_dump(mode="json"), "token": token, "cloud": chosen.cloud, "region": chosen.region,
                          "instance_type": chosen.instance_type, "price_per_hour": chosen.price_per_hour,
                          "candidate": chosen.model_dump(),
                          "attempts": [a.model_dump() for a in the_plan.attempts]})  # fmt: skip
        return the_plan

    def restart(self, spec: ClusterSpec) -> None:
        """Start a stopped cluster where it was (``sky.start``) and run the daemon on it again (``sky.exec``)."""
        sky = _sky()
        st = load_state(spec.name) or {}
        if "candidate" not in st:
            raise ClusterUnavailable(f"no record of where sky cluster {spec.name!r} was launched",
                                     hint="tear it down and launch again")  # fmt: skip
        cand = routing.Candidate.model_validate(st["candidate"])
        try:
            sky.stream_and_get(sky.start(spec.name, idle_minutes_to_autostop=spec.autostop_mins))
        except Exception as exc:  # noqa: BLE001 - SkyPilot errors are translated, the rest propagate
            mapped = translate_error(exc, cand.label())
            if mapped is None:
                raise
            raise mapped from exc
        task = build_task(spec, cand, wheel=build_wheel(), token=st.get("token"))
        task.setup = None  # installed at launch; the disk survived the stop
        sky.stream_and_get(sky.exec(task, cluster_name=spec.name))
        st.update(tunnel_pid=None, local_port=None)
        save_state(spec.name, st)

    def _connect(self, spec: ClusterSpec, st: dict[str, Any]) -> ClusterHandle:
        head = SSHTarget(host=spec.name, connect_timeout=15)  # the ssh alias SkyPilot writes for the cluster
        port = spec.server_port or DEFAULT_PORT
        if not tunnel_alive(st.get("tunnel_pid"), st.get("local_port")):
            close_tunnel(st.get("tunnel_pid"))
            log = state_path(spec.name).with_suffix(".tunnel.log")
            tunnel = open_tunnel(head, port, log=log)
            st.update(tunnel_pid=tunnel.pid, local_port=tunnel.local_port)
            save_state(spec.name, st)
        handle = ClusterHandle(endpoint=f"http://127.0.0.1:{st['local_port']}", token=st.get("token"),
                               hosts=[spec.name], instance_type=st.get("instance_type"), cloud=st.get("cloud"),
                               region=st.get("region"), price_per_hour=st.get("price_per_hour"))  # fmt: skip
        if probe_health(handle.endpoint, token=handle.token, timeout=30) is None:
            raise ClusterUnavailable(f"daemon on sky cluster {spec.name!r} does not answer /health",
                                     details={"step": "health", "host": spec.name})  # fmt: skip
        return handle

    # -- Backend protocol ---------------------------------------------------------------------------------

    def up(self, spec: ClusterSpec) -> ClusterHandle:
        """Launch (or restart) the cluster unless it is up, then tunnel to its daemon (one caller at a time)."""
        with file_lock(clusters_dir() / f"{spec.name}.lock"):
            claim_name(spec.name, "sky")
            status = self.status(spec)
            if status == "stopped" and "candidate" in (load_state(spec.name) or {}):
                self.restart(spec)
            elif status != "up" or not load_state(spec.name):
                self.launch(spec)
            return self._connect(spec, load_state(spec.name) or {})

    def handle(self, spec: ClusterSpec) -> ClusterHandle | None:
        """The handle of a cluster that is already up (tunnel reopened if needed), or None."""
        st = load_state(spec.name)
        if not st or self.status(spec) != "up":
            return None
        return self._connect(spec, st)

    def status(self, spec: ClusterSpec) -> ClusterStatus:
        sky = _sky()
        records = sky.get(sky.status([spec.name]))
        if not records:
            return "down"
        rec = records[0]
        value = getattr(rec, "status", None) if not isinstance(rec, dict) else rec.get("status")
        name = getattr(value, "value", value)
        return (
            "up"
            if name == "UP"
            else "stopped"
            if name == "STOPPED"
            else "down"
            if name is None
            else "stopped"
        )

    def stop(self, spec: ClusterSpec) -> None:
        sky = _sky()
        st = load_state(spec.name) or {}
        close_tunnel(st.get("tunnel_pid"))
        sky.get(sky.stop(spec.name))
        if st:
            st.update(tunnel_pid=None, local_port=None)
            save_state(spec.name, st)

    def down(self, spec: ClusterSpec) -> None:
        sky = _sky()
        st = load_state(spec.name) or {}
        close_tunnel(st.get("tunnel_pid"))
        sky.get(sky.down(spec.name))
        state_path(spec.name).unlink(missing_ok=True)

    def autostop(self, spec: ClusterSpec, idle_minutes: int, *, down: bool = False) -> None:
        """Change SkyPilot's autostop of a running cluster (``-1`` cancels it)."""
        sky = _sky()
        sky.get(sky.autostop(spec.name, idle_minutes, down=down))

    def sync_code(self, spec: ClusterSpec, handle: ClusterHandle, root: Path) -> str:
        """rsync ``root`` to the head over SkyPilot's ssh alias; return its path there."""

        root = Path(root).resolve()
        head = SSHTarget(host=spec.name, connect_timeout=15)
        home = head.run("echo $HOME", step="sync code").strip()
        dest = f"{home}/.tether/code/{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
        head.rsync([f"{root}/"], f"{dest}/", step="sync code",
                   extra=["--delete", "--exclude=.git", "--exclude=__pycache__", "--exclude=.venv*"])  # fmt: skip
        return dest
