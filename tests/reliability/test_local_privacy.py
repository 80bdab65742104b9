"""Local files are private from creation: another unix user on the same machine reads none of tether's state
(tokens, the registry's saved env vars, stored objects, logs, code snapshots) and cannot hold its locks.

CI runs as root, so each test makes a second, unprivileged user (``tether-x<pid>``, removed at the end; ones a
killed run left behind are removed too) and runs the attacker's side as that user with ``runuser``. The state
lives in a 0755 folder under /tmp, as a home directory would: the other user can reach it, and only tether's own
modes keep them out.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tests.core import services as svc
from tests.processes import teardown_clusters
from tether.api.records import snapshot_code
from tether.home import clusters_dir, file_lock, tether_home

PREFIX = "tether-x"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_users() -> None:
    """Users a killed run of this module left behind (their creator's pid is gone)."""
    for entry in pwd.getpwall():
        rest = entry.pw_name[len(PREFIX):]
        if entry.pw_name.startswith(PREFIX) and rest.isdigit() and not _pid_alive(int(rest)):
            subprocess.run(["userdel", entry.pw_name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def intruder() -> Iterator[str]:
    """A second unix user (idempotent: reused if this process made it already), deleted at the end."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root, useradd and runuser to act as a second local user")
    _remove_stale_users()
    name = f"{PREFIX}{os.getpid()}"
    try:
        pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                              capture_output=True, text=True, check=False)
        assert made.returncode in (0, 9), made.stderr  # 9: it exists already
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A 0755 folder under /tmp that the other user can reach (like a 0755 home directory)."""
    base = Path(tempfile.mkdtemp(prefix="tether-priv-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def home(shared: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``$TETHER_HOME`` inside the shared folder, made 0755 as an older tether left it; clusters torn down after."""
    path = shared / "tether-home"
    (path / "clusters").mkdir(parents=True)
    path.chmod(0o755)
    (path / "clusters").chmod(0o755)
    monkeypatch.setenv("TETHER_HOME", str(path))
    monkeypatch.delenv("TETHER_REGISTRY_URL", raising=False)
    monkeypatch.delenv("TETHER_REGISTRY_DB", raising=False)
    try:
        yield path
    finally:
        teardown_clusters(path)


def as_user(user: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _loose(home: Path) -> list[str]:
    """Everything under ``home`` (itself included) that its group or others may read, write or enter."""
    out = [f"{p} {oct(_mode(p))}" for p in [home, *home.rglob("*")]
           if not p.is_symlink() and _mode(p) & 0o077]
    return out


def test_tether_home_is_created_0700_and_an_existing_one_is_tightened(shared, intruder, monkeypatch):
    fresh = shared / "fresh"
    monkeypatch.setenv("TETHER_HOME", str(fresh))
    assert tether_home() == fresh
    assert _mode(fresh) == 0o700
    assert _mode(clusters_dir()) == 0o700
    assert as_user(intruder, "ls", str(fresh)).returncode != 0

    old = shared / "old"
    (old / "clusters").mkdir(parents=True)
    old.chmod(0o755)
    (old / "clusters").chmod(0o755)
    monkeypatch.setenv("TETHER_HOME", str(old))
    assert as_user(intruder, "ls", str(old / "clusters")).returncode == 0  # the attack surface before
    tether_home()
    assert _mode(old) == 0o700
    clusters_dir()
    assert _mode(old / "clusters") == 0o700
    assert as_user(intruder, "ls", str(old / "clusters")).returncode != 0


def test_another_user_reads_nothing_of_a_running_cluster(home, intruder, tmp_path):
    secret = "sk-live-0123456789abcdef-API-KEY"
    c = tether.cluster(name="priv").up_if_not()
    tether.function(svc.add).to(c)
    assert tether.function(svc.add).to(c)(1, 2) == 3
    c.put("stored", {"api_key": secret})
    tether.env(name="keys", env_vars={"OPENAI_API_KEY": secret}).save()  # registry.db holds the key now
    pkg = tmp_path / "code" / "snappkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"KEY = {secret!r}\n")
    (pkg / "__init__.py").chmod(0o644)
    snapshot = snapshot_code(tmp_path / "code", "f" * 64)
    token = c.token
    assert token
    state_dir = home / "clusters" / "priv"
    named = {
        "the client-side state file (raw token)": home / "clusters" / "priv.json",
        "the daemon's token file": state_dir / "token",
        "registry.db (saved env_vars)": home / "registry.db",
        "daemon.log": state_dir / "daemon.log",
        "the deployment manifest": state_dir / "manifest.json",
        "the cluster lock": home / "clusters" / "priv.lock",
        "a code snapshot": snapshot / "snappkg" / "__init__.py",
    }
    objects = [p for p in (state_dir / "objects").rglob("*") if p.is_file()]
    assert objects, "the stored object is on disk"
    named.update({f"stored object {p.name}": p for p in objects})
    for what, path in named.items():
        assert path.exists(), (what, path)
        assert _mode(path) & 0o077 == 0, f"{what} is {oct(_mode(path))}: {path}"
    assert _loose(home) == []
    stolen = []
    for path in [home, *home.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            r = as_user(intruder, "cat", str(path))
            if r.returncode == 0:
                stolen.append(str(path))
            assert token not in r.stdout and secret not in r.stdout, path
    assert stolen == []
    c.teardown()


WATCHER = r"""
import os, sys, time
home, until = sys.argv[1], time.time() + float(sys.argv[2])
seen = set()
while time.time() < until:
    for d, dirs, files in os.walk(home):
        for f in files:
            p = os.path.join(d, f)
            try:
                with open(p, 'rb') as fh:
                    data = fh.read(4096)
            except OSError:
                continue
            if p not in seen:
                seen.add(p)
                print('READ', p, data[:80], flush=True)
print('WATCHED', len(seen), flush=True)
"""


def test_a_watcher_during_daemon_starts_reads_nothing(home, intruder, shared):
    """The other user polls the folder while the daemon starts, three times over."""
    script = shared / "watcher.py"
    script.write_text(WATCHER)
    script.chmod(0o644)
    starts = 3
    watcher = subprocess.Popen(["runuser", "-u", intruder, "--", SYSTEM_PYTHON, str(script), str(home), "600"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tokens = []
    try:
        time.sleep(0.3)
        for i in range(starts):
            c = tether.cluster(name=f"watched{i}").up_if_not()
            tokens.append(c.token)
            c.teardown()
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=30)
    reads = [line for line in out.splitlines() if line.startswith("READ")]
    assert reads == [], "\n".join(reads)
    for token in tokens:
        assert token not in out


def _hold_lock(user: str, path: Path) -> subprocess.Popen[str]:
    """The other user takes ``flock`` on ``path`` and keeps it (until killed)."""
    proc = subprocess.Popen(["runuser", "-u", user, "--", "flock", "--shared", str(path), "sleep", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        probe = subprocess.run(["flock", "--exclusive", "--nonblock", str(path), "true"], check=False)
        if probe.returncode != 0:
            return proc
        time.sleep(0.05)
    out = proc.communicate(timeout=5)[0] if proc.poll() is not None else ""
    _kill(proc)
    pytest.fail(f"the other user could not take the lock: {out}")


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # runuser, flock and its sleep: one process group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def test_a_lock_another_user_holds_does_not_hang_up_if_not(home, intruder):
    lock = home / "clusters" / "priv-lock.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)  # as an older tether left it: 0644 in a 0755 folder
    os.close(fd)
    lock.chmod(0o644)
    holder = _hold_lock(intruder, lock)
    done: list[object] = []

    def up() -> None:
        try:
            done.append(tether.cluster(name="priv-lock").up_if_not())
        except BaseException as exc:  # reported below
            done.append(exc)

    try:
        t = threading.Thread(target=up, daemon=True)
        t.start()
        t.join(45)
        assert done, "up_if_not() hung on a lock file another user holds"
        assert isinstance(done[0], tether.Cluster), done[0]
        assert _mode(lock) == 0o600 and _mode(home) == 0o700
        # and the other user can no longer open it at all
        r = as_user(intruder, "flock", "--shared", "--nonblock", str(lock), "true")
        assert r.returncode != 0
    finally:
        _kill(holder)
        if done and isinstance(done[0], tether.Cluster):
            done[0].teardown()


def test_file_lock_replaces_a_loose_lock_file_and_still_excludes(home):
    """Two lockers of a replaced lock file still exclude each other (the lock is on the file now at the path)."""
    lock = home / "x.lock"
    lock.write_text("")
    lock.chmod(0o644)
    inside: list[int] = []
    done: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                with file_lock(lock):
                    inside.append(1)
                    time.sleep(0.001)
                    assert len(inside) == 1, "two lockers inside at once"
                    inside.pop()
                    done.append(1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(done) == 80
    assert _mode(lock) == 0o600


@pytest.mark.filterwarnings("ignore:'umask' is defined in __main__")  # os.umask goes by value: fine here
def test_deployed_code_keeps_the_callers_umask(home):
    """The daemon runs under umask 077 (its own files are private); the code it runs gets the umask back."""
    old = os.umask(0o022)
    try:
        c = tether.cluster(name="priv-umask").up_if_not()
    finally:
        os.umask(old)
    try:
        umask = tether.function(os.umask).to(c)
        assert umask(0o022) == 0o022  # os.umask returns the worker's umask before the call
        with open(f"/proc/{c.handle.pid}/status") as f:
            daemon_umask = next(line.split()[1] for line in f if line.startswith("Umask:"))
        assert int(daemon_umask, 8) == 0o077
    finally:
        c.teardown()
