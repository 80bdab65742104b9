"""Real SSH hosts for tests: network namespaces joined to the root namespace through veth pairs on a bridge.

Each host is a namespace with its own address in a private /24, its own loopback and a real ``sshd``
(generated host and client keys). The hosts share this machine's filesystem, so each gets its own HOME
(sshd ``SetEnv HOME=...``). ``link_down(i)`` cuts host i off (``ip link set ... down``); ``stop()`` kills
every process in the namespaces and removes the namespaces, veths and bridge.

The :func:`netns_hosts` fixture (two hosts per test module) and other fixtures use :func:`hosts_or_skip` (the
hosts, or the test skipped where this machine cannot make them) and :func:`pinned_tether_wheel` (the tether
wheel the hosts install, built once).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tether.compute.bootstrap import build_wheel

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def available() -> str | None:
    """None when namespaces + sshd can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "ssh", "ssh-keygen", "rsync"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/system-deps.sh installs it)"
    if not Path(SSHD).exists():
        return "sshd not installed (scripts/system-deps.sh installs openssh-server)"
    probe = f"tthprobe{secrets.token_hex(2)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{secrets.randbelow(200) + 40}.{secrets.randbelow(250) + 1}.0/24")
        if f"{net.network_address}".rsplit(".", 1)[0] + "." not in used:
            return net
    raise RuntimeError("no free private /24 found")


@dataclass
class Host:
    """One namespace host: its address, HOME and the sshd running in it."""

    index: int
    namespace: str
    address: str
    root_veth: str
    home: Path
    sshd: subprocess.Popen | None = None


@dataclass
class NetnsHosts:
    """``n`` SSH hosts on a private /24; use as a context manager."""

    n: int
    workdir: Path
    user: str = "root"
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.bridge = f"tthb{self.tag}"
        self.subnet = _free_subnet()
        self.key = self.workdir / "client_key"

    # -- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self) -> NetnsHosts:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        addrs = list(self.subnet.hosts())
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{addrs[0]}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i in range(self.n):
            host = Host(
                i, f"tether-{self.tag}-h{i}", str(addrs[9 + i]), f"tth{self.tag}r{i}", self.workdir / f"h{i}"
            )
            self.hosts.append(host)
            peer = f"tth{self.tag}p{i}"
            _run("ip", "netns", "add", host.namespace)
            _run("ip", "link", "add", host.root_veth, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", host.namespace)
            _run("ip", "-n", host.namespace, "link", "set", peer, "name", "eth0")
            _run("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _run("ip", "-n", host.namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", host.namespace, "link", "set", "lo", "up")
            _run("ip", "link", "set", host.root_veth, "master", self.bridge)
            _run("ip", "link", "set", host.root_veth, "up")
            self._start_sshd(host)
        for host in self.hosts:
            self._wait_port(host.address, 22)

    def _start_sshd(self, host: Host) -> None:
        d = host.home / "sshd"
        (host.home / "home").mkdir(parents=True, exist_ok=True)
        d.mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
        shutil.copy(f"{self.key}.pub", d / "authorized_keys")
        cfg = d / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}:22",
                    f"HostKey {d / 'host_key'}",
                    f"AuthorizedKeysFile {d / 'authorized_keys'}",
                    f"PidFile {d / 'sshd.pid'}",
                    "PermitRootLogin yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                    "ClientAliveInterval 2",
                    "ClientAliveCountMax 3",
                    f"SetEnv HOME={host.home / 'home'}",
                    "",
                ]
            )
        )
        log = (d / "sshd.log").open("w")
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, SSHD, "-D", "-e", "-f", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def _wait_port(address: str, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((address, port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill every process in the namespaces, then remove namespaces, veths and the bridge."""
        for host in self.hosts:
            pids = subprocess.run(
                ["ip", "netns", "pids", host.namespace], capture_output=True, text=True
            ).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            if host.sshd is not None:
                host.sshd.kill()
                host.sshd.wait()
            subprocess.run(["ip", "link", "del", host.root_veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.hosts = []

    # -- faults -------------------------------------------------------------------------------------------

    def link_down(self, i: int) -> None:
        _run("ip", "link", "set", self.hosts[i].root_veth, "down")

    def link_up(self, i: int) -> None:
        _run("ip", "link", "set", self.hosts[i].root_veth, "up")

    # -- what a cluster spec needs ------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.hosts]

    @property
    def ssh_creds(self) -> dict[str, str]:
        return {"user": self.user, "key": str(self.key)}


@contextlib.contextmanager
def hosts_or_skip(n: int, workdir: Path) -> Iterator[NetnsHosts]:
    """``n`` netns hosts under ``workdir``, removed afterwards; the test is skipped where :func:`available` says
    they cannot be made here."""
    reason = available()
    if reason:
        pytest.skip(f"netns hosts unavailable: {reason}")
    with NetnsHosts(n, workdir) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def netns_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsHosts]:
    """Two real sshd hosts in network namespaces for a test module; removed afterwards (a conftest imports it)."""
    with hosts_or_skip(2, tmp_path_factory.mktemp("hosts")) as hosts:
        yield hosts


@contextlib.contextmanager
def pinned_tether_wheel(where: Path) -> Iterator[Path]:
    """The tether wheel, built once and copied into ``where``, named by ``TETHER_WHEEL`` until the block ends: edits
    to the tree during the run do not make the hosts reinstall."""
    src = build_wheel()
    wheel = where / src.name
    shutil.copy(src, wheel)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TETHER_WHEEL", str(wheel))
        yield wheel
