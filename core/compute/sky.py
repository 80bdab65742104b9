"""The ``sky`` backend: clusters on any cloud (or Kubernetes / SSH node pools) through SkyPilot's Python API.

Provisioning, failover inside SkyPilot, autostop and teardown are SkyPilot's (``sky.launch`` / ``stop`` /
``down`` / ``status``). tether picks the candidates with :mod:`tether.routing`, pins each attempt to one
cloud/region/instance type so the choice and every failure are recorded in the plan, installs the local tether
wheel in the task's setup and runs the daemon as the task.

What SkyPilot really does, and how this module meets it:

- Its images run Python 3.10; the node's venv is made by the ``uv`` SkyPilot installs on every node
  (``~/.local/bin/uv``) with this client's Python version (cloudpickle needs the same one on both sides).
- Whatever fails during a launch (setup, a Ctrl-C, an unmapped error) tears the new cluster down, or when that
  fails too, leaves a state file so ``teardown()`` finds it: never an orphaned billing cluster.
- ``stream_and_get(launch)`` returns once the daemon's job is *submitted*: ``/health`` is retried with backoff.
- ``ResourcesUnavailableError`` carries the real causes in ``failover_history``; they decide the error
  (credentials: ``AuthError``; bad names and unsupported features: ``ConfigError``, no failover).
- One idle clock: the daemon's (``--autostop-mins``). SkyPilot stops (or, where stopping is not supported —
  Kubernetes, SSH node pools, Lambda, spot — tears down) the cluster a minute after the daemon's job ends,
  counting jobs only (the tunnel is an ssh session; it must not keep the cluster up).
- The client reaches the head over an ssh config tether writes from ``sky.status(_include_credentials=True)``
  (the API server may run elsewhere, where SkyPilot's own alias lives), never forcing port 22.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from tether.client import DaemonClient
from tether.client.health import probe_health
from tether.compute import routing
from tether.compute.base import ClusterHandle, ClusterStatus
from tether.compute.bootstrap import DEFAULT_PORT, SSHTarget, build_wheel, wheel_fingerprint
from tether.compute.nodes import Node, ssh_nodes, via_head
from tether.compute.setup import file_mounts, setup_script
from tether.compute.state import claim_name, load_state, save_state, state_path, write_private
from tether.compute.tunnel import close_tunnel, open_tunnel, tunnel_alive
from tether.errors import (
    AuthError,
    CapacityError,
    ClusterUnavailable,
    ConfigError,
    QuotaError,
    TetherError,
)
from tether.home import clusters_dir, file_lock
from tether.specs import ClusterSpec

__all__ = ["SkyBackend", "build_task", "daemon_command", "setup_command", "translate_error"]

REMOTE_HOME = "$HOME/.tether"
REMOTE_WHEELS = "~/.tether/wheels"
REMOTE_DIR = f"{REMOTE_HOME}/daemon"
#: minutes SkyPilot waits after the daemon's job ended (the daemon itself counted the idle time)
SKY_IDLE_GRACE_MINS = 1
#: clouds (SkyPilot names) that cannot stop a cluster; autostop there must be autodown
_NO_STOP_CLOUDS = frozenset({"kubernetes", "ssh", "lambda", "runpod", "fluidstack", "vast", "hyperbolic", "slurm"})
#: ``sky.optimizer``'s message for a pinned cloud/infra that ``sky check`` did not enable
_NOT_ENABLED_RE = re.compile(r"which (is|are) not enabled\. To enable access", re.I)
_QUOTA_WORDS = ("quota", "limitexceeded", "vcpulimitexceeded", "insufficient quota")
_AUTH_ERRORS = ("CloudUserIdentityError", "NoCloudAccessError", "InvalidCloudCredentials", "InvalidCloudConfigs",
                "ClusterOwnerIdentityMismatchError")  # fmt: skip
_CONFIG_ERRORS = ("InvalidClusterNameError", "NotSupportedError", "ProvisionUnsupportedError",
                  "ResourcesMismatchError")  # fmt: skip


def _sky() -> Any:
    try:
        import sky
    except ImportError as exc:
        raise ConfigError("the sky backend needs SkyPilot", hint="pip install 'tether[sky]'") from exc
    return sky


def _types(names: tuple[str, ...]) -> tuple[type, ...]:
    from sky import exceptions as sx

    return tuple(t for t in (getattr(sx, n, None) for n in names) if isinstance(t, type))


def _causes(exc: BaseException) -> list[BaseException]:
    """What really went wrong: a ``ResourcesUnavailableError``'s ``failover_history``, else the error itself."""
    history = [e for e in getattr(exc, "failover_history", None) or [] if isinstance(e, BaseException)]
    return history or [exc]


