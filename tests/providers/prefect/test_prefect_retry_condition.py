"""``retry_on_tether_errors`` decides from the Failed state Prefect hands a ``retry_condition_fn``."""

from __future__ import annotations

import pytest
from prefect.states import Failed

import tether
from tether.providers.prefect import retry_on_tether_errors


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (tether.WorkerDied("worker died"), True),
        (tether.OutOfMemory("oom"), True),
        (tether.ClusterUnavailable("unreachable"), True),
        (tether.CapacityError("no capacity"), True),
        (tether.QuotaError("quota"), False),
        (tether.CallCancelled("cancelled"), False),
        (tether.NotFound("no such service"), False),
        (tether.WorkerDied("worker died", retryable=False), False),
        (tether.RemoteError("KeyError: 'x'"), False),
        (ValueError("a bug in the remote code"), False),
    ],
)
def test_only_errors_tether_marks_retryable_are_retried(exc: BaseException, retry: bool) -> None:
    state = Failed(data=exc, message=f"Task run encountered unexpected exception: {exc!r}")
    assert retry_on_tether_errors(None, None, state) is retry  # type: ignore[arg-type]
