"""Host bootstrap over SSH: ship the local tether wheel plus a wheelhouse, make a venv, run the daemon supervised.

Needs no internet on the host. Every step is idempotent (a second run changes nothing) and every failure
says which step failed on which host, with the remote stderr.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether import _version
from tether.errors import AuthError, ClusterUnavailable, ConfigError
from tether.home import file_lock

__all__ = ["DaemonInfo", "SSHTarget", "bootstrap_hosts", "build_wheel", "build_wheelhouse", "stop_daemon"]

#: the daemon's home on a host, relative to the remote user's HOME.
REMOTE_DIR = ".tether/daemon"
DEFAULT_PORT = 32300
_BUILD_LOCK = threading.RLock()
_AUTH_RE = re.compile(
    r"Permission denied|Host key verification failed|Too many authentication failures", re.I
)


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one host with the system ``ssh``/``rsync``."""

    host: str
    user: str | None = None
    key: str | None = None
    port: int | None = 22  # None: the port the ssh config gives (SkyPilot's 10022 for docker, a probed one on k8s)
    known_hosts: str | None = None
    connect_timeout: int = 5
    config_file: str | None = None  # ``ssh -F``: a config that defines ``host`` (a cluster's own alias)

    @classmethod
    def from_creds(
        cls, host: str, creds: dict[str, str] | None, known_hosts: Path | None = None
    ) -> SSHTarget:
        c = dict(creds or {})
        key = os.path.expanduser(c["key"]) if c.get("key") else None
        unknown = set(c) - {"user", "key", "port", "connect_timeout"}
        if unknown:
            raise ConfigError(f"unknown ssh_creds keys {sorted(unknown)}", hint="use user, key, port")
        return cls(host=host, user=c.get("user"), key=key, port=int(c.get("port", 22)),
                   known_hosts=str(known_hosts) if known_hosts else None,
                   connect_timeout=int(c.get("connect_timeout", 5)))  # fmt: skip

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
                "-o", "StrictHostKeyChecking=accept-new"]  # fmt: skip
        if self.config_file:
            opts = ["-F", self.config_file, *opts]
        if self.port is not None:
            opts += ["-p", str(self.port)]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            opts += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *self.options(), self.dest, command]

    def run(self, command: str, *, step: str, stdin: str | None = None, timeout: float = 600) -> str:
        """Run a shell command on the host; raise a step-named error with the remote stderr if it fails."""
        try:
            r = _with_handshake_retries(lambda: subprocess.run(
                self.ssh_argv(command), input=stdin, capture_output=True, text=True, timeout=timeout))
        except subprocess.TimeoutExpired as exc:
            raise ClusterUnavailable(f"step {step!r} timed out after {timeout:.0f}s on {self.host}",
                                     details={"step": step, "host": self.host}) from exc  # fmt: skip
        if r.returncode != 0:
            raise step_error(step, self.host, r.returncode, r.stderr)
        return r.stdout

    def rsync(
        self, sources: Iterable[str | Path], remote_dir: str, *, step: str, extra: Iterable[str] = ()
    ) -> None:
        """Copy files/trees to ``remote_dir`` (created if missing); unchanged files are not sent again. A file counts
        as unchanged only when its size and its mtime to the nanosecond match (``--modify-window=-1``): rsync's default
        whole-second check skips an edit made within a second of the last sync that kept the file's size."""
        rsh = " ".join(shlex.quote(a) for a in ["ssh", *self.options()])
        argv = ["rsync", "-a", "--modify-window=-1", "--mkpath", *extra, "-e", rsh, *map(str, sources), f"{self.dest}:{remote_dir}"]
        r = _with_handshake_retries(lambda: subprocess.run(argv, capture_output=True, text=True, timeout=900))
        if r.returncode != 0:
            raise step_error(step, self.host, r.returncode, r.stderr)


_HANDSHAKE_RE = re.compile(r"Connection reset by peer|Connection closed by|kex_exchange_identification", re.I)


