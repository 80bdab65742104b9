"""Functions the Airflow tests deploy to the local cluster; each leaves evidence on disk of how often it ran."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def count_run(ledger: str, value: int) -> int:
    """Append one line to ``ledger`` per execution and return ``value * 2``."""
    with open(ledger, "a") as f:
        f.write("ran\n")
    print(f"count_run: doubling {value}")
    log.warning("count_run: logged from the remote worker")
    return value * 2


def slow_count(ledger: str, marker_dir: str, value: int, seconds: float = 3.0, lines: int = 3) -> int:
    """Count the run, say it started (a file), print ``lines`` lines while it works, return ``value + 1``."""
    with open(ledger, "a") as f:
        f.write("ran\n")
    (Path(marker_dir) / "started").write_text("1")
    for i in range(lines):
        print(f"slow_count: step {i + 1} of {lines}")
        time.sleep(seconds / lines)
    (Path(marker_dir) / "finished").write_text("1")
    return value + 1


def wait_until_stopped(marker_dir: str, seconds: float = 60.0) -> str:
    """Say it started, then sleep in small steps; writes ``finished`` only when nobody cancelled it."""
    d = Path(marker_dir)
    (d / "started").write_text("1")
    print("wait_until_stopped: started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    (d / "finished").write_text("1")
    return "finished"


def grab(nbytes: int) -> int:
    """Allocate ``nbytes`` of memory and return how much was held."""
    block = bytearray(nbytes)
    block[::4096] = b"x" * len(block[::4096])
    return len(block)


def fail_first_time(ledger: str) -> str:
    """Raise on the first execution (a transient failure), succeed afterwards; every execution is counted."""
    path = Path(ledger)
    runs = path.read_text().count("ran") if path.exists() else 0
    with open(path, "a") as f:
        f.write("ran\n")
    if runs == 0:
        raise ConnectionError("transient: the database was restarting")
    return f"ok after {runs + 1} runs"


def slow_echo(ledger: str, marker_dir: str, value: str, seconds: float = 1.5) -> str:
    """Count the run, say it started (a file), take ``seconds``, return ``"echo <value>"``."""
    with open(ledger, "a") as f:
        f.write(f"ran {value}\n")
    (Path(marker_dir) / "started").write_text("1")
    time.sleep(seconds)
    return f"echo {value}"


def log_levels(value: int) -> int:
    """Log one record at each level (and print a line); return ``value``."""
    print("log_levels: printed")
    log.debug("log_levels: debug record")
    log.info("log_levels: info record")
    log.warning("log_levels: warning record")
    log.error("log_levels: error record")
    return value


def report_rows(rows: int) -> int:
    """Report metadata and an asset check to the caller; return ``rows``."""
    import tether

    tether.report(metadata={"rows": rows}, asset_check={"name": "enough_rows", "passed": rows > 1})
    return rows