def translate_error(exc: BaseException, where: str) -> TetherError | None:
    """Map a SkyPilot exception onto tether's error tree (None when it is not a launch failure we know).

    The causes in ``failover_history`` decide: a name SkyPilot rejects or a feature the cloud lacks is a
    ``ConfigError`` (no other region fixes it), credentials an ``AuthError`` (skip that cloud), and only real
    capacity/quota shortages are ``CapacityError``/``QuotaError`` (try the next candidate)."""
    from sky import exceptions as sx

    causes = _causes(exc)
    kinds = [type(c).__name__ for c in causes]
    msg = f"{where}: {causes[-1] if len(causes) == 1 else exc}"
    details: dict[str, Any] = {"candidate": where, "sky_error": type(exc).__name__, "causes": kinds}
    config = next((c for c in causes if isinstance(c, _types(_CONFIG_ERRORS))), None)
    if config is not None:
        return ConfigError(f"{where}: SkyPilot refused the request: {config}", details=details,
                           hint="change the cluster spec (name, features) — no other region or cloud would help")  # fmt: skip
    auth = next((c for c in causes if isinstance(c, _types(_AUTH_ERRORS))), None)
    if auth is None and isinstance(exc, sx.ResourcesUnavailableError) and _NOT_ENABLED_RE.search(str(exc)):
        auth = exc  # the optimizer's answer for a cloud `sky check` did not enable (no credentials): no history
    if auth is not None:
        return AuthError(f"{where}: {auth}", hint="check this cloud's credentials (`sky check`)", details=details)
    if isinstance(exc, sx.ResourcesUnavailableError) or any(isinstance(c, sx.ResourcesUnavailableError) for c in causes):
        text = " ".join(str(c) for c in [exc, *causes]).lower()
        if any(w in text for w in _QUOTA_WORDS):
            return QuotaError(msg, hint="request a quota increase or use another region/cloud", details=details)
        return CapacityError(msg, hint="another region or cloud may have capacity", details=details)
    if isinstance(exc, sx.CommandError):
        return ClusterUnavailable(f"{where}: a command on the new cluster failed (exit {exc.returncode}): "
                                  f"{exc.error_msg}\n{(exc.detailed_reason or '')[-2000:]}", retryable=False,
                                  details={**details, "step": "setup"},
                                  hint="the node's setup failed; see the output above (`sky logs` on the cluster)")  # fmt: skip
    return None


def can_stop(cand: routing.Candidate) -> bool:
    """Whether SkyPilot can stop (not only tear down) a cluster on this candidate."""
    return cand.cloud not in _NO_STOP_CLOUDS and not cand.use_spot


def node_python() -> str:
    """The Python version of the node's venv: this client's (by-value pickles need the same one)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def remote_wheel(wheel: Path) -> str:
    """Where the wheel lands on the node: a folder per content, so a changed tree is a new path."""
    return f"{REMOTE_WHEELS}/{wheel_fingerprint(wheel)}/{wheel.name}"


def setup_command(wheel: Path) -> str:
    """The task's setup: a venv of ``node_python()`` made by uv (SkyPilot's, else installed), the wheel in it
    (reinstalled whenever its content changed, whatever its file name)."""
    fp = wheel_fingerprint(wheel)
    major, minor = sys.version_info[:2]
    venv = f"{REMOTE_HOME}/venv"
    return (
        f"set -e; mkdir -p {REMOTE_DIR}; "
        'UV="$HOME/.local/bin/uv"; [ -x "$UV" ] || UV="$(command -v uv || true)"; '
        'if [ -z "$UV" ]; then curl -LsSf https://astral.sh/uv/install.sh | '
        'env UV_INSTALL_DIR="$HOME/.local/bin" INSTALLER_NO_MODIFY_PATH=1 sh >/dev/null; UV="$HOME/.local/bin/uv"; fi; '
        f'"{venv}/bin/python" -c "import sys; sys.exit(sys.version_info[:2] != ({major}, {minor}))" 2>/dev/null || '
        f'{{ rm -rf "{venv}"; env -u VIRTUAL_ENV "$UV" venv -q --python {node_python()} "{venv}"; }}; '
        f'if [ "$(cat {REMOTE_HOME}/installed 2>/dev/null)" != {fp} ]; then '
        f'env -u VIRTUAL_ENV -u PYTHONPATH "$UV" pip install -q --python "{venv}/bin/python" --reinstall-package tether '
        f'{remote_wheel(wheel).replace("~", "$HOME", 1)}; echo {fp} > {REMOTE_HOME}/installed; fi'
    )


def daemon_command(spec: ClusterSpec, *, token: bool) -> str:
    """The task's run: the daemon, in the foreground (the job lives as long as it does)."""
    port = spec.server_port or DEFAULT_PORT
    cmd = (f"{REMOTE_HOME}/venv/bin/python -m tether.daemon --host 127.0.0.1 --port {port} "
           f"--state-dir {REMOTE_DIR}/state --ready-file {REMOTE_DIR}/ready.json")  # fmt: skip
    if token:
        cmd += f" --token-file {REMOTE_DIR}/token"
    if spec.autostop_mins is not None:
        # the one idle clock: the daemon knows about calls and exits when idle; SkyPilot then stops the cluster
        cmd += f" --autostop-mins {spec.autostop_mins:g}"
    prelude = f"mkdir -p {REMOTE_DIR}; cd {REMOTE_DIR}; umask 077; [ -f image.env ] && . ./image.env; "
    if token:
        prelude += 'printf %s "$TETHER_TOKEN" > token; '
    # a daemon left from an earlier job would hold the port: stop it; then log beside the job's own output
    prelude += ('p=$(cat daemon.pid 2>/dev/null); [ -n "$p" ] && grep -qs tether.daemon /proc/"$p"/cmdline && '
                'kill "$p" && sleep 1; rm -f ready.json; '
                "echo $$ > daemon.pid; exec > >(tee -a daemon.log) 2>&1; ")  # fmt: skip
    return prelude + f"exec {cmd}"


