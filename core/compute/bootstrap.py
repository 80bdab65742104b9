"""Host bootstrap over SSH: ship the local tether wheel plus a wheelhouse, make a venv, run the daemon supervised.

Needs no internet on the host. Every step is idempotent (a second run changes nothing) and every failure
says which step failed on which host, with the remote stderr.
"""

from __future__ import annotations

import contextlib
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
from tether.compute.sshtarget import SSHTarget, step_error
from tether.errors import ClusterUnavailable, ConfigError
from tether.home import file_lock

__all__ = ["DaemonInfo", "Phase", "SSHTarget", "bootstrap_hosts", "build_wheel", "build_wheelhouse", "step_error",
           "stop_daemon"]

#: the daemon's home on a host, relative to the remote user's HOME.
REMOTE_DIR = ".tether/daemon"
DEFAULT_PORT = 32300
_BUILD_LOCK = threading.RLock()


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
    """Content hash of every file of the packages (code and data, not bytecode) and of pyproject: a touched but
    unchanged file changes nothing, any changed byte gives a new wheel."""
    h = hashlib.sha256()
    for sub in ("core", "daemon", "providers"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
                h.update(f"{p.relative_to(root)}\n{p.stat().st_size}\n".encode())
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
    return _wheel()[0]


def _wheel() -> tuple[Path, str]:
    """The wheel and how it was got: ``pinned`` (TETHER_WHEEL), ``cached`` (same sources built before), ``built``."""
    if os.environ.get("TETHER_WHEEL"):
        return Path(os.environ["TETHER_WHEEL"]), "pinned"
    root = project_root()
    with _BUILD_LOCK, file_lock(_cache_dir() / "wheels.lock"):
        return _build_wheel(root)


def _build_wheel(root: Path) -> tuple[Path, str]:
    out = _cache_dir() / "wheels" / _tree_fingerprint(root)
    found = sorted(out.glob("tether-*.whl"))
    if found:
        return found[0], "cached"
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
    return sorted(out.glob("tether-*.whl"))[0], "built"


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
    return _wheelhouse(remote)[0]


def _wheelhouse(remote: dict[str, Any]) -> tuple[Path, str]:
    """The wheelhouse and how it was got: ``pinned`` (TETHER_WHEELHOUSE), ``cached`` or ``downloaded``."""
    if os.environ.get("TETHER_WHEELHOUSE"):
        return Path(os.environ["TETHER_WHEELHOUSE"]), "pinned"
    # hosts bootstrap in threads: one download at a time here, and a file lock against other processes
    with _BUILD_LOCK:
        return _build_wheelhouse(remote)


def _build_wheelhouse(remote: dict[str, Any]) -> tuple[Path, str]:
    env = {"python_version": remote["python"], "python_full_version": remote["python_full"],
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": remote["machine"],
           "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
    pins = pinned_requirements("tether", env) + [f"pip=={_local_pip_version()}"]
    uv = _local_uv_pin()  # uv's own wheel: a host without uv installs with it (seconds faster than pip)
    tag = f"cp{remote['python'].replace('.', '')}-{remote['machine']}-glibc{remote.get('glibc') or 'none'}"
    out = _cache_dir() / "wheelhouse" / tag
    wanted = "\n".join([*pins, uv or ""])
    how = "cached"
    with file_lock(out.with_name(tag + ".lock")):
        if not ((out / "pins.txt").exists() and (out / "pins.txt").read_text() == wanted):
            _download(out, remote, pins)
            if uv:
                with contextlib.suppress(ClusterUnavailable):  # no uv wheel for this platform: pip installs
                    _download(out, remote, [uv])
            (out / "pins.txt").write_text(wanted)
            how = "downloaded"
    return out, how


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


def _local_uv_pin() -> str | None:
    """``uv==<version>`` of the uv here (the same one on every host), or None without uv."""
    exe = shutil.which("uv")
    if not exe:
        return None
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"uv (\d+\.\d+\.\d+)", r.stdout.strip())
    return f"uv=={m.group(1)}" if r.returncode == 0 and m else None


def _local_pip_version() -> str:
    try:
        return md.version("pip")
    except md.PackageNotFoundError:
        return "24.3.1"


# --- remote steps ----------------------------------------------------------------------------------------

_PROBE = r"""
import json, os, platform, shutil, sys
d = os.path.expanduser("~/{rdir}")
uv = shutil.which("uv") or next((p for p in (os.path.expanduser("~/.local/bin/uv"), os.path.expanduser(
    "~/.cargo/bin/uv")) if os.access(p, os.X_OK)), None)
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
  "installed": read("installed"), "uv": uv, "running": running, "daemon_key": read("daemon.key"),
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


#: the phases of a host's bring-up, in order (``image`` only when an image is applied)
PHASES = ("build wheel", "connect", "wheelhouse", "copy", "venv", "install", "image", "daemon start")


@dataclass(frozen=True)
class Phase:
    """How long one phase of a host's bring-up took and what it did (``cached``, ``built``, ``skipped``...)."""

    name: str
    seconds: float
    detail: str = ""


@dataclass
class DaemonInfo:
    """A running daemon on a host: its port (on the host's loopback), where its files are, and how long each
    phase of its bring-up took (:attr:`phases`, in :data:`PHASES` order)."""

    host: str
    port: int
    home: str
    remote_dir: str
    pid: int | None = None
    steps: list[str] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)

    def phase(self, name: str) -> Phase | None:
        """The phase of that name, or None when it did not apply."""
        return next((p for p in self.phases if p.name == name), None)

    def report(self) -> str:
        """One line: every phase with its seconds and what it did, and the total."""
        parts = [f"{p.name} {p.seconds:.2f}s" + (f" ({p.detail})" if p.detail else "") for p in self.phases]
        return f"{self.host}: " + " · ".join(parts) + f" = {sum(p.seconds for p in self.phases):.2f}s"


