"""Hands on the box: shell commands, file copies, an interactive shell and resource usage on a cluster's nodes,
for local, ssh and sky clusters alike (each node is this machine, an ssh host, or SkyPilot's ssh alias).

Nothing secret is put on a command line: environment variables and file contents travel on ssh's stdin.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from tether.compute.bootstrap import REMOTE_DIR, SSHTarget, step_error
from tether.compute.nodes import nodes_status
from tether.compute.state import load_state, write_private
from tether.errors import ConfigError
from tether.home import clusters_dir, private_dir

__all__ = ["CommandResult", "Place", "StatusReport", "places", "report", "rsync", "run", "shell", "usage",
           "write_private_files"]


@dataclass(frozen=True)
class Place:
    """One node of a cluster as the box functions reach it."""

    index: int
    host: str
    target: SSHTarget | None  # None: this machine
    state_dir: str  # the daemon's --state-dir there

    @property
    def local(self) -> bool:
        return self.target is None


class CommandResult(NamedTuple):
    """One command on one node: ``(returncode, stdout, stderr)`` first, as Runhouse's ``cluster.run`` gives."""

    returncode: int
    stdout: str
    stderr: str
    host: str
    command: str


def places(cluster: Any, node: int | str | None = None) -> list[Place]:
    """The nodes of ``cluster`` (``node``: an index, a host, ``"all"``, or None for the head)."""
    spec = cluster.spec
    st = load_state(spec.name) or {}
    if spec.backend == "local":
        out = [Place(0, "localhost", None, str(st.get("state_dir") or clusters_dir() / spec.name))]
    elif spec.backend == "ssh":
        dirs = st.get("remote_dirs") or {}
        out = [Place(i, t.host, t, f"{dirs.get(t.host) or '$HOME/' + REMOTE_DIR}/state")
               for i, t in enumerate(cluster.backend.targets(spec))]
    elif spec.backend == "sky":
        out = [Place(0, spec.name, cluster.backend.ssh_target(spec), f"$HOME/{REMOTE_DIR}/state")]
    else:
        raise ConfigError(f"cluster {spec.name!r} is an endpoint: tether has no shell on its machines",
                          hint="run commands on local, ssh or sky clusters")
    if node is None:
        return out[:1]
    if node == "all":
        return out
    chosen = [p for p in out if node in (p.index, p.host)]
    if not chosen:
        raise ConfigError(f"cluster {spec.name!r} has no node {node!r}",
                          hint=f"nodes: {', '.join(p.host for p in out)} (or an index, or 'all')")
    return chosen


def _script(command: str, env: dict[str, str] | None, cwd: str | None) -> str:
    lines = [f"export {k}={shlex.quote(str(v))}" for k, v in (env or {}).items()]
    lines.append(f"cd {shlex.quote(cwd)}" if cwd else "cd ~")
    lines.append(command)
    return "\n".join(lines) + "\n"


def _pump(stream: IO[str], sink: list[str], echo: Callable[[str], None] | None) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if echo is not None:
            echo(line)


_SSH_FAILED = re.compile(r"^ssh: |Permission denied|Host key verification failed|Connection (refused|timed out|"
                         r"closed|reset)", re.M)


def run_one(place: Place, command: str, *, env: dict[str, str] | None = None, cwd: str | None = None,
            stream: bool = True, prefix: str = "") -> CommandResult:
    """Run a shell command on one node, streaming its output as it comes (``stream``); never raises for the
    command's own exit code. The script (with ``env``) travels on stdin, so no value shows in ``ps``."""
    argv = ["sh", "-s"] if place.local else place.target.ssh_argv("sh -s")  # type: ignore[union-attr]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=os.path.expanduser("~") if place.local else None)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out: list[str] = []
    err: list[str] = []

    def echo_to(f: IO[str]) -> Callable[[str], None] | None:
        if not stream:
            return None

        def echo(line: str) -> None:
            f.write(prefix + line)
            f.flush()
        return echo

    readers = [threading.Thread(target=_pump, args=(proc.stdout, out, echo_to(sys.stdout)), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, err, echo_to(sys.stderr)), daemon=True)]
    for t in readers:
        t.start()
    proc.stdin.write(_script(command, env, cwd))
    proc.stdin.close()
    rc = proc.wait()
    for t in readers:
        t.join()
    stderr = "".join(err)
    if rc == 255 and not place.local and _SSH_FAILED.search(stderr):
        raise step_error("run", place.host, rc, stderr)  # ssh itself failed (not the command): typed error
    return CommandResult(rc, "".join(out), stderr, place.host, command)


