"""Liveness of worker processes: a ping with a deadline on a socket pair of its own.

The daemon sends a byte every ``DEADLINE / 4`` seconds; a thread in the worker answers it. No answer within
``DEADLINE`` (``$TETHER_WORKER_DEADLINE``, default 30 s) means the worker is stopped (SIGSTOP, a debugger, a
frozen cgroup) or hung as a whole: the daemon kills it, and the calls and deploys waiting on it end in
``WorkerDied`` (``details.reason`` ``unresponsive``) instead of hanging forever. The env restarts on its next
use, its services restored, like after a crash.

The ping is not on the worker link itself: that link is read by the worker's event loop, which a deploy's
import or a class's ``__init__`` (loading a model) blocks for as long as it takes; a thread blocked on its own
socket answers through all that, and stops only when the whole process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable

from tether.errors import WorkerDied

__all__ = ["DEADLINE", "answer_pings", "unresponsive_error", "watch"]

DEADLINE = float(os.environ.get("TETHER_WORKER_DEADLINE", "30"))


async def watch(sock: socket.socket, on_unresponsive: Callable[[], None], deadline: float = DEADLINE) -> None:
    """Ping the worker at the other end of ``sock`` until it goes away; ``on_unresponsive()`` when an answer
    does not come within ``deadline`` seconds."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        while True:
            await asyncio.sleep(deadline / 4)
            writer.write(b"?")
            try:
                answer = await asyncio.wait_for(reader.read(64), deadline)
            except TimeoutError:
                on_unresponsive()
                return
            if not answer:  # the worker is gone: its link tells how
                return
    except (ConnectionError, OSError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def unresponsive_error(env: str, pid: int | None, deadline: float = DEADLINE) -> WorkerDied:
    """What the calls of a worker killed for not answering its pings get."""
    return WorkerDied(
        f"worker for env {env!r} (pid {pid}) answered no liveness ping for {deadline:g} s: it was stopped "
        "(SIGSTOP, a debugger) or hung, and was killed",
        hint="retry: the env restarts on the next call with its services restored; calls that ran in it did "
             "not finish (set TETHER_WORKER_DEADLINE on the daemon for a longer deadline)",
        details={"reason": "unresponsive", "env": env, "pid": pid, "deadline_s": deadline})


def answer_pings(fd: int) -> threading.Thread:
    """In the worker: answer every ping on socket ``fd`` from a thread of its own, until the daemon closes it."""
    sock = socket.socket(fileno=fd)

    def serve() -> None:
        with sock:
            while True:
                try:
                    data = sock.recv(64)
                    if not data:
                        return
                    sock.sendall(b"!" * len(data))
                except OSError:
                    return

    thread = threading.Thread(target=serve, name="tether-liveness", daemon=True)
    thread.start()
    return thread