def build_task(spec: ClusterSpec, cand: routing.Candidate, *, wheel: Path | None, token: str | None) -> Any:
    """The SkyPilot task for one candidate: ship the wheel, install it in setup, run the daemon (no wheel: the
    daemon only, for ``sky.exec`` on a cluster that has it installed)."""
    sky = _sky()
    accelerators = {cand.accelerator: cand.accelerator_count} if cand.accelerator else None
    extra: dict[str, Any] = {}
    if spec.disk_size is not None:
        extra["disk_size"] = spec.disk_size
    docker = spec.image.docker if spec.image is not None else None
    if spec.image_id is not None or docker:  # a tether.Image's docker image is SkyPilot's image_id
        extra["image_id"] = spec.image_id or f"docker:{docker}"
    if spec.ports:
        extra["ports"] = [str(p) for p in spec.ports]
    if spec.kubernetes_namespace and cand.cloud == "kubernetes":  # SkyPilot resolves the pods' namespace from these
        extra["_cluster_config_overrides"] = {"kubernetes": {"namespace": spec.kubernetes_namespace}}
    if cand.priced:
        resources = sky.Resources(infra=cand.infra, instance_type=cand.instance_type, accelerators=accelerators,
                                  use_spot=cand.use_spot, **extra)  # fmt: skip
    else:  # Kubernetes / SSH node pool: SkyPilot fits the request onto a node
        resources = sky.Resources(infra=cand.infra, accelerators=accelerators,
                                  cpus=f"{cand.vcpus:g}+" if cand.vcpus else None,
                                  memory=f"{cand.memory_gib:g}+" if cand.memory_gib else None, **extra)  # fmt: skip
    setup = setup_command(wheel) if wheel else None
    if setup and spec.image is not None:  # the image's steps run at launch, after tether's install
        setup += "\n" + setup_script(spec.image, daemon_dir=REMOTE_DIR, python=f"{REMOTE_HOME}/venv/bin/python")
    mounts = {remote_wheel(wheel): str(wheel), **file_mounts(spec.image)} if wheel else None
    task = sky.Task(name=f"tether-{spec.name}", setup=setup, run=daemon_command(spec, token=bool(token)),
                    secrets={"TETHER_TOKEN": token} if token else None, file_mounts=mounts)  # fmt: skip
    task.num_nodes = spec.num_nodes  # SkyPilot runs setup and the daemon on every node
    task.set_resources(_in_zones(spec, cand, resources))
    return task


def _in_zones(spec: ClusterSpec, cand: routing.Candidate, resources: Any) -> Any:
    """``resources`` as it is, or one copy per allowed zone of the candidate's region (SkyPilot's ``any_of``).
    No allowed zone in that region: a ``CapacityError``, so routing tries the next candidate."""
    if not spec.zones:
        return resources
    zones = [z for z in spec.zones if cand.region == "*" or z.startswith(cand.region) or z.isdigit()]
    if not zones:
        raise CapacityError(f"none of the zones {spec.zones} is in {cand.label()}",
                            details={"zones": spec.zones, "region": cand.region})  # fmt: skip
    return {resources.copy(zone=z) for z in zones}


def _health_timeout() -> float:
    return float(os.environ.get("TETHER_SKY_HEALTH_TIMEOUT", "300"))