def _with_handshake_retries(run: Callable[[], subprocess.CompletedProcess[str]], attempts: int = 3
                            ) -> subprocess.CompletedProcess[str]:
    """Run an ssh/rsync command again (up to ``attempts`` times) when the SSH handshake itself was cut — e.g.
    right after a link comes back. Unreachable hosts, timeouts and refused credentials fail at once."""
    for attempt in range(1, attempts + 1):
        r = run()
        if r.returncode not in (255, 12) or not _HANDSHAKE_RE.search(r.stderr or "") or attempt == attempts:
            return r
        time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def step_error(step: str, host: str, returncode: int, stderr: str) -> ClusterUnavailable | AuthError:
    """The error for a failed remote step: auth failures are AuthError, the rest ClusterUnavailable."""
    tail = stderr.strip()[-2000:]
    details = {"step": step, "host": host, "returncode": returncode, "stderr": tail}
    if returncode == 255 and _AUTH_RE.search(tail):
        hint = ("the host's key changed: remove its line from tether's known_hosts ($TETHER_HOME/ssh/known_hosts)"
                if "Host key verification failed" in tail else "check ssh_creds user/key")  # fmt: skip
        return AuthError(
            f"ssh to {host} refused the credentials (step {step!r}): {tail}", hint=hint, details=details
        )
    if returncode == 255:
        return ClusterUnavailable(f"cannot reach {host} over ssh (step {step!r}): {tail}",
                                  hint="is the host up and reachable?", details=details)  # fmt: skip
    return ClusterUnavailable(f"step {step!r} failed on {host} (exit {returncode}): {tail}",
                              retryable=False, details=details)  # fmt: skip


# --- local artifacts: the wheel and its wheelhouse -------------------------------------------------------


def _cache_dir() -> Path:
    base = os.environ.get("TETHER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tether"
    )
    return Path(base)


def project_root() -> Path:
    """The source tree the running tether was installed from (editable install)."""
    root = Path(_version.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise ConfigError("tether is not installed from a source tree; cannot build its wheel",
                          hint="set TETHER_WHEEL to a built tether wheel")  # fmt: skip
    return root


def _tree_fingerprint(root: Path) -> str:
    """Content hash of the package sources and pyproject (a touched but unchanged file changes nothing)."""
    h = hashlib.sha256()
    for sub in ("core", "daemon", "providers"):
        for p in sorted((root / sub).rglob("*.py")):
            h.update(f"{p.relative_to(root)}\n".encode())
            h.update(p.read_bytes())
    h.update((root / "pyproject.toml").read_bytes())
    return h.hexdigest()[:16]


def wheel_fingerprint(wheel: Path) -> str:
    """Hash of the wheel's member names and CRCs: equal for rebuilds of the same sources (zip dates differ)."""

    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}:{info.CRC}:{info.file_size}\n".encode())
    return h.hexdigest()[:16]


def build_wheel() -> Path:
    """Build (or reuse) the tether wheel of the local tree; ``TETHER_WHEEL`` overrides."""
    if os.environ.get("TETHER_WHEEL"):
        return Path(os.environ["TETHER_WHEEL"])
    root = project_root()
    with _BUILD_LOCK, file_lock(_cache_dir() / "wheels.lock"):
        return _build_wheel(root)


def _build_wheel(root: Path) -> Path:
    out = _cache_dir() / "wheels" / _tree_fingerprint(root)
    found = sorted(out.glob("tether-*.whl"))
    if found:
        return found[0]
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if shutil.which("uv"):
        argv = ["uv", "build", "--wheel", "--out-dir", str(tmp), str(root)]
    else:
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp), str(root)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise ClusterUnavailable(f"step 'build wheel' failed locally: {r.stderr.strip()[-2000:]}",
                                 retryable=False, details={"step": "build wheel", "host": "localhost"})  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    for old in sorted(out.parent.iterdir(), key=lambda p: p.stat().st_mtime)[:-3]:  # keep the 3 newest builds
        shutil.rmtree(old, ignore_errors=True)
    return sorted(out.glob("tether-*.whl"))[0]


