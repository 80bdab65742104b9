"""apply_memory_limit and classify_exit on real processes: a real allocation past a real limit.

The cgroup tests run on the memory cgroup this machine has, v1 or v2 (``daemon/memory.py`` handles both); where
neither can be written they skip, which fails CI (``tests/allowed_skips.txt`` does not list them). The layout
of the other version is checked on a fake cgroup tree (``_PROC_SELF`` pointed at a fake ``/proc/self``): the
files written for a limit and the counters read back from a dead worker's cgroup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tether.daemon import memory
from tether.daemon.memory import (
    _memory_cgroup_dir,
    _memory_hierarchy,
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
    print(limit.mode, limit.cgroup_version, flush=True)
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
    not _cgroup_writable(), reason="no writable memory cgroup here (neither a v1 memory hierarchy nor cgroup v2 "
                                   "giving the memory controller to this process's cgroup)"
)
HERE = _memory_hierarchy()
VERSION = str(HERE.version) if HERE else "None"


@needs_cgroup
def test_cgroup_limit_gets_the_worker_oom_killed_and_the_exit_is_classified_from_its_cgroup() -> None:
    rc, pid, out = _run("256MB", "cgroup", 600)
    assert out.split()[:2] == ["cgroup", VERSION]
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
    assert rc == 0 and "allocated 600" in out and out.split()[:2] == ["cgroup", VERSION]
    assert not _tether_cgroups(), "a clean exit leaves its cgroup and removes it"


def test_rlimit_limit_turns_the_allocation_into_memory_error() -> None:
    rc, _pid, out = _run("256MB", "rlimit", 600)
    assert out.split() == ["rlimit", "None", "MemoryError"] and rc == 3
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


# -- the layout of either version, on a fake cgroup tree ---------------------------------------------------------
def _fake_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts: list[str], cgroup: str) -> Path:
    """A fake ``/proc/self`` (mountinfo + cgroup) whose cgroup file systems are folders under ``tmp_path/fs``."""
    proc, fs = tmp_path / "proc", tmp_path / "fs"
    proc.mkdir()
    fs.mkdir()
    (proc / "mountinfo").write_text("".join(line.format(fs=fs) + "\n" for line in mounts))
    (proc / "cgroup").write_text(cgroup)
    monkeypatch.setattr(memory, "_PROC_SELF", proc)
    return fs


def _cgroup_dir(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


V2_MOUNT = "35 24 0:30 / {fs}/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate"
V1_MEMORY = "36 24 0:31 / {fs}/memory rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,memory"
V1_CPU = "37 24 0:32 / {fs}/cpu rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct"


def test_cgroup_v2_worker_cgroup_goes_beside_the_daemons_with_memory_max(tmp_path, monkeypatch) -> None:
    fs = _fake_proc(tmp_path, monkeypatch, [V2_MOUNT], "0::/user.slice/daemon.scope\n")
    unified = fs / "unified"
    _cgroup_dir(unified / "user.slice", {"cgroup.subtree_control": "cpu memory pids"})
    home = _cgroup_dir(unified / "user.slice" / "daemon.scope", {"cgroup.controllers": "cpu memory pids",
                       "cgroup.subtree_control": "", "cgroup.procs": ""})
    group = _cgroup_dir(unified / "user.slice" / f"tether-{os.getppid()}-{os.getpid()}", {"memory.swap.max": "max"})
    at_exit: list[tuple] = []
    monkeypatch.setattr(memory.atexit, "register", lambda fn, *args: at_exit.append((fn, *args)))

    assert _memory_hierarchy() == memory._Hierarchy(2, home, unified / "user.slice")
    limit = apply_memory_limit("256MB", mode="cgroup")

    assert (limit.mode, limit.cgroup_version, limit.cgroup) == ("cgroup", 2, str(group))
    assert (group / "memory.max").read_text() == str(256 * 2**20)
    assert (group / "memory.swap.max").read_text() == "0"  # no swapping past the limit
    assert (group / "cgroup.procs").read_text() == str(os.getpid())
    assert not (group / "memory.limit_in_bytes").exists()  # nothing of v1's layout
    (fn, *args), = at_exit
    fn(*args)  # a clean exit moves back to the cgroup it started in (v2: the daemon's, not the parent)
    assert (home / "cgroup.procs").read_text() == str(os.getpid())


def test_cgroup_v2_counters_of_a_dead_worker_make_its_exit_an_oom(tmp_path, monkeypatch) -> None:
    fs = _fake_proc(tmp_path, monkeypatch, [V2_MOUNT], "0::/user.slice/daemon.scope\n")
    unified = fs / "unified"
    _cgroup_dir(unified / "user.slice" / "daemon.scope", {"cgroup.controllers": "memory", "cgroup.procs": ""})
    dead = _cgroup_dir(unified / "user.slice" / f"tether-{os.getpid()}-4242", {"cgroup.procs": "",
                       "memory.events": "low 0\nhigh 0\nmax 37\noom 1\noom_kill 1\noom_group_kill 0\n",
                       "memory.peak": str(256 * 2**20), "memory.max": str(256 * 2**20)})
    removed: list[Path] = []
    monkeypatch.setattr(memory, "_remove_cgroup", removed.append)

    ev = exit_evidence(4242)
    assert {k: ev[k] for k in ("oom_kill", "failcnt", "max_usage", "limit")} == {
        "oom_kill": 1, "failcnt": 37, "max_usage": 256 * 2**20, "limit": 256 * 2**20}
    assert ev["cgroup"] == str(dead) and removed == [dead]  # read once, then removed
    oom = classify_exit(-signal.SIGKILL, memory_limit="256MB", evidence=None)  # how the daemon calls it
    assert isinstance(oom, OutOfMemory) and oom.details["evidence"]["oom_kill"] == 1
    (dead / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    (dead / "memory.peak").write_text(str(30 * 2**20))
    died = classify_exit(-signal.SIGKILL, memory_limit="256MB", evidence={"pid": 4242, "vmstat_oom_kill": 10**9})
    assert isinstance(died, WorkerDied) and died.details["evidence"]["oom_kill"] == 0


def test_cgroup_v2_root_cgroup_keeps_worker_cgroups_inside_it(tmp_path, monkeypatch) -> None:
    fs = _fake_proc(tmp_path, monkeypatch, [V2_MOUNT], "0::/\n")
    root = _cgroup_dir(fs / "unified", {"cgroup.controllers": "cpu memory", "cgroup.subtree_control": "cpu memory"})
    assert _memory_hierarchy() == memory._Hierarchy(2, root, root)


@pytest.mark.parametrize(
    ("cgroup", "controllers", "why"),
    [
        ("0::/\n", "cpu memory", "a namespace's root cgroup with processes cannot give memory to children"),
        ("0::/app.scope\n", "cpu pids", "the memory controller is not given to this cgroup"),
    ],
)
def test_cgroup_v2_without_a_usable_memory_controller_refuses_cgroup_mode(
    tmp_path, monkeypatch, cgroup: str, controllers: str, why: str
) -> None:
    fs = _fake_proc(tmp_path, monkeypatch, [V2_MOUNT], cgroup)
    own = fs / "unified" / cgroup.strip().removeprefix("0::/")
    _cgroup_dir(own, {"cgroup.controllers": controllers, "cgroup.subtree_control": ""})
    assert _memory_hierarchy() is None, why
    with pytest.raises(ConfigError, match="memory cgroup"):
        apply_memory_limit("256MB", mode="cgroup")  # (auto would fall back to the rlimit)
    assert exit_evidence(4242) == {}


def test_a_cgroup_v1_memory_hierarchy_wins_over_the_unified_one(tmp_path, monkeypatch) -> None:
    fs = _fake_proc(tmp_path, monkeypatch, [V1_CPU, V2_MOUNT, V1_MEMORY],
                    "5:cpu,cpuacct:/\n4:memory:/jobs/daemon\n0::/\n")
    own = _cgroup_dir(fs / "memory" / "jobs" / "daemon")
    _cgroup_dir(fs / "unified", {"cgroup.controllers": "", "cgroup.subtree_control": ""})
    assert _memory_hierarchy() == memory._Hierarchy(1, own, own)
    group = _cgroup_dir(own / f"tether-{os.getppid()}-{os.getpid()}", {"memory.memsw.limit_in_bytes": "9"})
    monkeypatch.setattr(memory.atexit, "register", lambda fn, *args: None)
    limit = apply_memory_limit("256MB", mode="cgroup")
    assert (limit.cgroup_version, limit.cgroup) == (1, str(group))
    assert (group / "memory.limit_in_bytes").read_text() == str(256 * 2**20)
    assert (group / "memory.memsw.limit_in_bytes").read_text() == str(256 * 2**20)
