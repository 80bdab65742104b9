"""Code deployed by the core tests (importable: the repo root is the code root)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

log = logging.getLogger("tests.services")


def add(a, b):
    return a + b


def echo(x):
    return x


def env_var(name):
    return os.environ.get(name)


def shout(text, n=3):
    for i in range(n):
        print(f"{text} {i}")
        log.info("logged %s %d", text, i)
        time.sleep(0.01)
    return n


def count_up(n, delay=0.0):
    for i in range(n):
        time.sleep(delay)
        yield i


async def acount(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i * 10


async def aadd(a, b):
    await asyncio.sleep(0.01)
    return a + b


def raises_value_error(msg):
    raise ValueError(msg)


class UnpicklableError(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = __import__("threading").Lock()


def raises_unpicklable():
    raise UnpicklableError("cannot travel")


def sleep_then(seconds, marker=None):
    if marker:
        with open(marker, "a") as f:
            f.write("start\n")
    time.sleep(seconds)
    if marker:
        with open(marker, "a") as f:
            f.write("end\n")
    return seconds


def crash():
    os._exit(13)


def kill_self():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def returns_lock():
    import threading

    return threading.Lock()


class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, by=1):
        self.n += by
        return self.n

    async def aincr(self, by=1):
        await asyncio.sleep(0)
        self.n += by
        return self.n

    def read_x(self):
        return os.environ.get("X")

    def env(self):
        return "method named env"


def log_wait_count(marker_dir):
    """Print, then wait for ``marker_dir/release``; every run appends a line to ``marker_dir/runs``."""
    from pathlib import Path

    d = Path(marker_dir)
    with open(d / "runs", "a") as f:
        f.write("run\n")
    print("before the wait")
    (d / "started").touch()
    for _ in range(3000):
        if (d / "release").exists():
            break
        time.sleep(0.01)
    print("after the wait")
    return len((d / "runs").read_text().splitlines())


def make_bytes(n, fill=7):
    return bytes([fill]) * n


def crash_with(payload):
    os._exit(len(payload) % 100)


def chunks(data, size):
    for i in range(0, len(data), size):
        yield data[i:i + size]