def run(cluster: Any, commands: str | list[str], *, env: dict[str, str] | None = None,
        node: int | str | None = None, cwd: str | None = None, stream: bool = True) -> list[CommandResult]:
    """Each command on each chosen node, in order; a node stops at its first failing command."""
    cmds = [commands] if isinstance(commands, str) else list(commands)
    chosen = places(cluster, node)
    results: list[CommandResult] = []
    for place in chosen:
        prefix = f"[{place.host}] " if len(chosen) > 1 else ""
        for cmd in cmds:
            res = run_one(place, cmd, env=env, cwd=cwd, stream=stream, prefix=prefix)
            results.append(res)
            if res.returncode != 0:
                break
    return results


def rsync(cluster: Any, source: str, dest: str, *, up: bool = True, node: int | str | None = None,
          contents: bool = False) -> None:
    """Copy ``source`` to ``dest``: local → nodes when ``up`` (every node unless ``node``), else node → local
    (the head unless ``node``). Remote relative paths are under the remote HOME. ``contents``: copy a folder's
    contents (a trailing ``/`` on ``source``)."""
    chosen = places(cluster, node if node is not None or not up else "all")
    src = source.rstrip("/") + "/" if contents else source
    for place in chosen if up else chosen[:1]:
        if place.local:
            home = os.path.expanduser("~")
            a = src if up else os.path.join(home, src)
            b = os.path.join(home, dest) if up else dest
            argv = ["rsync", "-a", "--mkpath", a, b]
        else:
            t = place.target
            assert t is not None
            rsh = " ".join(shlex.quote(x) for x in ["ssh", *t.options()])
            home = t.run("echo $HOME", step="rsync").strip()  # relative paths: under the remote HOME
            there = (dest if up else src) if (dest if up else src).startswith("/") else f"{home}/{dest if up else src}"
            pair = [src, f"{t.dest}:{there}"] if up else [f"{t.dest}:{there}", dest]
            argv = ["rsync", "-a", "--mkpath", "-e", rsh, *pair]
        if not up:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise step_error("rsync", place.host, r.returncode, r.stderr)


def write_private_files(place: Place, files: dict[str, bytes], *, base: str, keep_old: bool = False) -> None:
    """Write files (path under ``base`` → content) 0600 in 0700 folders on a node, in one go over stdin;
    ``keep_old``: a different file already there is first renamed ``<name>.tether-bak`` (once)."""
    if place.local:
        root = Path(os.path.expanduser(os.path.expandvars(base)))
        for rel, data in files.items():
            private_dir((root / rel).parent)
            write_private(root / rel, data)
        return
    payload = json.dumps({rel: data.decode() for rel, data in files.items()})
    assert place.target is not None
    keep = " keep" if keep_old else ""
    place.target.run(f"python3 -c {shlex.quote(_WRITER)} {_remote_path(base)}{keep}", step="write files",
                     stdin=payload)


def _remote_path(path: str) -> str:
    """A remote path for a shell command: ``$HOME`` stays expandable, the rest is quoted."""
    if path.startswith("$HOME/"):
        return '"$HOME"/' + shlex.quote(path[len("$HOME/"):])
    return shlex.quote(path)


_WRITER = """
import json, os, sys
base, keep = os.path.expanduser(sys.argv[1]), len(sys.argv) > 2
for rel, text in json.load(sys.stdin).items():
    path = os.path.join(base, rel)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if keep and os.path.exists(path) and not os.path.exists(path + ".tether-bak"):
        with open(path) as f:
            if f.read() != text:
                os.replace(path, path + ".tether-bak")  # a different file of the host's own: kept aside once
    tmp = path + ".tether-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
"""


def shell(cluster: Any, node: int | str | None = None, command: str | None = None) -> int:
    """An interactive shell on a node (this machine's ``$SHELL`` for the local cluster); its exit code."""
    place = places(cluster, node)[0]
    if place.local:
        argv = [os.environ.get("SHELL", "/bin/sh")] + (["-c", command] if command else [])
        return subprocess.call(argv, cwd=os.path.expanduser("~"))
    t = place.target
    assert t is not None
    tty = ["-t"] if sys.stdin.isatty() else []
    remote = f"cd ~ && {command}" if command else 'cd ~ && exec "${SHELL:-/bin/sh}" -l'
    return subprocess.call(["ssh", *t.options(), *tty, t.dest, remote])