class _Clock:
    """Times consecutive phases into a DaemonInfo's list."""

    def __init__(self, phases: list[Phase]) -> None:
        self.phases, self.t = phases, time.perf_counter()

    def done(self, name: str, detail: str = "", seconds: float | None = None) -> None:
        now = time.perf_counter()
        self.phases.append(Phase(name, now - self.t if seconds is None else seconds, detail))
        self.t = now


_UNPACK_UV = """import os, zipfile
z = zipfile.ZipFile("{wheel}"); m = next(n for n in z.namelist() if n.endswith("/scripts/uv"))
os.makedirs(os.path.dirname("{out}"), exist_ok=True); tmp = "{out}.tmp"
with z.open(m) as src, open(tmp, "wb") as dst:
    dst.write(src.read())
os.chmod(tmp, 0o755); os.replace(tmp, "{out}")"""


def _install_script(rdir: str, python: str, uv: str | None, wheel: str, install_key: str,
                    shipped_uv: str | None = None) -> str:  # fmt: skip
    """One round trip: make the venv (uv when the host has it, else ``venv --without-pip``) and install tether
    with its dependencies from the shipped wheelhouse only (``--no-index``); prints when the venv was ready."""
    links = f"--no-index --find-links {rdir}/wheels"
    unpack = ""
    if not uv and shipped_uv:  # the uv wheel from the wheelhouse: its binary, unpacked once per host
        uv = f"{rdir}/bin/uv"
        unpack = (f"test -x {uv} || {python} -c {shlex.quote(_UNPACK_UV.format(wheel=shipped_uv, out=uv))}; ")
    if uv:
        uv = f"UV_PYTHON_DOWNLOADS=never {uv}"
        venv = f"test -x {rdir}/venv/bin/python || {uv} venv -q --offline --python {python} {rdir}/venv"
        install = (f"{uv} pip install --offline -q --python {rdir}/venv/bin/python {links} "
                   f"--reinstall-package tether {wheel} pip")  # fmt: skip
    else:
        venv = f"test -x {rdir}/venv/bin/python || {python} -m venv --without-pip {rdir}/venv"
        pip = f'{rdir}/venv/bin/python "$(ls {rdir}/wheels/pip-*.whl | head -1)"/pip'
        flags = "-q --no-compile --disable-pip-version-check"
        install = (f"{pip} install {flags} {links} {wheel} pip; "
                   f"{pip} install {flags} --no-index --no-deps --force-reinstall {wheel}")  # fmt: skip
    t = 'python3 -c "import time; print(time.time())" 2>/dev/null || date +%s'
    return f"set -e; s=$({t}); {unpack}{venv}; v=$({t}); echo \"venv $s $v\"; {install}; echo {install_key} > {rdir}/installed"


def _remote_seconds(out: str, tag: str) -> float | None:
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == tag:
            try:
                return max(0.0, float(parts[2]) - float(parts[1]))
            except ValueError:
                return None
    return None


