"""Remote functions that report to their caller (tests/core/test_reports.py)."""

from __future__ import annotations

import logging

import tether
from tether.api.report import emit


def train(rows: int) -> int:
    """Print, log, and report metadata, an asset check and a custom kind; return ``rows * 2``."""
    print(f"train: {rows} rows")
    tether.report(metadata={"rows": rows, "model": {"raw_value": "s3://models/1", "type": "path"}},
                  asset_check={"name": "enough_rows", "passed": rows >= 10, "metadata": {"rows": rows}})
    emit("lineage.output", {"uri": "s3://models/1"})
    logging.getLogger("report_fns").warning("train: done")
    return rows * 2


def bad_report() -> None:
    """Report something that is not JSON data (the caller gets the SerializationError)."""
    tether.report(metadata={"handle": object()})
