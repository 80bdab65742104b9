"""Where tether keeps its state: ``$TETHER_HOME`` (default ``~/.tether``), private to its user.

The folder and everything tether creates in it are its user's alone (Jupyter's ``secure_write``): folders 0700,
an existing ``$TETHER_HOME`` or ``clusters/`` with looser modes is tightened, and secret-bearing files are created
0600 before a byte is written (:func:`open_private`), never chmodded afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["USER_UMASK_ENV", "clusters_dir", "file_lock", "open_private", "private_dir", "tether_home"]

USER_UMASK_ENV = "TETHER_USER_UMASK"  # the daemon runs under umask 077; its workers give user code this one back


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter: created 0700 (parents too), an existing one we own that
    others may read or enter is tightened to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        st = path.stat()
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            path.chmod(0o700)
    return path


def tether_home() -> Path:
    home = Path(os.environ.get("TETHER_HOME") or Path.home() / ".tether")
    return private_dir(home)


def clusters_dir() -> Path:
    return private_dir(tether_home() / "clusters")


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """An fd of ``path`` created 0600 (an existing file we own that others may read is tightened first)."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _loose(fd: int) -> bool:
    st = os.fstat(fd)
    return st.st_uid != os.geteuid() or bool(stat.S_IMODE(st.st_mode) & 0o077)


def _replace_loose_lock_file(path: Path) -> None:
    """Put a new 0600 file at ``path`` if the one there is not private: whoever holds the old one (another user
    who opened a 0644 lock file an older tether made) keeps a lock on a file no one looks at any more. Done under
    ``<path>.guard`` (a name older tethers never made: always ours and private), from a fresh look at ``path``,
    so a private lock file someone holds is never replaced."""
    guard = os.open(path.with_name(path.name + ".guard"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if not _loose(fd):
                return  # another locker replaced it already
        finally:
            os.close(fd)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
        os.close(fd)
        os.replace(tmp, path)
    finally:
        os.close(guard)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock held while the block runs, on a 0600 file in a 0700 folder (another user
    cannot open it, so cannot hold it to hang us). A lock file that others could open (made by an older tether, or
    not ours) is replaced first, and the lock is taken on the file that is at ``path`` once it is held."""
    private_dir(path.parent)
    replaced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not replaced and _loose(fd):  # once: a filesystem that maps owners (root_squash) stays "loose"
                os.close(fd)
                fd = -1
                _replace_loose_lock_file(path)
                replaced = True
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                break  # the file we hold is still the lock file
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        os.close(fd)  # it was replaced while we waited: lock the new one
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
