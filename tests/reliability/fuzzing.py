"""Property-based API fuzzing with schemathesis: every operation of an OpenAPI document, valid and invalid
inputs, bounded; records what a server answered instead of stopping at the first surprise.

Runs are seeded: the same ``seed`` generates the same cases (``FuzzReport.digest`` says so), so a run that found
a problem can be replayed (``TETHER_FUZZ_SEED``, see :func:`choose_seed`). CI runs one fixed seed; fresh seeds
are drawn outside CI and by ``scripts/fuzz``, which runs the fuzz tests over and over. Hypothesis prints no seed here
itself: a case that finds a problem is recorded, it does not fail the property.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seed_with
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

Prepare = Callable[[Any], None]

# tether's pickle bodies travel as opaque bytes, like application/octet-stream
schemathesis.serializer.alias("application/x-tether-pickle", "application/octet-stream")


@dataclass
class FuzzReport:
    """What the fuzz run saw: cases per operation, status counts, and every 5xx / non-JSON error."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    bad_error_bodies: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seed: int | None = None
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def digest(self) -> str:
        """A hash of every case sent, in order: equal for two runs with the same seed against the same schema."""
        return self._digest.hexdigest()[:16]

    @property
    def problems(self) -> list[str]:
        return self.server_errors + self.bad_error_bodies + self.transport_errors

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "cases_digest": self.digest,
            "cases": self.cases,
            "5xx": len(self.server_errors),
            "non_json_errors": len(self.bad_error_bodies),
            "transport_errors": len(self.transport_errors),
            "seconds": round(self.seconds, 1),
            "statuses": dict(sorted(self.statuses.items())),
            "operations": len(self.per_operation),
        }


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _record(report: FuzzReport, label: str, case: Any, response: requests.Response) -> None:
    report.cases += 1
    body = _ADDRESS.sub("", repr(case.body))  # e.g. schemathesis' NotSet: no object address in the digest
    report._digest.update(f"{label}|{case.method}|{case.formatted_path}|{case.query!r}|{body}\n".encode())
    report.per_operation[label] += 1
    report.statuses[response.status_code] += 1
    where = f"{label}: {case.method} {case.formatted_path} body={str(case.body)[:200]!r}"
    if response.status_code >= 500:
        report.server_errors.append(f"{response.status_code} {where} -> {response.text[:300]}")
    elif response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
            assert isinstance(message, str) and message
        except (ValueError, KeyError, TypeError, AssertionError):
            report.bad_error_bodies.append(f"{response.status_code} {where} -> {response.text[:300]!r}")


def fuzz(
    schema_url: str,
    base_url: str,
    *,
    headers: dict[str, str],
    max_examples: int = 50,
    per_operation: dict[str, int] | None = None,
    prepare: dict[str, Prepare] | None = None,
    path_parameters: dict[str, dict[str, Any]] | None = None,
    order: Callable[[str], Any] | None = None,
    verify: Any = True,
    seed: int | None = None,
) -> FuzzReport:
    """Fuzz every operation of ``schema_url`` in positive and negative mode against ``base_url``.

    ``per_operation`` caps examples by label ("POST /deploy"); ``prepare`` edits a case before it is sent (to keep
    a fuzz run from, say, installing random pip packages); ``path_parameters`` adds extra runs of an operation
    with fixed path parameters (label suffixed with " @fixed"). ``seed`` (default :func:`choose_seed`) seeds every
    operation's generation; it is in the report.
    """
    schema = schemathesis.openapi.from_url(schema_url, verify=verify)
    report = FuzzReport(seed=choose_seed() if seed is None else seed)
    started = time.monotonic()
    session = requests.Session()
    session.verify = verify
    ops = [r.ok() for r in schema.get_all_operations()]
    runs: list[tuple[str, Any, dict[str, Any] | None]] = []
    for op in ops:
        runs.append((op.label, op, None))
        if path_parameters and op.label in path_parameters:
            runs.append((op.label + " @fixed", op, path_parameters[op.label]))
    runs.sort(key=lambda r: order(r[0]) if order else 0)
    for index, (label, op, fixed) in enumerate(runs):
        n = (per_operation or {}).get(label.replace(" @fixed", ""), max_examples)
        for mode_index, mode in enumerate((GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
            try:
                strategy = op.as_strategy(generation_mode=mode, path_parameters=fixed)
            except Exception as exc:  # noqa: BLE001 - an operation schemathesis cannot negate is skipped, not fatal
                report.transport_errors.append(
                    f"{label} {mode}: no strategy: {exc}"
                ) if mode.is_positive else None
                continue

            hook = (prepare or {}).get(label.replace(" @fixed", ""))
            _examples(
                report,
                label,
                strategy,
                n,
                hook,
                lambda case: case.call(base_url=base_url, session=session, headers=headers, timeout=30),
                seed=report.seed + 2 * index + mode_index,
            )
    report.seconds = time.monotonic() - started
    return report


def _examples(
    report: FuzzReport,
    label: str,
    strategy: Any,
    n: int,
    hook: Prepare | None,
    send: Callable[[Any], requests.Response],
    *,
    seed: int,
) -> None:
    @seed_with(seed)
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if hook is not None:
            hook(case)
        try:
            response = send(case)
        except requests.RequestException as exc:
            report.transport_errors.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        _record(report, label, case, response)

    with contextlib.suppress(
        Unsatisfiable
    ):  # e.g. no invalid input exists for an operation without parameters
        run()


CI_SEED = 20261201
"""The seed of a CI run (``CI=true``) that names none: CI judges a commit by the same cases every time, so a
landing never fails on a case no earlier run tried. Exploring with fresh seeds is ``scripts/fuzz``'s job."""


def choose_seed() -> int:
    """``$TETHER_FUZZ_SEED`` (to replay a run; ``random``: a fresh seed even in CI), else :data:`CI_SEED` in CI,
    else a fresh random seed."""
    given_seed = os.environ.get("TETHER_FUZZ_SEED", "")
    if given_seed and given_seed != "random":
        return int(given_seed)
    if not given_seed and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return CI_SEED
    return random.SystemRandom().randrange(2**32)


def dump(report: FuzzReport) -> str:
    return json.dumps(report.summary(), indent=1)


def grouped(problems: list[str]) -> dict[str, int]:
    """Problems grouped by operation, status and the start of the message (for reading a failed run)."""
    out: Counter[str] = Counter()
    for p in problems:
        head, _, tail = p.partition(" -> ")
        out[f"{head.split(':')[0]} -> {tail[:110]}"] += 1
    return dict(out)
