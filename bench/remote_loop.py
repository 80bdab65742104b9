"""The remote deploy loop: edit one file → ``.to()`` → first call, on an SSH host (a network-namespace host with its
own sshd, as in tests/compute/hosts.py; needs root), code synced as files; on a small repository and on one of
5,000 files / 100 MB where only that file changed. Beside it, in the same run: one ``ssh host true`` and one
``rsync`` of the unchanged 100 MB tree (a new ssh connection each), the floor of a sync that opens a connection.

Run: .venv/bin/python bench/remote_loop.py [--reps 10]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_repo(root: Path, files: int, total_mb: int) -> None:
    """A project of ``files`` files: small modules, and data files making it ``total_mb`` MB in all."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'looprepo'\nversion = '0'\n")
    pkg = root / "pkgdata"
    pkg.mkdir(parents=True, exist_ok=True)
    data_files = 10 if total_mb else 0
    for i in range(files - data_files - 2):
        sub = pkg / f"m{i // 500}"
        sub.mkdir(exist_ok=True)
        (sub / f"mod{i}.py").write_text(f"VALUE = {i}\n" + "# padding\n" * 50)
    for i in range(data_files):
        (pkg / f"blob{i}.bin").write_bytes(os.urandom(total_mb * 1024 * 1024 // data_files))


def loop(cluster: Any, root: Path, reps: int) -> list[float]:
    import tether

    sys.path.insert(0, str(root))
    times = []
    try:
        for i in range(reps + 1):
            # each edit changes the file's size: rsync's quick check (size + mtime, whole seconds) skips a file
            # edited to the same size within the second of the last sync, and the old code would run
            (root / "loopmod.py").write_text(f"def version():\n    return {i}\n" + "#" * i)
            t = time.perf_counter()
            mod = importlib.import_module("loopmod") if i == 0 else importlib.reload(sys.modules["loopmod"])
            f = tether.function(mod.version).to(cluster)
            got = f()
            assert got == i, (got, i)
            times.append(time.perf_counter() - t)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("loopmod", None)
    return times  # times[0]: the first sync of the tree


def ssh_floor(hosts: Any, root: Path, reps: int) -> tuple[float, float]:
    creds = hosts.ssh_creds
    base = ["-i", creds["key"], "-p", str(creds.get("port", 22)), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]
    dest = f"{creds['user']}@{hosts.addresses[0]}"
    ssh_t, rsync_t = [], []
    subprocess.run(["rsync", "-a", "-e", " ".join(["ssh", *base]), f"{root}/", f"{dest}:/tmp/floor/"], check=True,
                   capture_output=True)
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(["ssh", *base, dest, "true"], check=True, capture_output=True)
        ssh_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["rsync", "-a", "--delete", "-e", " ".join(["ssh", *base]), f"{root}/", f"{dest}:/tmp/floor/"],
                       check=True, capture_output=True)
        rsync_t.append(time.perf_counter() - t)
    return statistics.median(ssh_t), statistics.median(rsync_t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tether-loop-"))
    os.environ["TETHER_HOME"] = str(tmp / "home")
    os.environ.setdefault("TETHER_PROGRESS", "0")

    import tether
    from tests.compute.hosts import NetnsHosts, available
    from tether.compute.bootstrap import build_wheel

    reason = available()
    if reason:
        print(f"remote loop benchmark not run: {reason}")
        return
    os.environ["TETHER_WHEEL"] = str(build_wheel())
    small, big = tmp / "small", tmp / "big"
    make_repo(small, 20, 0)
    make_repo(big, 5000, 100)
    rows = []
    with NetnsHosts(1, tmp / "hosts") as hosts:
        c = tether.cluster(name="loop", host=hosts.addresses, ssh_creds=hosts.ssh_creds).up_if_not()
        try:
            s = loop(c, small, a.reps)
            b = loop(c, big, a.reps)
            ssh_s, rsync_s = ssh_floor(hosts, big, 5)
        finally:
            c.teardown()
    rows.append(("remote deploy loop, small repo: edit → .to() → first call, median s", f"{statistics.median(s[1:]):.3f}",
                 f"first sync {s[0]:.2f} s"))
    rows.append(("remote deploy loop, 5,000 files / 100 MB, one file changed, median s",
                 f"{statistics.median(b[1:]):.3f}", f"first sync {b[0]:.2f} s"))
    rows.append(("floor: ssh host true / rsync of the unchanged 100 MB tree (new connection each), median s",
                 f"{ssh_s:.3f} / {rsync_s:.3f}", "-"))
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'tether':<12}  baseline (same run)")
    for name, ours, base in rows:
        print(f"{name:<{width}}  {ours:<12}  {base}")


if __name__ == "__main__":
    main()
