"""Image setup steps on a host (``tether.Image``): run once per host, each step cached by the content hash of the
image up to and including it, so a second ``up`` runs nothing and a changed step reruns from there on.

A step's marker is ``<daemon dir>/image/<key>``; the image's env vars go to ``<daemon dir>/image.env`` (read by
the daemon's supervisor, so workers inherit them) and a ``set_venv`` path to ``<daemon dir>/image.venv`` (the
daemon and its default workers run with that venv's python). A failing step raises
:class:`~tether.errors.ClusterUnavailable` naming the step, the host and its stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tether.compute.bootstrap import DaemonInfo, SSHTarget, step_error
from tether.errors import ConfigError
from tether.specs import ImageSpec, ImageStep

__all__ = ["ImagePrep", "LocalRunner", "Runner", "SSHRunner", "SetupReport", "apply_image", "file_mounts", "image_hash",
           "setup_script", "step_label"]


class Runner(Protocol):
    """Where steps run: ``run`` a shell script (raising a step-named error), ``rsync`` a local path there."""

    @property
    def host(self) -> str: ...

    def run(self, script: str, *, step: str) -> str: ...

    def rsync(self, src: str, dest: str, *, step: str) -> None: ...


@dataclass
class SSHRunner:
    """Steps on an ssh host: the script travels on stdin (never on a command line)."""

    target: SSHTarget

    @property
    def host(self) -> str:
        return self.target.host

    def run(self, script: str, *, step: str) -> str:
        return self.target.run("sh -s", step=step, stdin=script, timeout=3600)

    def rsync(self, src: str, dest: str, *, step: str) -> None:
        if not dest.startswith("/"):  # under the remote HOME (an ssh session's cwd may be another folder)
            dest = self.target.run("echo $HOME", step=step).strip() + "/" + dest
        self.target.rsync([src], dest, step=step)


@dataclass
class LocalRunner:
    """Steps on this machine (the local cluster)."""

    host: str = "localhost"

    def run(self, script: str, *, step: str) -> str:
        r = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=3600,
                           cwd=os.path.expanduser("~"))
        if r.returncode != 0:
            raise step_error(step, self.host, r.returncode, r.stderr)
        return r.stdout

    def rsync(self, src: str, dest: str, *, step: str) -> None:
        dest = os.path.join(os.path.expanduser("~"), dest) if not os.path.isabs(dest) else dest
        r = subprocess.run(["rsync", "-a", "--mkpath", src, dest], capture_output=True, text=True)
        if r.returncode != 0:
            raise step_error(step, self.host, r.returncode, r.stderr)


@dataclass
class SetupReport:
    """Which steps ran and which were cached on one host."""

    host: str
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)

    def line(self, image: str) -> str:
        ran = "; ".join(self.ran) or "none"
        cached = "; ".join(self.cached) or "none"
        return f"image {image!r} on {self.host}: ran {ran} | cached {cached}"


def image_hash(image: ImageSpec | None) -> str | None:
    """Content hash of the whole image (None: no image)."""
    if image is None:
        return None
    return hashlib.sha256(image.model_dump_json().encode()).hexdigest()[:16]


def step_label(i: int, step: ImageStep) -> str:
    """How reports and errors name a step: ``2:pip_install numpy`` (names of secrets, never values)."""
    what = " ".join(step.args) if step.kind != "set_env_vars" else ",".join(sorted(step.env))
    return f"{i}:{step.kind} {what}".strip()


def _keys(image: ImageSpec) -> list[str]:
    """One key per step: the hash of the docker image and every step up to and including it."""
    h = hashlib.sha256((image.docker or "").encode())
    out = []
    for step in image.steps:
        h.update(step.model_dump_json().encode())
        out.append(h.copy().hexdigest()[:20])
    return out


_PARENT_PTH = """import os, subprocess, sys
venv = sys.argv[1]
purelib = subprocess.check_output([venv + "/bin/python", "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
parents = [d for d in sys.path if d.endswith("site-packages")]
with open(os.path.join(purelib, "_tether_parent.pth"), "w") as f:
    f.write("".join("import site; site.addsitedir(%r)\\n" % d for d in parents))
"""


def _q(path: str) -> str:
    """A path for a shell command: a leading ``$HOME/`` stays expandable, the rest is quoted."""
    if path.startswith("$HOME/"):
        return '"$HOME"/' + shlex.quote(path[len("$HOME/"):])
    return shlex.quote(path)


def _script(step: ImageStep, *, python: str, venv: str | None, home_python: str) -> str | None:
    """The shell of one step (None: done by the caller, e.g. rsync / env vars / secrets)."""
    q = " ".join(shlex.quote(a) for a in step.args)
    py = f"{venv}/bin/python" if venv else python
    if step.kind == "pip_install":
        return f"{_q(py)} -m pip install -q --disable-pip-version-check {q}"
    if step.kind == "uv_install":
        return ('UV="$(command -v uv || true)"; [ -n "$UV" ] || { echo "uv is not on this host: use pip_install, '
                'or install uv in an earlier run_bash step" >&2; exit 127; }; '
                f'"$UV" pip install -q --python {_q(py)} {q}')
    if step.kind == "conda_install":
        return ('command -v conda >/dev/null || { echo "conda is not on this host: conda steps need conda '
                'installed (or a docker image with it on a sky cluster)" >&2; exit 127; }; '
                f"conda install -y -q {q}")
    if step.kind == "run_bash":
        return f"cd ~ && {step.args[0]}" if step.args else "true"
    if step.kind == "set_venv":
        # a venv that sees the daemon's packages after its own, so tether itself imports in it
        return (f"set -e; P={shlex.quote(step.args[0])}; case \"$P\" in /*) ;; *) P=\"$HOME/$P\";; esac; "
                f'test -x "$P/bin/python" || {shlex.quote(home_python)} -m venv "$P"\n'
                f'{shlex.quote(home_python)} - "$P" <<\'TETHER_EOF\'\n{_PARENT_PTH}TETHER_EOF\n')
    return None


def apply_image(runner: Runner, image: ImageSpec, *, daemon_dir: str, python: str) -> SetupReport:
    """Run the image's steps that this host has not run yet (see the module doc); returns what ran/was cached.

    ``daemon_dir``: tether's folder on the host; ``python``: the python of the daemon's venv."""
    if image.docker:
        raise ConfigError(f"image {image.name!r} starts from docker image {image.docker!r}: docker images need a "
                          f"sky cluster (SkyPilot runs them); {runner.host} is a plain host",
                          hint="drop from_docker() for ssh and local clusters, or use a sky cluster")
    d = shlex.quote(daemon_dir)
    keys = _keys(image)
    done = set(runner.run(f"mkdir -p {d}/image; ls {d}/image", step="image").split())
    report = SetupReport(runner.host)
    env: dict[str, str] = {}
    venv: str | None = None
    for i, (step, key) in enumerate(zip(image.steps, keys, strict=True)):
        label = step_label(i, step)
        if step.kind == "set_env_vars":
            env.update(step.env)
        if step.kind == "set_venv":
            venv = step.args[0] if step.args[0].startswith("/") else f"$HOME/{step.args[0]}"
        if key in done:
            report.cached.append(label)
            continue
        if step.kind == "rsync":
            runner.rsync(step.args[0], step.args[1], step=label)
        elif step.kind not in ("set_env_vars", "sync_secrets"):
            script = _script(step, python=python, venv=venv, home_python=python)
            assert script is not None
            runner.run(script, step=label)
        runner.run(f"touch {d}/image/{key}", step="image")
        report.ran.append(label)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    runner.run(f"umask 077; cat > {d}/image.env <<'TETHER_EOF'\n" + "\n".join(lines) + "\nTETHER_EOF\n"
               + (f'echo "{venv}/bin/python" > {d}/image.venv' if venv else f"rm -f {d}/image.venv"), step="image")
    return report


def local_image_env(daemon_dir: Path) -> tuple[dict[str, str], str]:
    """The env vars and python the local daemon runs with after :func:`apply_image` (none: this python)."""
    env: dict[str, str] = {}
    text = (daemon_dir / "image.env").read_text() if (daemon_dir / "image.env").exists() else ""
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k] = shlex.split(v)[0] if v else ""
    venv = daemon_dir / "image.venv"
    python = os.path.expandvars(venv.read_text().strip()) if venv.exists() else sys.executable
    return env, python


def report_json(reports: list[SetupReport]) -> str:
    return json.dumps({r.host: {"ran": r.ran, "cached": r.cached} for r in reports})


class ImagePrep:
    """The ``prepare`` hook of :func:`~tether.compute.bootstrap.bootstrap_hosts` for an image: applies it on each
    host (in the bootstrap's threads) and keeps the reports."""

    def __init__(self, image: ImageSpec) -> None:
        self.image = image
        self.reports: list[SetupReport] = []

    def __call__(self, target: SSHTarget, info: DaemonInfo) -> None:
        rdir = info.remote_dir
        self.reports.append(apply_image(SSHRunner(target), self.image, daemon_dir=rdir,
                                        python=f"{rdir}/venv/bin/python"))

    def announce(self) -> dict[str, dict[str, list[str]]]:
        """Print which steps ran and which were cached on each host (stderr); return the same as data."""
        for r in self.reports:
            print(r.line(self.image.name), file=sys.stderr)
        return {r.host: {"ran": r.ran, "cached": r.cached} for r in self.reports}


def setup_script(image: ImageSpec, *, daemon_dir: str, python: str) -> str:
    """The image's steps as one shell script for a launch's setup (SkyPilot runs it on every node): each step
    behind its marker, so a relaunch of the same image skips the steps it already ran. ``rsync`` steps are
    :func:`file_mounts` (SkyPilot copies them before setup); ``sync_secrets`` are delivered at deploy."""
    keys = _keys(image)
    lines = [f"mkdir -p {daemon_dir}/image"]
    env: dict[str, str] = {}
    venv: str | None = None
    for i, (step, key) in enumerate(zip(image.steps, keys, strict=True)):
        if step.kind == "set_env_vars":
            env.update(step.env)
        if step.kind == "set_venv":
            venv = step.args[0] if step.args[0].startswith("/") else f"$HOME/{step.args[0]}"
        script = _script(step, python=python, venv=venv, home_python=python)
        if script is None:
            continue
        label = shlex.quote(step_label(i, step))
        lines.append(f"if [ ! -e {daemon_dir}/image/{key} ]; then echo tether image step {label}; "
                     f"( {script.strip()}\n) || {{ echo tether image step {label} failed >&2; exit 1; }}; "
                     f"touch {daemon_dir}/image/{key}; fi")
    exports = "\\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    lines.append(f"printf '%b\\n' {shlex.quote(exports)} > {daemon_dir}/image.env")
    lines.append(f'echo "{venv}/bin/python" > {daemon_dir}/image.venv' if venv else f"rm -f {daemon_dir}/image.venv")
    return "\n".join(lines) + "\n"


def file_mounts(image: ImageSpec | None) -> dict[str, str]:
    """The image's ``rsync`` steps as SkyPilot file mounts (remote path → local path)."""
    out: dict[str, str] = {}
    for step in image.steps if image is not None else []:
        if step.kind == "rsync":
            src, dest = step.args
            there = dest if dest.startswith(("/", "~")) else f"~/{dest}"
            # like rsync: ``src/`` (contents) lands in dest, ``src`` in dest/<its name>
            out[there if src.endswith("/") else f"{there}/{os.path.basename(src)}"] = src.rstrip("/")
    return out
