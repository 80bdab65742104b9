"""Code the shared-memory tests deploy (importable: the repo root is the code root)."""

from __future__ import annotations


def echo(x):
    return x


def nbytes(x):
    return len(x)


def big_items(n, size):
    for i in range(n):
        yield bytes([i]) * size