class SkyBackend:
    """Clusters launched by SkyPilot, one candidate (cloud/region/type) at a time in the routing plan's order."""

    name: ClassVar[str] = "sky"

    # -- SkyPilot calls -----------------------------------------------------------------------------------

    def _record(self, name: str, *, credentials: bool = False, refresh: bool = True) -> Any | None:
        """SkyPilot's record of the cluster, its status asked of the cloud (autostop, preemption: SkyPilot's own
        table is refreshed only every 60 s), or None."""
        sky = _sky()
        from sky.utils import common

        mode = common.StatusRefreshMode.FORCE if refresh else common.StatusRefreshMode.NONE
        records = sky.stream_and_get(sky.status([name], refresh=mode, _include_credentials=credentials))
        for rec in records or []:
            if _field(rec, "name") == name:
                return rec
        return None

    def _autostop_args(self, spec: ClusterSpec, cand: routing.Candidate) -> dict[str, Any]:
        if spec.autostop_mins is None:
            return {"idle_minutes_to_autostop": None}
        from sky.skylet import autostop_lib

        return {"idle_minutes_to_autostop": SKY_IDLE_GRACE_MINS, "wait_for": autostop_lib.AutostopWaitFor.JOBS,
                "down": not can_stop(cand)}  # fmt: skip

    def _sky_launch(self, spec: ClusterSpec, cand: routing.Candidate, task: Any) -> Any:
        """One ``sky.launch`` of ``task`` on ``cand``; an autostop the cloud rejects becomes an autodown."""
        sky = _sky()
        from sky import exceptions as sx

        args = self._autostop_args(spec, cand)
        try:
            return sky.stream_and_get(sky.launch(task, cluster_name=spec.name, retry_until_up=False, **args))
        except sx.ResourcesUnavailableError as exc:
            stop_refused = any(isinstance(c, sx.NotSupportedError) and "stop" in str(c).lower() for c in _causes(exc))
            if not stop_refused or args.get("down") or args["idle_minutes_to_autostop"] is None:
                raise
            args["down"] = True  # e.g. a Kubernetes context or pool tether did not know cannot stop
            return sky.stream_and_get(sky.launch(task, cluster_name=spec.name, retry_until_up=False, **args))

    def _cancel_jobs(self, name: str) -> None:
        """Cancel the cluster's jobs (a hung daemon's holds the node's GPUs; a new job would wait behind it)."""
        sky = _sky()
        with contextlib.suppress(Exception):  # best effort: the next job reports what is wrong
            sky.stream_and_get(sky.cancel(name, all=True))

    def _discard(self, spec: ClusterSpec, cand: routing.Candidate, *, existed: bool, why: str) -> None:
        """After a failed launch: tear a new cluster down (stop one that existed before, where it can); when
        SkyPilot refuses, keep a state file so ``teardown()`` still finds the cluster."""
        sky = _sky()
        from sky import exceptions as sx

        try:
            if existed and can_stop(cand):
                sky.stream_and_get(sky.stop(spec.name))
            else:
                sky.stream_and_get(sky.down(spec.name))
        except sx.ClusterDoesNotExist:
            return
        except Exception as exc:  # noqa: BLE001 - recorded, so nothing is left billing unseen
            st = load_state(spec.name) or {"backend": "sky", "spec": spec.model_dump(mode="json")}
            st.update(launch_failed=why, cleanup_failed=f"{type(exc).__name__}: {exc}")
            save_state(spec.name, st)

    # -- launch / restart ---------------------------------------------------------------------------------

    def launch(self, spec: ClusterSpec, *, plan: routing.Plan | None = None) -> routing.Plan:
        """Launch the first candidate that SkyPilot can provision; the returned plan records every attempt."""
        the_plan = plan or routing.plan(spec)
        st = load_state(spec.name) or {}
        token = st.get("token") or (secrets.token_urlsafe(32) if spec.auth else None)
        wheel = build_wheel()
        existing = self._record(spec.name)
        if existing is not None and _status_name(existing) in ("UP", "INIT"):
            self._cancel_jobs(spec.name)  # a daemon of an earlier launch (state lost) still holds the port

        def attempt(cand: routing.Candidate) -> Any:
            task = build_task(spec, cand, wheel=wheel, token=token)
            # recorded before SkyPilot starts anything: an interrupted launch is still found by teardown()
            save_state(spec.name, {**st, "backend": "sky", "spec": spec.model_dump(mode="json"), "token": token,
                                   "launching": cand.label()})  # fmt: skip
            try:
                return self._sky_launch(spec, cand, task)
            except BaseException as exc:
                mapped = translate_error(exc, cand.label()) if isinstance(exc, Exception) else None
                if _may_have_left_a_cluster(mapped):
                    self._discard(spec, cand, existed=existing is not None, why=f"{type(exc).__name__}: {exc}")
                if mapped is None:
                    raise
                raise mapped from exc

        if not the_plan.candidates:
            raise ClusterUnavailable(f"no catalog offering matches {the_plan.request}", details={"plan": str(the_plan)},
                                     hint="relax the filters; see cluster.plan()")  # fmt: skip
        try:
            routing.run_plan(the_plan, attempt)
        except BaseException:
            cur = load_state(spec.name) or {}
            if "cleanup_failed" not in cur and "candidate" not in st:
                state_path(spec.name).unlink(missing_ok=True)  # nothing left on the cloud, nothing to remember
            elif "candidate" in st and "cleanup_failed" not in cur:
                save_state(spec.name, st)
            raise
        chosen = the_plan.chosen
        assert chosen is not None
        save_state(spec.name, {"backend": "sky", "spec": spec.model_dump(mode="json"), "token": token, "cloud": chosen.cloud, "region": chosen.region,
                          "instance_type": chosen.instance_type, "price_per_hour": chosen.price_per_hour,
                          "candidate": chosen.model_dump(), "wheel": wheel_fingerprint(wheel),
                          "attempts": [a.model_dump() for a in the_plan.attempts]})  # fmt: skip
        return the_plan

    def restart(self, spec: ClusterSpec) -> None:
        """Start a stopped cluster where it was and run the daemon on it again: ``sky.launch`` on the stopped
        cluster (no failover for an existing one), which also ships and installs the current wheel."""
        st = load_state(spec.name) or {}
        if "candidate" not in st:
            raise ClusterUnavailable(f"no record of where sky cluster {spec.name!r} was launched",
                                     hint="tear it down and launch again")  # fmt: skip
        cand = routing.Candidate.model_validate(st["candidate"])
        wheel = build_wheel()
        task = build_task(spec, cand, wheel=wheel, token=st.get("token"))
        self._cancel_jobs(spec.name)  # a running daemon's job would keep the new one waiting (and hold the port)
        try:
            self._sky_launch(spec, cand, task)
        except Exception as exc:  # noqa: BLE001 - SkyPilot errors are translated, the rest propagate
            mapped = translate_error(exc, cand.label())
            if _may_have_left_a_cluster(mapped):
                self._discard(spec, cand, existed=True, why=f"{type(exc).__name__}: {exc}")
            if mapped is None:
                raise
            raise mapped from exc
        close_tunnel(st.get("tunnel_pid"))
        st.update(tunnel_pid=None, local_port=None, wheel=wheel_fingerprint(wheel))
        save_state(spec.name, st)

    def rerun_daemon(self, spec: ClusterSpec) -> None:
        """The cluster runs but its daemon does not answer: cancel its jobs and run the daemon again (``sky.exec``,
        the wheel installed at launch)."""
        sky = _sky()
        st = load_state(spec.name) or {}
        if "candidate" not in st:
            raise ClusterUnavailable(f"no record of where sky cluster {spec.name!r} was launched",
                                     hint="tear it down and launch again")  # fmt: skip
        cand = routing.Candidate.model_validate(st["candidate"])
        self._cancel_jobs(spec.name)
        task = build_task(spec, cand, wheel=None, token=st.get("token"))
        sky.stream_and_get(sky.exec(task, cluster_name=spec.name))

    # -- connecting -----------------------------------------------------------------------------------------

    def ssh_target(self, spec: ClusterSpec) -> SSHTarget:
        """How to reach the head: an ssh config tether writes from SkyPilot's credentials (the API server may be
        remote, so SkyPilot's own alias may not exist here); SkyPilot's alias where no credentials come back."""
        rec = self._record(spec.name, credentials=True, refresh=False)  # the status was just asked of the cloud
        creds = _field(rec, "credentials") if rec is not None else None
        handle = _field(rec, "handle") if rec is not None else None
        ips = getattr(handle, "cached_external_ips", None) if handle is not None else None
        if not creds or not ips:
            return SSHTarget(host=spec.name, port=None, connect_timeout=15)  # SkyPilot's alias: its own port
        cfg_dir = clusters_dir() / f"{spec.name}.ssh"
        cfg_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = creds.get("ssh_private_key")
        if creds.get("ssh_private_key_content"):
            write_private(cfg_dir / "key", str(creds["ssh_private_key_content"]).encode())
            key = str(cfg_dir / "key")
        ports = getattr(handle, "cached_external_ssh_ports", None) or [22]
        user = creds.get("ssh_user") or getattr(handle, "ssh_user", None)
        docker_user = getattr(handle, "docker_user", None) or creds.get("docker_user")
        alias = f"tether-sky-{spec.name}"
        host, port, proxy = ips[0], int(ports[0]), creds.get("ssh_proxy_command")
        ssh_opts = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes"
        if _is_kubernetes(handle):  # pods (and SSH node pools) are reached through the API server's websocket
            proxy = _kubernetes_proxy(spec.name, key, user)
            if proxy is None:
                return SSHTarget(host=spec.name, port=None, connect_timeout=15)
        elif docker_user:  # the container's sshd, reached through the VM (as SkyPilot's own alias does)
            inner = f" -o ProxyCommand={shlex.quote(proxy.replace('%h', host).replace('%p', str(port)))}" if proxy else ""
            key_opt = f"-i {shlex.quote(os.path.expanduser(key))} " if key else ""
            proxy = f"ssh {key_opt}{ssh_opts}{inner} -p {port} -W %h:%p {user}@{host}"
            host, port, user = "localhost", 10022, docker_user
        lines = [f"Host {alias}", f"  HostName {host}", f"  Port {port}", "  IdentitiesOnly yes",
                 "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  GlobalKnownHostsFile /dev/null"]  # fmt: skip
        if user:
            lines.append(f"  User {user}")
        if key:
            lines.append(f"  IdentityFile {os.path.expanduser(key)}")
        if proxy:
            lines.append(f"  ProxyCommand {proxy}")
        write_private(cfg_dir / "config", ("\n".join(lines) + "\n").encode())
        return SSHTarget(host=alias, port=None, known_hosts="/dev/null", connect_timeout=15,
                         config_file=str(cfg_dir / "config"))  # fmt: skip

    def _tunnel(self, spec: ClusterSpec, st: dict[str, Any], head: SSHTarget, *, fresh: bool = False) -> None:
        port = spec.server_port or DEFAULT_PORT
        if fresh or not tunnel_alive(st.get("tunnel_pid"), st.get("local_port")):
            close_tunnel(st.get("tunnel_pid"))
            log = state_path(spec.name).with_suffix(".tunnel.log")
            tunnel = open_tunnel(head, port, log=log)
            st.update(tunnel_pid=tunnel.pid, local_port=tunnel.local_port)
            save_state(spec.name, st)

    def _wait_healthy(self, spec: ClusterSpec, st: dict[str, Any], head: SSHTarget, timeout: float) -> bool:
        """``/health`` through the tunnel, retried with backoff until ``timeout`` (the daemon's job was only
        submitted when SkyPilot answered); the tunnel is reopened when it died meanwhile."""
        deadline = time.monotonic() + timeout
        delay = 0.25
        while True:
            self._tunnel(spec, st, head)
            left = deadline - time.monotonic()
            if probe_health(f"http://127.0.0.1:{st['local_port']}", token=st.get("token"),
                            timeout=max(1.0, min(10.0, left))) is not None:  # fmt: skip
                return True
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _daemon_running(self, head: SSHTarget) -> bool:
        """Whether the daemon's process runs on the head (it may still be starting), asked over ssh."""
        try:
            out = head.run(f'p=$(cat {REMOTE_DIR}/daemon.pid 2>/dev/null); [ -n "$p" ] && '
                           f'grep -qs tether.daemon /proc/"$p"/cmdline && echo running || echo gone',
                           step="daemon running", timeout=60)  # fmt: skip
        except TetherError:
            return True  # cannot tell: wait for /health as if it were starting
        return out.strip() == "running"

    def _connect(self, spec: ClusterSpec, st: dict[str, Any], *, rerun: bool = True,
                 started: bool = False) -> ClusterHandle:
        """Tunnel to the daemon and wait for its /health: long after a job was just submitted (``started``),
        else a short try, then a look at its process so a dead daemon is run again at once, not after minutes."""
        head = self.ssh_target(spec)
        wait = _health_timeout()
        healthy = self._wait_healthy(spec, st, head, wait if started else min(5.0, wait))
        if not healthy and not started and self._daemon_running(head):
            healthy = self._wait_healthy(spec, st, head, wait)  # it is starting (a relaunch by someone else)
        if not healthy:
            if not rerun:
                raise ClusterUnavailable(f"daemon on sky cluster {spec.name!r} does not answer /health",
                                         details={"step": "health", "host": spec.name})  # fmt: skip
            self.rerun_daemon(spec)  # a dead daemon on a running cluster: run it again, once
            st = load_state(spec.name) or st
            if not self._wait_healthy(spec, st, head, _health_timeout()):
                tail = ""
                with contextlib.suppress(TetherError):
                    tail = head.run(f"tail -n 40 {REMOTE_DIR}/daemon.log", step="daemon log", timeout=30)
                raise ClusterUnavailable(f"daemon on sky cluster {spec.name!r} does not answer /health, even "
                                         f"after running it again; its log:\n{tail}",
                                         details={"step": "health", "host": spec.name})  # fmt: skip
        return ClusterHandle(endpoint=f"http://127.0.0.1:{st['local_port']}", token=st.get("token"),
                             hosts=[spec.name], instance_type=st.get("instance_type"), cloud=st.get("cloud"),
                             region=st.get("region"), price_per_hour=st.get("price_per_hour"))  # fmt: skip

    # -- Backend protocol ---------------------------------------------------------------------------------

    def up(self, spec: ClusterSpec) -> ClusterHandle:
        """Launch (or restart) the cluster unless it is up, then tunnel to its daemon (one caller at a time)."""
        with file_lock(clusters_dir() / f"{spec.name}.lock"):
            claim_name(spec.name, "sky")
            status = self.status(spec)
            st = load_state(spec.name) or {}
            started = True
            if status == "stopped" and "candidate" in st:
                self.restart(spec)
            elif status != "up" or "candidate" not in st:
                self.launch(spec)
            elif (now := _current_wheel()) is not None and st.get("wheel") != now:
                self.restart(spec)  # tether changed here since the launch: ship and install the new wheel
            else:
                started = False
            handle = self._connect(spec, load_state(spec.name) or {}, started=started)
            self._record_node_ips(spec)
            return handle

    def handle(self, spec: ClusterSpec) -> ClusterHandle | None:
        """The handle of a cluster that is already up (tunnel reopened if needed), or None."""
        st = load_state(spec.name)
        if not st or self.status(spec) != "up":
            return None
        return self._connect(spec, st, rerun=False)

    def status(self, spec: ClusterSpec) -> ClusterStatus:
        rec = self._record(spec.name)
        if rec is None:
            return "down"
        name = _status_name(rec)
        return "up" if name == "UP" else "down" if name is None else "stopped"

    def stop(self, spec: ClusterSpec) -> None:
        sky = _sky()
        from sky import exceptions as sx

        st = load_state(spec.name) or {}
        close_tunnel(st.get("tunnel_pid"))
        try:
            sky.stream_and_get(sky.stop(spec.name))
        except sx.ClusterDoesNotExist:
            self._forget(spec.name)  # gone already (autodown, deleted in the console): nothing to stop
            return
        except sx.NotSupportedError as exc:
            raise ConfigError(f"sky cluster {spec.name!r} cannot be stopped: {exc}",
                              hint="tear it down instead (cluster.teardown())") from exc  # fmt: skip
        if st:
            st.update(tunnel_pid=None, local_port=None)
            save_state(spec.name, st)

    def down(self, spec: ClusterSpec) -> None:
        sky = _sky()
        from sky import exceptions as sx

        st = load_state(spec.name) or {}
        close_tunnel(st.get("tunnel_pid"))
        with contextlib.suppress(sx.ClusterDoesNotExist):  # gone already: only tether's record is left
            sky.stream_and_get(sky.down(spec.name))
        self._forget(spec.name)

    def _forget(self, name: str) -> None:
        state_path(name).unlink(missing_ok=True)
        for leftover in ("key", "config"):
            (clusters_dir() / f"{name}.ssh" / leftover).unlink(missing_ok=True)

    def autostop(self, spec: ClusterSpec, idle_minutes: float, *, down: bool = False) -> None:
        """Change a running cluster's autostop (``-1`` cancels it). One idle clock: the daemon's, changed through
        its ``POST /autostop``; SkyPilot stops the cluster a minute after the daemon's job ended (counting jobs
        only) or, where the cluster cannot stop (Kubernetes, SSH node pools, Lambda, spot), tears it down."""
        sky = _sky()
        from sky import exceptions as sx
        from sky.skylet import autostop_lib

        handle = self.handle(spec)
        if handle is None:
            raise ClusterUnavailable(f"sky cluster {spec.name!r} is not up", hint="cluster.up_if_not() first")
        DaemonClient(handle.endpoint, handle.token).sync.set_autostop(None if idle_minutes < 0 else idle_minutes)
        st = load_state(spec.name) or {}
        if "candidate" in st and not can_stop(routing.Candidate.model_validate(st["candidate"])):
            down = True
        idle = -1 if idle_minutes < 0 else SKY_IDLE_GRACE_MINS
        wait_for = autostop_lib.AutostopWaitFor.JOBS
        try:
            sky.stream_and_get(sky.autostop(spec.name, idle, wait_for=wait_for, down=down))
        except sx.NotSupportedError:
            if down or idle < 0:
                raise
            sky.stream_and_get(sky.autostop(spec.name, idle, wait_for=wait_for, down=True))

    def nodes(self, spec: ClusterSpec, handle: ClusterHandle) -> list[Node]:
        """Every node SkyPilot launched (its handle's internal/external IPs, recorded at connect), head first;
        the workers' daemons reached by tunnels carried through the head."""
        st = load_state(spec.name) or {}
        ips: list[list[str]] = st.get("node_ips") or []
        if len(ips) <= 1:
            return [Node(0, spec.name, ips[0][0] if ips else spec.name, handle.endpoint, handle.token)]
        head = self.ssh_target(spec)
        targets = [head, *(self._worker_target(spec, ip[0]) for ip in ips[1:])]
        return ssh_nodes(spec.name, targets, handle.endpoint, handle.token,
                         lambda i: via_head(spec.name, head, targets[i], ips[i][0], i),
                         addresses=[ip[0] for ip in ips], port=spec.server_port or DEFAULT_PORT)  # fmt: skip

    def _worker_target(self, spec: ClusterSpec, address: str) -> SSHTarget:
        """A worker node as the head reaches it (its internal IP), with the user and key of the head's entry."""
        cfg = clusters_dir() / f"{spec.name}.ssh" / "config"
        found = dict(line.strip().split(None, 1) for line in (cfg.read_text().splitlines() if cfg.exists() else [])
                     if line.strip().startswith(("User ", "IdentityFile ")))  # fmt: skip
        return SSHTarget(host=address, user=found.get("User"), key=found.get("IdentityFile"), port=22,
                         known_hosts="/dev/null", connect_timeout=15)  # fmt: skip

    def _record_node_ips(self, spec: ClusterSpec) -> None:
        rec = self._record(spec.name, credentials=True, refresh=False)  # as ssh_target asked, just before
        handle = _field(rec, "handle") if rec is not None else None
        pairs = getattr(handle, "stable_internal_external_ips", None) if handle is not None else None
        if pairs:
            st = load_state(spec.name) or {}
            st["node_ips"] = [[str(a), str(b)] for a, b in pairs]
            save_state(spec.name, st)

    def sync_code(self, spec: ClusterSpec, handle: ClusterHandle, root: Path) -> str:
        """rsync ``root`` to the head over ssh (and to every other node, through the head); return its path."""
        root = Path(root).resolve()
        head = self.ssh_target(spec)
        home = head.run("echo $HOME", step="sync code").strip()
        dest = f"{home}/.tether/code/{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
        excludes = ["--delete", "--exclude=.git", "--exclude=__pycache__", "--exclude=.venv*"]
        head.rsync([f"{root}/"], f"{dest}/", step="sync code", extra=excludes)
        ips: list[list[str]] = (load_state(spec.name) or {}).get("node_ips") or []
        for i, ip in enumerate(ips[1:], start=1):
            via_head(spec.name, head, self._worker_target(spec, ip[0]), ip[0], i).rsync(
                [f"{root}/"], f"{dest}/", step="sync code", extra=excludes)
        return dest


