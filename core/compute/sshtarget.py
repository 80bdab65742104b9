"""One host reached with the system ``ssh``/``rsync``: its options, commands, copies and step-named errors.

A target with a ``control_dir`` shares one SSH connection between all its commands (OpenSSH ``ControlMaster``):
the first command opens it, later ones ride on it without a new handshake, and it closes after
``ControlPersist`` idle seconds or at :meth:`SSHTarget.close`. The sockets live in a 0700 folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tether.errors import AuthError, ClusterUnavailable, ConfigError
from tether.home import private_dir

__all__ = ["SSHTarget", "control_dir", "step_error"]

_AUTH_RE = re.compile(
    r"Permission denied|Host key verification failed|Too many authentication failures", re.I
)
#: seconds an idle shared connection stays open
CONTROL_PERSIST = 60


def control_dir(base: Path) -> Path:
    """The 0700 folder for shared-connection sockets under ``base`` (``$TETHER_HOME/ssh/mux``). A unix socket path
    may hold ~107 bytes; when ``base`` is too deep for that, a 0700 folder named by its hash under /tmp is used."""
    d = base / "ssh" / "mux"
    if len(str(d)) > 70:  # + "/" + 16-hex name + ssh's 17-char temporary suffix must stay < 108
        d = Path("/tmp") / f"tether-mux-{os.geteuid()}-{hashlib.sha256(str(d).encode()).hexdigest()[:12]}"
    private_dir(d)
    st = d.lstat()
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700 or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{d} (shared ssh connections) is not a 0700 folder of this user",
                          hint="remove it; tether makes it again")  # fmt: skip
    return d


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one host with the system ``ssh``/``rsync``."""

    host: str
    user: str | None = None
    key: str | None = None
    port: int | None = 22  # None: the port the ssh config gives (SkyPilot's 10022 for docker, a probed one on k8s)
    known_hosts: str | None = None
    connect_timeout: int = 5
    config_file: str | None = None  # ``ssh -F``: a config that defines ``host`` (a cluster's own alias)
    control_dir: str | None = None  # share one connection (ControlMaster) with its socket in this 0700 folder

    @classmethod
    def from_creds(
        cls, host: str, creds: dict[str, str] | None, known_hosts: Path | None = None
    ) -> SSHTarget:
        c = dict(creds or {})
        key = os.path.expanduser(c["key"]) if c.get("key") else None
        unknown = set(c) - {"user", "key", "port", "connect_timeout"}
        if unknown:
            raise ConfigError(f"unknown ssh_creds keys {sorted(unknown)}", hint="use user, key, port")
        return cls(host=host, user=c.get("user"), key=key, port=int(c.get("port", 22)),
                   known_hosts=str(known_hosts) if known_hosts else None,
                   connect_timeout=int(c.get("connect_timeout", 5)))  # fmt: skip

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
                "-o", "StrictHostKeyChecking=accept-new"]  # fmt: skip
        if self.config_file:
            opts = ["-F", self.config_file, *opts]
        if self.port is not None:
            opts += ["-p", str(self.port)]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            opts += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.control_path:
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}",
                     "-o", f"ControlPersist={CONTROL_PERSIST}"]  # fmt: skip
        return opts

    @property
    def control_path(self) -> str | None:
        """The socket of this target's shared connection, or None when it opens one connection per command."""
        if not self.control_dir:
            return None
        who = f"{self.dest}:{self.port}:{self.key}:{self.config_file}:{self.known_hosts}"
        return f"{self.control_dir}/{hashlib.sha256(who.encode()).hexdigest()[:16]}"

    def unshared(self) -> SSHTarget:
        """This target without a shared connection (for long-lived ``ssh -N`` tunnels, which must own theirs)."""
        return replace(self, control_dir=None)

    def close(self) -> None:
        """Close the shared connection if one is open (``ssh -O exit``); a no-op otherwise."""
        path = self.control_path
        if path and Path(path).exists():
            subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", self.dest],
                           capture_output=True, timeout=10)  # fmt: skip
            Path(path).unlink(missing_ok=True)

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *self.options(), self.dest, command]

    def run(self, command: str, *, step: str, stdin: str | None = None, timeout: float = 600) -> str:
        """Run a shell command on the host; raise a step-named error with the remote stderr if it fails."""
        try:
            r = _with_handshake_retries(lambda: subprocess.run(
                self.ssh_argv(command), input=stdin, capture_output=True, text=True, timeout=timeout))
        except subprocess.TimeoutExpired as exc:
            raise ClusterUnavailable(f"step {step!r} timed out after {timeout:.0f}s on {self.host}",
                                     details={"step": step, "host": self.host}) from exc  # fmt: skip
        if r.returncode != 0:
            raise step_error(step, self.host, r.returncode, r.stderr)
        return r.stdout

    def rsync(
        self, sources: Iterable[str | Path], remote_dir: str, *, step: str, extra: Iterable[str] = ()
    ) -> None:
        """Copy files/trees to ``remote_dir`` (created if missing); unchanged files are not sent again. A file counts
        as unchanged only when its size and its mtime to the nanosecond match (``--modify-window=-1``): rsync's default
        whole-second check skips an edit made within a second of the last sync that kept the file's size."""
        rsh = " ".join(shlex.quote(a) for a in ["ssh", *self.options()])
        argv = ["rsync", "-a", "--modify-window=-1", "--mkpath", *extra, "-e", rsh, *map(str, sources), f"{self.dest}:{remote_dir}"]
        r = _with_handshake_retries(lambda: subprocess.run(argv, capture_output=True, text=True, timeout=900))
        if r.returncode != 0:
            raise step_error(step, self.host, r.returncode, r.stderr)


_HANDSHAKE_RE = re.compile(r"Connection reset by peer|Connection closed by|kex_exchange_identification", re.I)


def _with_handshake_retries(run: Callable[[], subprocess.CompletedProcess[str]], attempts: int = 3
                            ) -> subprocess.CompletedProcess[str]:
    """Run an ssh/rsync command again (up to ``attempts`` times) when the SSH handshake itself was cut — e.g.
    right after a link comes back. Unreachable hosts, timeouts and refused credentials fail at once."""
    for attempt in range(1, attempts + 1):
        r = run()
        if r.returncode not in (255, 12) or not _HANDSHAKE_RE.search(r.stderr or "") or attempt == attempts:
            return r
        time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def step_error(step: str, host: str, returncode: int, stderr: str) -> ClusterUnavailable | AuthError:
    """The error for a failed remote step: auth failures are AuthError, the rest ClusterUnavailable."""
    tail = stderr.strip()[-2000:]
    details = {"step": step, "host": host, "returncode": returncode, "stderr": tail}
    if returncode == 255 and _AUTH_RE.search(tail):
        hint = ("the host's key changed: remove its line from tether's known_hosts ($TETHER_HOME/ssh/known_hosts)"
                if "Host key verification failed" in tail else "check ssh_creds user/key")  # fmt: skip
        return AuthError(
            f"ssh to {host} refused the credentials (step {step!r}): {tail}", hint=hint, details=details
        )
    if returncode == 255:
        return ClusterUnavailable(f"cannot reach {host} over ssh (step {step!r}): {tail}",
                                  hint="is the host up and reachable?", details=details)  # fmt: skip
    return ClusterUnavailable(f"step {step!r} failed on {host} (exit {returncode}): {tail}",
                              retryable=False, details=details)  # fmt: skip