def pinned_requirements(dist: str = "tether", env: dict[str, str] | None = None) -> list[str]:
    """``name==version`` for the dependency closure of ``dist`` as installed here, markers evaluated for ``env``."""
    from packaging.requirements import Requirement  # not a core dependency: only bootstrapping hosts needs it
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo = [(dist, frozenset[str]())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        d = md.distribution(name)
        for raw in d.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not any(
                req.marker.evaluate({**(env or {}), "extra": e}) for e in (extras or {""})
            ):
                continue
            key = str(canonicalize_name(req.name))
            try:
                pins[key] = md.version(req.name)
            except md.PackageNotFoundError:
                continue
            todo.append((req.name, frozenset(req.extras)))
    return sorted(f"{n}=={v}" for n, v in pins.items())


def _platforms(machine: str, glibc: str | None) -> list[str]:
    tags = [f"linux_{machine}"]
    if glibc:
        major, minor = (int(x) for x in glibc.split(".")[:2])
        tags += [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
        tags += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return tags


def _pip() -> list[str]:

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for exe in ("pip3", "pip"):
        if shutil.which(exe):
            return [exe]
    if shutil.which("uv"):
        return ["uv", "tool", "run", "--from", "pip", "pip"]
    raise ConfigError("no pip found to build the wheelhouse", hint="install pip or set TETHER_WHEELHOUSE")


def build_wheelhouse(remote: dict[str, Any]) -> Path:
    """Download binary wheels of tether's pinned dependencies for the host's Python and platform (cached)."""
    if os.environ.get("TETHER_WHEELHOUSE"):
        return Path(os.environ["TETHER_WHEELHOUSE"])
    # hosts bootstrap in threads: one download at a time here, and a file lock against other processes
    with _BUILD_LOCK:
        return _build_wheelhouse(remote)


def _build_wheelhouse(remote: dict[str, Any]) -> Path:
    env = {"python_version": remote["python"], "python_full_version": remote["python_full"],
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": remote["machine"],
           "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
    pins = pinned_requirements("tether", env) + [f"pip=={_local_pip_version()}"]
    tag = f"cp{remote['python'].replace('.', '')}-{remote['machine']}-glibc{remote.get('glibc') or 'none'}"
    out = _cache_dir() / "wheelhouse" / tag
    wanted = "\n".join(pins)
    with file_lock(out.with_name(tag + ".lock")):
        if not ((out / "pins.txt").exists() and (out / "pins.txt").read_text() == wanted):
            _download(out, remote, pins)
            (out / "pins.txt").write_text(wanted)
    return out


def _download(out: Path, remote: dict[str, Any], pins: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    argv = [*_pip(), "download", "--no-deps", "--only-binary=:all:", "-d", str(out),
            "--python-version", remote["python"], "--implementation", "cp",
            "--abi", f"cp{remote['python'].replace('.', '')}", "--abi", "abi3", "--abi", "none"]  # fmt: skip
    for p in _platforms(remote["machine"], remote.get("glibc")):
        argv += ["--platform", p]
    r = subprocess.run([*argv, *pins], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise ClusterUnavailable(f"step 'wheelhouse' failed locally: {r.stderr.strip()[-2000:]}",
                                 retryable=False, details={"step": "wheelhouse", "host": "localhost"})  # fmt: skip


def _local_pip_version() -> str:
    try:
        return md.version("pip")
    except md.PackageNotFoundError:
        return "24.3.1"


# --- remote steps ----------------------------------------------------------------------------------------

_PROBE = r"""
import json, os, platform, sys
d = os.path.expanduser("~/{rdir}")
def read(name):
    try:
        with open(os.path.join(d, name)) as f: return f.read().strip()
    except OSError: return None
pid = read("supervisor.pid"); running = False
if pid:
    try:
        with open("/proc/%s/stat" % pid) as f: running = f.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError): running = False
ready = read("ready.json")
print(json.dumps({{"home": os.path.expanduser("~"), "python": "%d.%d" % sys.version_info[:2],
  "python_full": platform.python_version(), "machine": platform.machine(), "glibc": platform.libc_ver()[1] or None,
  "installed": read("installed"), "running": running, "daemon_key": read("daemon.key"),
  "ready": json.loads(ready) if ready and running else None}}))
"""

_SUPERVISOR = """#!/bin/sh
# tether daemon supervisor: restarts the daemon if it crashes, exits when it stops cleanly (SIGTERM, autostop)
# or when it fails 3 times in a row without ever becoming ready.
cd "$(dirname "$0")"
# an image's env vars and venv (tether.compute.setup): the daemon and its workers run with them
PY=venv/bin/python; [ -s image.venv ] && PY="$(cat image.venv)"
[ -f image.env ] && . ./image.env
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT HUP
fails=0
while :; do
  rm -f ready.json
  {cmd} &
  child=$!
  wait "$child"; code=$?
  [ "$code" -eq 0 ] && exit 0
  if [ -s ready.json ]; then fails=0; else fails=$((fails + 1)); fi
  [ "$fails" -ge 3 ] && {{ echo "tether daemon failed to start 3 times; giving up" >&2; exit "$code"; }}
  echo "tether daemon exited with $code; restarting" >&2
  sleep 1
done
"""


@dataclass
class DaemonInfo:
    """A running daemon on a host: its port (on the host's loopback) and where its files are."""

    host: str
    port: int
    home: str
    remote_dir: str
    pid: int | None = None
    steps: list[str] = field(default_factory=list)


def bootstrap_host(
    t: SSHTarget, *, wheel: Path, port: int, token: str | None, autostop_mins: int | None,
    python: str = "python3", progress: Callable[[str], None] = lambda s: None,
    image_key: str | None = None, prepare: Callable[[SSHTarget, DaemonInfo], None] | None = None,
) -> DaemonInfo:  # fmt: skip
    """Make sure the daemon of this wheel runs on the host; returns where. Only does the steps still needed.

    ``prepare(target, info)`` runs after the install and before the daemon starts (an image's setup steps);
    a change of ``image_key`` restarts the daemon."""
    progress("connect")
    probe = json.loads(t.run(f"{python} -", step="connect", stdin=_PROBE.format(rdir=REMOTE_DIR)))
    rdir = f"{probe['home']}/{REMOTE_DIR}"
    wheel_sha = wheel_fingerprint(wheel)
    install_key = f"{wheel_sha}+pip"  # the venv has pip too: envs with reqs install with it on a host without uv
    daemon_key = hashlib.sha256(f"{wheel_sha}:{port}:{token}:{autostop_mins}:{image_key}".encode()).hexdigest()[:16]
    info = DaemonInfo(host=t.host, port=port, home=probe["home"], remote_dir=rdir)
    if probe["installed"] != install_key:
        progress("wheelhouse")
        house = build_wheelhouse(probe)
        progress("ship wheels")
        t.rsync([*sorted(house.glob("*.whl")), wheel], f"{rdir}/wheels/", step="ship wheels")
        progress("venv + install")
        pip = f'{rdir}/venv/bin/python "$(ls {rdir}/wheels/pip-*.whl | head -1)"/pip'
        wpath = f"{rdir}/wheels/{wheel.name}"
        t.run(
            f"set -e; test -x {rdir}/venv/bin/python || {python} -m venv --without-pip {rdir}/venv; "
            f"{pip} install -q --no-compile --disable-pip-version-check --no-index --find-links {rdir}/wheels {wpath} pip; "
            f"{pip} install -q --no-compile --disable-pip-version-check --no-index --no-deps --force-reinstall {wpath}; "
            f"echo {install_key} > {rdir}/installed",
            step="install",
        )  # fmt: skip
        info.steps.append("install")
    if prepare is not None:
        progress("image")
        prepare(t, info)
    if probe["running"] and probe["daemon_key"] == daemon_key and probe["ready"]:
        info.pid = probe["ready"].get("pid")
        info.port = int(probe["ready"]["port"])
        return info
    progress("start daemon")
    if probe["running"]:
        stop_daemon(t, rdir)
    cmd = f"\"$PY\" -m tether.daemon --host 127.0.0.1 --port {port} --state-dir state --ready-file ready.json"
    if token:
        cmd += " --token-file token"
    if autostop_mins is not None:
        cmd += f" --autostop-mins {autostop_mins}"
    script = _SUPERVISOR.format(cmd=cmd)
    # the token travels on stdin, never on a command line (where `ps` would show it)
    if token:
        t.run(f"set -e; mkdir -p {rdir}; cd {rdir}; umask 077; cat > token.tmp; mv token.tmp token",
              step="token", stdin=token)  # fmt: skip
    else:
        t.run(f"rm -f {rdir}/token", step="token")
    t.run(
        f"set -e; mkdir -p {rdir}; cd {rdir}; umask 077; cat > supervise.sh; chmod +x supervise.sh; "
        + f"echo {daemon_key} > daemon.key; rm -f ready.json; "
        "setsid nohup ./supervise.sh > daemon.log 2>&1 < /dev/null & echo $! > supervisor.pid",
        step="start daemon",
        stdin=script,
    )
    info.steps.append("start daemon")
    progress("wait for daemon")
    ready = t.run(
        f"cd {rdir}; for i in $(seq 600); do if [ -s ready.json ]; then cat ready.json; exit 0; fi; "
        "if ! kill -0 $(cat supervisor.pid) 2>/dev/null; then break; fi; sleep 0.1; done; "
        "echo 'daemon did not become ready; daemon.log:' >&2; tail -n 40 daemon.log >&2; exit 1",
        step="wait for daemon",
    )
    data = json.loads(ready)
    info.port, info.pid = int(data["port"]), data.get("pid")
    return info


def stop_daemon(t: SSHTarget, remote_dir: str, *, step: str = "stop daemon") -> None:
    """Stop the supervisor and its daemon (TERM, then KILL of the process group after 10 s)."""
    t.run(
        f"cd {remote_dir} 2>/dev/null || exit 0; p=$(cat supervisor.pid 2>/dev/null) || exit 0; "
        'kill -TERM "$p" 2>/dev/null || { rm -f supervisor.pid ready.json; exit 0; }; '
        'for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; '
        'kill -KILL -- -"$p" 2>/dev/null; rm -f supervisor.pid ready.json; true',
        step=step,
    )


def bootstrap_hosts(
    targets: list[SSHTarget], *, port: int = DEFAULT_PORT, token: str | None = None,
    autostop_mins: int | None = None, python: str = "python3", show_progress: bool = True,
    image_key: str | None = None, prepare: Callable[[SSHTarget, DaemonInfo], None] | None = None,
) -> list[DaemonInfo]:  # fmt: skip
    """Bootstrap every host in parallel with a rich progress display; the first failure is raised."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, quiet=not show_progress)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[host]}[/] {task.description}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:  # fmt: skip
        task_ids = {t.host: bar.add_task("build wheel", host=t.host, total=None) for t in targets}
        wheel = build_wheel()

        def one(t: SSHTarget) -> DaemonInfo:
            tid = task_ids[t.host]
            info = bootstrap_host(t, wheel=wheel, port=port, token=token, autostop_mins=autostop_mins,
                                  python=python, progress=lambda s: bar.update(tid, description=s),
                                  image_key=image_key, prepare=prepare)  # fmt: skip
            bar.update(tid, description=f"daemon up on port {info.port}", total=1, completed=1)
            return info

        with ThreadPoolExecutor(max_workers=min(8, len(targets)) or 1) as pool:
            return list(pool.map(one, targets))
