"""apply_memory_limit and classify_exit on real processes: a real allocation past a real limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tether.daemon.memory import (
    _memory_cgroup_dir,
    apply_memory_limit,
    baseline_evidence,
    classify_exit,
    exit_evidence,
)
from tether.errors import ConfigError, OutOfMemory, WorkerDied

# Allocates (and touches) the given number of MiB under a limit applied the way a worker does at start.
CHILD = textwrap.dedent(
    """
    import sys
    from tether.daemon.memory import apply_memory_limit
    limit = apply_memory_limit(sys.argv[1], mode=sys.argv[2])
    print(limit.mode, flush=True)
    try:
        data = b"\\x01" * (int(sys.argv[3]) * 2**20)
    except MemoryError:
        print("MemoryError", flush=True)
        sys.exit(3)
    print("allocated", len(data) // 2**20, flush=True)
    """
)


def _cgroup_writable() -> bool:
    root = _memory_cgroup_dir()
    return root is not None and os.access(root, os.W_OK)


def _run(limit: str, mode: str, mib: int) -> tuple[int, int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, limit, mode, str(mib)], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, proc.pid, out


def _tether_cgroups() -> list[Path]:
    root = _memory_cgroup_dir()
    return sorted(root.glob(f"tether-{os.getpid()}-*")) if root else []


needs_cgroup = pytest.mark.skipif(
    not _cgroup_writable(), reason="no writable cgroup v1 memory controller here"
)


@needs_cgroup
def test_cgroup_limit_gets_the_worker_oom_killed_and_the_exit_is_classified_from_its_cgroup() -> None:
    rc, pid, out = _run("256MB", "cgroup", 600)
    assert out.split()[0] == "cgroup"
    assert rc == -signal.SIGKILL and "allocated" not in out
    oom = classify_exit(rc, memory_limit="256MB", evidence={"pid": pid})
    assert isinstance(oom, OutOfMemory)
    assert oom.details["evidence"]["oom_kill"] >= 1
    assert oom.details["signal"] == "SIGKILL" and oom.details["memory_limit"] == 256 * 2**20
    assert not _tether_cgroups(), "the dead worker's cgroup is removed once read"


@needs_cgroup
def test_daemon_without_pid_finds_its_dead_workers_cgroup() -> None:
    rc, _pid, _ = _run("256MB", "cgroup", 600)
    oom = classify_exit(rc, memory_limit=256 * 2**20, evidence=None)  # how the daemon calls it
    assert isinstance(oom, OutOfMemory) and oom.details["evidence"]["oom_kill"] >= 1
    assert not _tether_cgroups()


@needs_cgroup
def test_cgroup_limit_lets_a_fitting_allocation_through_and_cleans_up_on_exit() -> None:
    rc, _pid, out = _run("1GB", "cgroup", 600)
    assert rc == 0 and "allocated 600" in out
    assert not _tether_cgroups(), "a clean exit leaves its cgroup and removes it"


def test_rlimit_limit_turns_the_allocation_into_memory_error() -> None:
    rc, _pid, out = _run("256MB", "rlimit", 600)
    assert out.split() == ["rlimit", "MemoryError"] and rc == 3
    rc, _pid, out = _run("1GB", "rlimit", 600)
    assert rc == 0 and "allocated 600" in out


def test_auto_mode_limits_memory_one_way_or_the_other() -> None:
    rc, pid, out = _run("256MB", "auto", 600)
    assert "allocated" not in out
    if out.split()[0] == "cgroup":
        assert isinstance(classify_exit(rc, memory_limit="256MB", evidence={"pid": pid}), OutOfMemory)
    else:
        assert "MemoryError" in out


def test_a_plain_kill_without_memory_evidence_is_worker_died() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    before = baseline_evidence()
    proc.send_signal(signal.SIGKILL)
    rc = proc.wait()
    died = classify_exit(rc, memory_limit="1GB", evidence={"pid": proc.pid, **before})
    assert isinstance(died, WorkerDied) and not isinstance(died, OutOfMemory)
    assert died.details["signal"] == "SIGKILL" and "SIGKILL" in died.message


@pytest.mark.parametrize(
    ("returncode", "evidence", "is_oom"),
    [
        (-6, {"stderr": "terminate called after throwing an instance of 'std::bad_alloc'"}, True),
        (1, {"stderr": "Traceback (most recent call last):\n  ...\nMemoryError"}, True),
        (137, {"oom_kill": 1}, True),
        (-9, {"oom_kill": 0, "peak_rss": 250 * 2**20}, True),
        (-9, {"oom_kill": 0, "peak_rss": 20 * 2**20}, False),
        (-11, {"oom_kill": 0}, False),
        (1, {"oom_kill": 0, "stderr": "ValueError: bad"}, False),
        (0, {"oom_kill": 0}, False),
    ],
)
def test_exit_classification_uses_the_evidence(returncode: int, evidence: dict, is_oom: bool) -> None:
    result = classify_exit(returncode, memory_limit="256MB", evidence=evidence)
    assert isinstance(result, OutOfMemory) is is_oom
    assert isinstance(result, WorkerDied | OutOfMemory)
    assert result.details["returncode"] == returncode


def test_exit_evidence_for_an_unknown_pid_is_empty() -> None:
    assert exit_evidence(2**22 + 12345) == {}


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        apply_memory_limit(0)
    with pytest.raises(ConfigError):
        apply_memory_limit("1GB", mode="swap")
