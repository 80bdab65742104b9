"""Test helpers that start real tether processes (shared by several test folders)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def registry_server(db: str, workdir: Path, timeout: float = 60.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``tether registry serve`` on a free 127.0.0.1 port as a subprocess; yields (url, process)."""
    ready = workdir / "registry-ready.json"
    log_path = workdir / "registry-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether.registry", "serve", "--db", db, "--port", "0", "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registry server did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield json.loads(ready.read_text())["url"], proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def issue_tokens(db: str, *users: str, teams: dict[str, list[str]] | None = None) -> dict[str, str]:
    """A token for each of ``users``, written to the registry database ``db`` (the members of ``teams`` added
    first); returns user -> token."""
    from tether.registry.store import Store  # SQLAlchemy: only the tests that use a team registry pay for it

    store = Store(db)
    try:
        for team, members in (teams or {}).items():
            for member in members:
                store.add_member(team, member)
        return {who: store.create_token(who) for who in users}
    finally:
        store.close()


def issue_team_tokens(db: str) -> dict[str, str]:
    """Tokens for alice, bob (member of team ml-platform) and carol, written to the registry database ``db``."""
    return issue_tokens(db, "alice", "bob", "carol", teams={"ml-platform": ["bob"]})


def pid_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting to be reaped counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] in "ZX"
    except (OSError, IndexError):
        return True


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Wait until every pid has ended; returns the ones still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if not pid_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not pid_gone(p)]
    return alive


def assert_local_cluster_removed(home: Path, name: str, daemon_pid: int, worker_pids: list[int]) -> None:
    """After a teardown: the daemon and its workers have exited and the cluster's state is gone from disk."""
    alive = wait_gone([daemon_pid, *worker_pids])
    assert not alive, f"still running after teardown: {alive} (daemon {daemon_pid}, workers {worker_pids})"
    clusters = home / "clusters"
    assert not (clusters / f"{name}.json").exists(), "the client-side state file is left"
    assert not (clusters / name).exists(), f"the daemon's state dir is left: {sorted((clusters / name).rglob('*'))}"


def teardown_clusters(home: Path) -> list[str]:
    """Tear down every cluster started under ``$TETHER_HOME`` = ``home`` (a fixture's cleanup, whatever the test did).

    A local daemon that outlives its teardown is killed with its process group. Returns what was cleaned up.
    """
    from tether.api.clusters import Cluster
    from tether.specs import ClusterSpec

    cleaned: list[str] = []
    for state_file in sorted((home / "clusters").glob("*.json")):
        try:
            state = json.loads(state_file.read_text())
            spec = ClusterSpec.model_validate(state["spec"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        pid = state.get("pid") if spec.backend == "local" else None
        with contextlib.suppress(Exception):
            Cluster(spec).teardown()
        if pid and wait_gone([pid], timeout=5):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        cleaned.append(spec.name)
    return cleaned


def host_oom_kills() -> int:
    """The kernel's count of OOM kills on this host (``/proc/vmstat`` oom_kill); 0 where it cannot be read."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def assert_sigkill_is_worker_died(err: BaseException, oom_kills_before: int) -> None:
    """A worker SIGKILLed by hand died of the signal, not of memory: ``WorkerDied``, never ``OutOfMemory`` (which
    would start a needless, paid escalation) — unless the kernel's OOM killer did run meanwhile (another process
    on this host), the one case where the daemon cannot tell and may say ``OutOfMemory``."""
    import tether

    if host_oom_kills() > oom_kills_before:
        assert isinstance(err, (tether.WorkerDied, tether.OutOfMemory)), repr(err)
        return
    assert isinstance(err, tether.WorkerDied), f"a plain SIGKILL was reported as {err!r}"
    assert err.details.get("signal") == "SIGKILL", err.details
    assert err.retryable


def daemons_under(root: Path) -> list[tuple[int, str]]:
    """Live ``tether.daemon`` processes whose ``--state-dir`` lies under ``root``: (pid, state dir)."""
    found: list[tuple[int, str]] = []
    prefix = str(root.resolve()) + os.sep
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "tether.daemon" not in args or "--state-dir" not in args[:-1]:
            continue
        state_dir = args[args.index("--state-dir") + 1]
        if str(Path(state_dir).resolve()).startswith(prefix) and not pid_gone(int(proc.name)):
            found.append((int(proc.name), state_dir))
    return found


def kill_daemons_under(root: Path) -> list[tuple[int, str]]:
    """Kill (with their process groups: their workers) the daemons :func:`daemons_under` finds; returns them."""
    found = daemons_under(root)
    for pid, _ in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:  # a session leader (local backend): its workers share the group
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    return found
