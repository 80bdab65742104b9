"""Code the benchmarks deploy."""

from __future__ import annotations


def add(a, b):
    return a + b


def echo(x):
    return x


def size_of(x):
    return len(x)


_MADE: dict[int, bytes] = {}


def make(n):
    """``n`` random bytes, made once per size (a big result that costs the worker nothing to produce)."""
    if n not in _MADE:
        import os

        _MADE.clear()
        _MADE[n] = os.urandom(n)
    return _MADE[n]


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n
