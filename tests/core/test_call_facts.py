"""What providers show about a call besides its value: the price from the backend or the catalog, the estimated
cost, the call's URL (tether.runs.facts), and the retry line."""

from __future__ import annotations

from pathlib import Path

import pytest

import tether.runs
from tether.compute import catalog
from tether.protocol import CallState

CATALOG = Path("/work/shared/catalog/v8")
if not CATALOG.exists():
    CATALOG = Path(__file__).resolve().parents[3] / "shared" / "catalog" / "v8"


@pytest.fixture
def catalog_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TETHER_CATALOG_DIR", str(CATALOG))
    monkeypatch.setenv("TETHER_CATALOG_READER", "csv")
    return CATALOG


def test_the_price_comes_from_the_backend_else_the_catalog(catalog_dir: Path) -> None:
    cheapest_a10g = min(o.price for o in catalog.offerings(accelerator="A10G") if o.accelerator_count == 1)
    assert tether.runs.price_per_hour("A10G:1") == cheapest_a10g
    g5 = min(o.price for o in catalog.offerings() if o.instance_type == "g5.xlarge")
    assert tether.runs.price_per_hour("g5.xlarge") == g5

    class Handle:
        price_per_hour = 0.42

    assert tether.runs.price_per_hour("A10G:1", Handle()) == 0.42  # what the backend launched wins
    assert tether.runs.price_per_hour("local") == 0.0
    assert tether.runs.price_per_hour(None) is None
    assert tether.runs.price_per_hour("no-such-type-x9") is None


def test_cost_is_price_times_remote_seconds() -> None:
    assert tether.runs.estimated_cost(3.6, 10.0) == 0.01
    assert tether.runs.estimated_cost(None, 10.0) is None
    result = tether.runs.RunResult(value=1, call_id="c", service="s", version=None, instance_type="A10G:1",
                                   seconds=1800.0, price_per_hour=1.0)
    assert result.cost == 0.5 and result.metadata()["cost"] == 0.5


def test_a_call_on_a_local_cluster_has_its_url_and_a_zero_cost(local_cluster) -> None:
    from tests.core import report_fns

    r = tether.runs.run_remote(report_fns.train, (1,), call_id="facts-1", cluster=local_cluster)
    assert r.url == f"{local_cluster.endpoint}/calls/facts-1/logs"
    assert r.instance_type == "local" and r.price_per_hour == 0.0 and r.cost == 0.0
    line = tether.runs.describe_finish("train", r)
    assert line.startswith("tether: train finished: ran ") and line.endswith(", call id facts-1")


def test_a_retry_that_runs_again_says_which_call_failed() -> None:
    again = tether.runs.describe_call("train", tether.runs.CallChoice("run-abc-r2", None))
    assert again == "tether: calling train again: call run-abc failed or was cancelled (call id run-abc-r2)"
    running = tether.runs.CallChoice("run-abc", CallState.RUNNING)
    assert tether.runs.describe_call("train", running) == (
        "tether: re-attaching train to its running call (call id run-abc)")
