"""Remote code only the Dagster tests need (the shared helpers live in ``tests.core.services``)."""

from __future__ import annotations


def fail_first_time(ledger: str) -> str:
    """Fail on the first execution, succeed on later ones (a transient remote failure)."""
    with open(ledger, "a") as f:
        f.write("ran\n")
    with open(ledger) as f:
        runs = len(f.read().splitlines())
    if runs == 1:
        raise ConnectionResetError("transient: the feature store hung up")
    return f"ok after {runs} runs"


def multiply(a: int, b: int) -> int:
    """What a teammate's next version of a two-argument service does."""
    return a * b


def count_call(ledger: str, value: int) -> int:
    """Append one line to ``ledger`` per execution and return ``value``."""
    with open(ledger, "a") as f:
        f.write("ran\n")
    return value
