"""An example service: a tiny deterministic text embedder (hashing trick), deployed once and called from anywhere."""

from __future__ import annotations

import hashlib
import logging
import math

log = logging.getLogger(__name__)


def embed(text: str, dim: int = 8) -> list[float]:
    """Embed ``text`` into a unit vector of ``dim`` floats."""
    vec = [0.0] * dim
    for token in text.lower().split():
        h = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big")
        vec[h % dim] += 1.0 if (h >> 8) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    log.info("embedded %d tokens", len(text.split()))
    print(f"embed: {len(text)} chars")
    return [v / norm for v in vec]


def embed_batch(texts: list[str], dim: int = 8) -> list[list[float]]:
    """Embed many texts."""
    return [embed(t, dim) for t in texts]


def embed_reported(texts: list[str], dim: int = 8) -> list[list[float]]:
    """Embed many texts and report what a pipeline wants to see: counts as metadata, a unit-length check.

    ``tether.report`` reaches the caller with the result (a Dagster materialization's metadata and asset check,
    an Airflow XCom, ``RunResult.reports``); called locally it does nothing.
    """
    import tether  # only the reporting needs tether; embed() itself is plain Python

    vectors = embed_batch(texts, dim)
    worst = max((abs(sum(v * v for v in vec) - 1.0) for vec in vectors), default=0.0)
    tether.report(
        metadata={"documents": len(texts), "tokens": sum(len(t.split()) for t in texts), "dim": dim},
        asset_check={"name": "unit_length", "passed": worst < 1e-9, "metadata": {"max_error": worst}},
    )
    return vectors