def bootstrap_host(
    t: SSHTarget, *, wheel: Path, port: int, token: str | None, autostop_mins: int | None,
    python: str = "python3", progress: Callable[[str], None] = lambda s: None,
    image_key: str | None = None, prepare: Callable[[SSHTarget, DaemonInfo], None] | None = None,
    phases: Iterable[Phase] = (),
) -> DaemonInfo:  # fmt: skip
    """Make sure the daemon of this wheel runs on the host; returns where. Only does the steps still needed.

    ``prepare(target, info)`` runs after the install and before the daemon starts (an image's setup steps);
    a change of ``image_key`` restarts the daemon. ``phases`` (the local ones, e.g. the wheel build) open the
    returned info's phase list."""
    progress("connect")
    timed: list[Phase] = list(phases)
    clock = _Clock(timed)
    probe = json.loads(t.run(f"{python} -", step="connect", stdin=_PROBE.format(rdir=REMOTE_DIR)))
    clock.done("connect", "shared connection" if t.control_path else "")
    rdir = f"{probe['home']}/{REMOTE_DIR}"
    wheel_sha = wheel_fingerprint(wheel)
    install_key = f"{wheel_sha}+pip"  # the venv has pip too: envs with reqs install with it on a host without uv
    daemon_key = hashlib.sha256(f"{wheel_sha}:{port}:{token}:{autostop_mins}:{image_key}".encode()).hexdigest()[:16]
    info = DaemonInfo(host=t.host, port=port, home=probe["home"], remote_dir=rdir, phases=timed)
    if probe["installed"] != install_key:
        progress("wheelhouse")
        house, how = _wheelhouse(probe)
        clock.done("wheelhouse", how)
        progress("copy")
        t.rsync([*sorted(house.glob("*.whl")), wheel], f"{rdir}/wheels/", step="ship wheels")
        clock.done("copy", "one rsync")
        progress("venv + install")
        shipped = next((f"{rdir}/wheels/{w.name}" for w in sorted(house.glob("uv-*.whl"))), None)
        uv = "uv" if probe.get("uv") else "shipped uv" if shipped else None
        out = t.run(_install_script(rdir, python, probe.get("uv"), f"{rdir}/wheels/{wheel.name}", install_key,
                                    shipped), step="install")  # fmt: skip
        wall = time.perf_counter() - clock.t
        venv = min(_remote_seconds(out, "venv") or 0.0, wall)
        clock.done("venv", uv or "venv --without-pip", seconds=venv)
        clock.done("install", f"{uv or 'pip'}, --no-index", seconds=wall - venv)
        info.steps.append("install")
    else:
        for name in ("wheelhouse", "copy", "venv", "install"):
            timed.append(Phase(name, 0.0, "skipped (installed)"))
    if prepare is not None:
        progress("image")
        prepare(t, info)
        clock.done("image")
    if probe["running"] and probe["daemon_key"] == daemon_key and probe["ready"]:
        info.pid = probe["ready"].get("pid")
        info.port = int(probe["ready"]["port"])
        clock.done("daemon start", "skipped (running)")
        return info
    progress("start daemon")
    if probe["running"]:
        stop_daemon(t, rdir)
    _start_daemon(t, info, rdir, port=port, token=token, autostop_mins=autostop_mins, daemon_key=daemon_key)
    clock.done("daemon start")
    return info


def _start_daemon(t: SSHTarget, info: DaemonInfo, rdir: str, *, port: int, token: str | None,
                  autostop_mins: int | None, daemon_key: str) -> None:  # fmt: skip
    """One round trip: write the token and the supervisor, start it, wait until the daemon is ready."""
    cmd = f"\"$PY\" -m tether.daemon --host 127.0.0.1 --port {port} --state-dir state --ready-file ready.json"
    if token:
        cmd += " --token-file token"
    if autostop_mins is not None:
        cmd += f" --autostop-mins {autostop_mins}"
    # the token travels on stdin (its first line), never on a command line (where `ps` would show it)
    stdin = f"{token or ''}\n{_SUPERVISOR.format(cmd=cmd)}"
    ready = t.run(
        f"set -e; mkdir -p {rdir}; cd {rdir}; umask 077; IFS= read -r tok || true; "
        'if [ -n "$tok" ]; then printf %s "$tok" > token.tmp; mv token.tmp token; else rm -f token; fi; '
        f"cat > supervise.sh; chmod +x supervise.sh; echo {daemon_key} > daemon.key; rm -f ready.json; "
        "setsid nohup ./supervise.sh > daemon.log 2>&1 < /dev/null & echo $! > supervisor.pid; set +e; "
        "for i in $(seq 600); do if [ -s ready.json ]; then cat ready.json; exit 0; fi; "
        "if ! kill -0 $(cat supervisor.pid) 2>/dev/null; then break; fi; sleep 0.05; done; "
        "echo 'daemon did not become ready; daemon.log:' >&2; tail -n 40 daemon.log >&2; exit 1",
        step="start daemon",
        stdin=stdin,
    )
    info.steps.append("start daemon")
    data = json.loads(ready)
    info.port, info.pid = int(data["port"]), data.get("pid")


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
    """Bootstrap every host in parallel with a rich progress display; the first failure is raised. Each info's
    :attr:`~DaemonInfo.phases` says how long each phase took there; with progress shown, one line per host."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, quiet=not show_progress)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[host]}[/] {task.description}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:  # fmt: skip
        task_ids = {t.host: bar.add_task("build wheel", host=t.host, total=None) for t in targets}
        t0 = time.perf_counter()
        wheel, how = _wheel()
        built = Phase("build wheel", time.perf_counter() - t0, how)

        def one(t: SSHTarget) -> DaemonInfo:
            tid = task_ids[t.host]
            info = bootstrap_host(t, wheel=wheel, port=port, token=token, autostop_mins=autostop_mins,
                                  python=python, progress=lambda s: bar.update(tid, description=s),
                                  image_key=image_key, prepare=prepare, phases=[built])  # fmt: skip
            bar.update(tid, description=f"daemon up on port {info.port}", total=1, completed=1)
            return info

        with ThreadPoolExecutor(max_workers=min(8, len(targets)) or 1) as pool:
            infos = list(pool.map(one, targets))
    for info in infos:
        console.print(info.report(), highlight=False, soft_wrap=True)
    return infos
