"""Cold bring-up of static SSH hosts (network-namespace hosts with their own sshd; needs root), by phase.

Prints, beside the same-run baselines ``ssh host true`` (a fresh connection) and a bare ``python3 -m venv`` on
the host: the first use (empty local caches: the wheel is built, the wheelhouse downloaded), a second host (both
cached locally), a host on the pip fallback (a wheelhouse without uv's wheel) and a repeat on an unchanged host.

.venv/bin/python bench/bringup.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _wall(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    from tests.compute.hosts import NetnsHosts, available

    reason = available()
    if reason:
        print(f"bring-up benchmark skipped: {reason}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="tether-bringup-"))
    os.environ["TETHER_HOME"] = str(tmp / "home")
    os.environ["TETHER_CACHE_DIR"] = str(tmp / "cache")  # first use: nothing built or downloaded yet
    os.environ.pop("TETHER_WHEEL", None)
    os.environ.pop("TETHER_WHEELHOUSE", None)

    from tether.compute.bootstrap import SSHTarget, bootstrap_hosts, stop_daemon
    from tether.compute.sshtarget import control_dir

    mux = str(control_dir(tmp / "home"))
    with NetnsHosts(3, tmp / "hosts") as hosts:
        plain = [SSHTarget.from_creds(a, hosts.ssh_creds, tmp / "known_hosts") for a in hosts.addresses]
        targets = [replace(t, control_dir=mux) for t in plain]
        ssh_true = statistics.median(_wall(plain[0].ssh_argv("true")) for _ in range(5))
        venv = statistics.median(
            _wall(plain[0].ssh_argv(f"rm -rf /tmp/tb-venv-{i}; python3 -m venv /tmp/tb-venv-{i}")) for i in range(3)
        )
        print(f"baseline: ssh host true {ssh_true:.2f} s (median of 5, new connection each); "
              f"python3 -m venv on the host (with pip, over ssh) {venv:.2f} s (median of 3)")  # fmt: skip

        def up(label: str, t: SSHTarget) -> None:
            w = time.perf_counter()
            info = bootstrap_hosts([t], show_progress=False)[0]
            print(f"{label}: {time.perf_counter() - w:.2f} s wall\n  {info.report()}")

        up("first use (wheel built, wheelhouse downloaded)", targets[0])
        up("second host (wheel and wheelhouse cached locally)", targets[1])
        up("same host again, nothing changed", targets[1])
        house = next((tmp / "cache" / "wheelhouse").glob("cp*-*"))
        no_uv = tmp / "wheelhouse-no-uv"
        shutil.copytree(house, no_uv, ignore=shutil.ignore_patterns("uv-*.whl"))
        os.environ["TETHER_WHEELHOUSE"] = str(no_uv)
        up("third host, pip fallback (no uv in the wheelhouse)", targets[2])
        for t in targets:
            stop_daemon(t, "$HOME/.tether/daemon")
            t.close()


if __name__ == "__main__":
    main()
