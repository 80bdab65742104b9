"""Code the benchmarks deploy."""

from __future__ import annotations


def add(a, b):
    return a + b


def echo(x):
    return x


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n
