"""Code the Runhouse-spelling tests deploy (importable: the repo root is the code root)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import tether as rh


class PIDModule(rh.Module):
    """A Module subclass, the way Runhouse users write one: state set in ``__init__``, methods, a property."""

    def __init__(self, a: int = 0) -> None:
        super().__init__()
        self.a = a
        self.seen: list[Any] = []

    def getpid(self) -> int:
        return os.getpid() + self.a

    def remember(self, item: Any) -> int:
        self.seen.append(item)
        return len(self.seen)

    @property
    def doubled(self) -> int:
        return self.a * 2


class Named:
    """A base class that is no Module, with an ``__init__`` of its own."""

    def __init__(self, label: str) -> None:
        self.label = label


class NamedModule(Named, rh.Module):
    """Inherits its ``__init__`` from a base that is no Module."""

    def shout(self) -> str:
        return self.label.upper()


class Counter:
    """A plain class (``rh.module(Counter)``)."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n


def add(a: Any, b: Any) -> Any:
    return a + b


def get_pid(a: int = 0) -> int:
    return os.getpid() + int(a)


def kwargs_seen(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def env_var(name: str) -> str | None:
    return os.environ.get(name)


def say(text: str) -> str:
    print(text)
    return text


def synchronous_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def rendezvous(folder: str, parties: int, index: int) -> int:
    """Returns ``index`` once ``parties`` calls are inside at the same time (raises after 60 s otherwise): only
    calls that run concurrently all return."""
    Path(folder, str(index)).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {parties} calls ran at once")
        time.sleep(0.01)
    return index


def counter_total(counter: Any) -> int:
    """Takes a resolved ``Counter`` (the object itself, not a handle)."""
    assert isinstance(counter, Counter), type(counter)
    return counter.n


def on_this_cluster(name: str) -> bool:
    return rh.cluster(name=name).on_this_cluster()
