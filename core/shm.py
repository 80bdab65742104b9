"""Large call payloads through shared memory for clients on the daemon's host.

A client connected over the daemon's unix socket writes big arguments into a file in ``/dev/shm`` and sends its
path (header ``X-Tether-Shm``) instead of the bytes; it asks for big results the same way
(``X-Tether-Accept-Shm``) and reads them from the file the daemon names in a ``FILE`` frame. No payload byte
crosses a socket or is copied by the daemon: each way costs one copy into the file and one out of it.
"""

from __future__ import annotations

import mmap
import os
import pickle
from typing import Any

import cloudpickle

from tether.daemon.protocol import SHM_DIR, SHM_THRESHOLD, new_shm_file, unlink_quietly

__all__ = ["SHM_DIR", "THRESHOLD", "is_big", "load", "remove", "write_pickle"]

THRESHOLD = SHM_THRESHOLD  # the same cut as the daemon↔worker link: below it the socket is as fast and simpler
remove = unlink_quietly


def is_big(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a top-level argument is a large buffer (bytes, bytearray, memoryview, an array's ``nbytes``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, bytes | bytearray | memoryview):
            if len(value) >= THRESHOLD:
                return True
        elif isinstance(getattr(value, "nbytes", None), int) and value.nbytes >= THRESHOLD:
            return True
    return False


def write_pickle(obj: Any) -> str:
    """Pickle ``obj`` straight into a new private file in shared memory; returns its path."""
    f, path = new_shm_file()
    try:
        with f:
            cloudpickle.dump(obj, f, protocol=5)
    except BaseException:
        remove(path)
        raise
    return path


def load(path: str) -> Any:
    """Unpickle a file's contents through a read-only mapping (one copy: into the objects it holds)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise EOFError(f"{path} is empty")
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as view:
            return pickle.loads(view)