def _is_kubernetes(handle: Any) -> bool:
    from sky import clouds

    cloud = getattr(getattr(handle, "launched_resources", None), "cloud", None)
    return isinstance(cloud, clouds.Kubernetes)  # SSH node pools too (clouds.SSH is one)


def _kubernetes_proxy(name: str, key: str | None, user: str | None) -> str | None:
    """The ProxyCommand SkyPilot's CLI writes for a pod: ssh to the pod through the API server's websocket
    (``templates/websocket_proxy.py``), wherever that server runs; None when this SkyPilot has no such proxy."""
    try:
        from sky.server import common as server_common
        from sky.utils import directory_utils
    except ImportError:
        return None
    script = Path(directory_utils.get_sky_dir()) / "templates" / "websocket_proxy.py"
    if not script.exists() or not key:
        return None
    ws = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    return (f"ssh -tt -i {shlex.quote(os.path.expanduser(key))} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -W '[%h]:%p' {user}@127.0.0.1 "
            f'-o ProxyCommand="{ws} {server_common.get_server_url()} {name} kubernetes-pod-ssh-proxy"')  # fmt: skip


def _may_have_left_a_cluster(mapped: TetherError | None) -> bool:
    """After a failed launch: whether a cluster may be up (setup failed, an interrupt, an unknown error). SkyPilot
    refused (capacity, quota, credentials, names, features) before anything ran, or cleaned up itself."""
    if mapped is None:
        return True
    return isinstance(mapped, ClusterUnavailable) and (mapped.details or {}).get("step") == "setup"


def _current_wheel() -> str | None:
    """The fingerprint of the wheel a launch would ship now (None when none can be built here)."""
    try:
        return wheel_fingerprint(build_wheel())
    except ConfigError:
        return None


def _field(rec: Any, key: str) -> Any:
    return rec.get(key) if isinstance(rec, dict) else getattr(rec, key, None)


def _status_name(rec: Any) -> str | None:
    value = _field(rec, "status")
    return None if value is None else str(getattr(value, "value", value))
