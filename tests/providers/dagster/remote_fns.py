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