_USAGE = """
import json, os, shutil, subprocess, sys, time
pids = [int(p) for p in sys.argv[1:]]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except (OSError, IndexError, ValueError):
        return None
def rss(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
t0, c0 = time.monotonic(), {p: cpu(p) for p in pids}
time.sleep(0.25)
t1, c1 = time.monotonic(), {p: cpu(p) for p in pids}
procs = {}
for p in pids:
    if c0[p] is None or c1[p] is None:
        procs[p] = None
    else:
        procs[p] = {"cpu_percent": round(100.0 * (c1[p] - c0[p]) / tick / (t1 - t0), 1), "rss_bytes": rss(p)}
mem = {}
with open("/proc/meminfo") as f:
    for line in f:
        k, v = line.split(":", 1)
        mem[k] = int(v.split()[0]) * 1024
gpus, gpu_procs = [], {}
try:
    import pynvml
    pynvml.nvmlInit()
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        m, u = pynvml.nvmlDeviceGetMemoryInfo(h), pynvml.nvmlDeviceGetUtilizationRates(h)
        gpus.append({"index": i, "memory_used": m.used, "memory_total": m.total, "utilization": u.gpu})
        for pr in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            gpu_procs[pr.pid] = gpu_procs.get(pr.pid, 0) + (pr.usedGpuMemory or 0)
except Exception:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,memory.used,memory.total,utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
            for line in out.strip().splitlines():
                i, used, total, util = [x.strip() for x in line.split(",")]
                gpus.append({"index": int(i), "memory_used": int(used) * 2**20, "memory_total": int(total) * 2**20,
                             "utilization": int(util)})
            out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            for line in out.strip().splitlines():
                pid, used = [x.strip() for x in line.split(",")]
                gpu_procs[int(pid)] = gpu_procs.get(int(pid), 0) + int(used) * 2**20
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
for p, d in procs.items():
    if d is not None and p in gpu_procs:
        d["gpu_memory_bytes"] = gpu_procs[p]
print(json.dumps({"cpus": os.cpu_count(), "load": os.getloadavg(), "memory_total": mem.get("MemTotal"),
                  "memory_available": mem.get("MemAvailable"), "gpus": gpus,
                  "processes": {str(k): v for k, v in procs.items()}}))
"""


def usage(place: Place, pids: list[int]) -> dict[str, Any]:
    """A node's CPUs, load, memory and GPUs (NVML, else nvidia-smi, when present) and, per pid, CPU percent,
    resident memory and GPU memory."""
    args = [str(p) for p in pids]
    if place.local:
        r = subprocess.run([sys.executable, "-c", _USAGE, *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise step_error("status", place.host, r.returncode, r.stderr)
        data: dict[str, Any] = json.loads(r.stdout)
        return data
    assert place.target is not None
    out = place.target.run(f"python3 - {' '.join(args)}", step="status", stdin=_USAGE)
    return dict(json.loads(out))


def report(cluster: Any) -> dict[str, Any]:
    """Per node: CPUs, load, memory, GPUs and its daemon's workers; per worker: env, pid, CPU percent, resident
    memory (and GPU memory under NVML/nvidia-smi, measured on the head). ``workers`` at the top: the head's."""
    info = dict(cluster.connected().daemon_status())
    workers = [dict(w) for w in info.get("workers", [])]
    nodes = []
    for place in places(cluster, "all"):
        pids = [int(info["pid"])] + [int(w["pid"]) for w in workers if w.get("pid")] if place.index == 0 else []
        data = usage(place, pids)
        procs = data.pop("processes", {})
        if place.index == 0:
            info["daemon_usage"] = procs.get(str(info["pid"]))
            for w in workers:
                w.update(procs.get(str(w.get("pid")), None) or {})
        nodes.append({"host": place.host, "index": place.index, **data,
                      "workers": workers if place.index == 0 else []})
    _other_nodes_workers(cluster, nodes)
    return {"name": cluster.name, "backend": cluster.spec.backend, "daemon_pid": info.get("pid"),
            "uptime": info.get("uptime"), "workers": workers, "nodes": nodes,
            "running_calls": len(info.get("running_calls", []))}


def _other_nodes_workers(cluster: Any, nodes: list[dict[str, Any]]) -> None:
    """Each non-head node's workers, as that node's daemon reports them (CPU and memory included), into its row;
    an unreachable node's row gets its error."""
    listed = getattr(cluster.backend, "nodes", None)
    if listed is None:
        return
    rows = {r["index"]: r for r in nodes_status([n for n in listed(cluster.spec, cluster.handle) if not n.is_head])}
    for node in nodes:
        row = rows.get(node["index"])
        if row is not None:
            node["workers"] = row.get("workers", [])
            if row.get("status") != "up":
                node["error"] = row.get("error")


class StatusReport(str):
    """What ``cluster.status()`` returns: the state (``"up"``, ``"stopped"``, ``"down"``; compares as that
    string) with the cluster's resource usage on demand: ``.workers`` (per worker: env, pid, cpu_percent,
    rss_bytes, gpu_memory_bytes where NVML is present), ``.nodes`` and ``.details()`` (all of it)."""

    cluster: Any

    def __new__(cls, state: str, cluster: Any) -> StatusReport:
        obj = super().__new__(cls, state)
        obj.cluster = cluster
        return obj

    def details(self) -> dict[str, Any]:
        if str(self) != "up":
            return {"name": self.cluster.name, "state": str(self), "workers": [], "nodes": []}
        return {"state": "up", **report(self.cluster)}

    @property
    def workers(self) -> list[dict[str, Any]]:
        return list(self.details()["workers"])

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.details()["nodes"])
