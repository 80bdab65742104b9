"""Three pipeline steps that declare their lineage where they run (imported by the daemon's worker)."""

from __future__ import annotations

import time

import tether


def prep(day: str) -> str:
    tether.lineage.input("s3://lake/raw", version=day)
    tether.lineage.output("s3://lake/dataset", version=f"{day}-clean")
    return f"{day}-clean"


def pretrain(dataset: str, steps: int = 3) -> str:
    tether.lineage.input("s3://lake/dataset", version=dataset)
    for step in range(steps):
        print(f"pretrain step {step + 1}/{steps}", flush=True)
    tether.lineage.output("s3://ckpt/bert", version=f"step-{steps}")
    tether.lineage.output("s3://ckpt/bert", version=f"step-{steps}")  # said twice: one edge
    return f"step-{steps}"


def serve_bert(checkpoint: str, text: str) -> int:
    tether.lineage.input("s3://ckpt/bert", version=checkpoint)
    tether.lineage.output("s3://preds/today")
    return len(text.split())


def slow_lines(n: int, pause: float) -> int:
    """Print ``n`` numbered lines, ``pause`` seconds apart (a live log to tail)."""
    for i in range(n):
        print(f"line {i + 1} of {n}", flush=True)
        time.sleep(pause)
    return n


def bad_lineage() -> None:
    tether.lineage.input("")
