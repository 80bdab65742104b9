"""The console's cluster pages and a service's usage by team with its estimated cost, in the real browser against
``tether registry serve``: the local cluster (a real daemon) with its price, autostop countdown, services, envs and
per-worker CPU and memory now and over the last hour; a cloud cluster the server has state for (its price as
SkyPilot recorded it; the cloud itself is not reached); what a user without access sees. Plus the price and team
rules without a browser (the catalog price of an instance type, the caller's team)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import tether
from tests.console.conftest import Browser, Browsers, Team
from tests.registry import lineage_fns
from tether.compute.state import save_state
from tether.console.machines import price_per_hour
from tether.console.usage import teams_of_callers
from tether.registry.models import CallRecord
from tether.registry.names import Ref
from tether.registry.remote import RemoteBackend
from tether.registry.store import Store

CATALOG = Path(__file__).resolve().parents[3] / "shared" / "catalog" / "v8"  # the trimmed v8 catalog
if not CATALOG.exists():
    CATALOG = Path("/work/shared/catalog/v8")
GPU_PRICE = 1.006  # aws g5.xlarge in us-east-1, on demand, in the v8 catalog


def _gpu_cluster(home: Path) -> None:
    """The state SkyPilot's backend leaves for a cloud cluster (tether.compute.sky writes these fields)."""
    save_state("gpu-a", {"backend": "sky", "spec": {"name": "gpu-a", "backend": "sky", "instance_type": "g5.xlarge"},
                         "cloud": "aws", "region": "us-east-1", "instance_type": "g5.xlarge",
                         "price_per_hour": GPU_PRICE, "token": "not-used"})


def _cells(b: Browser, css: str) -> list[list[str]]:
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in b.driver.find_elements(By.CSS_SELECTOR, css)]


def test_clusters_and_cost_by_team_in_the_browser(
    team: Team, as_alice: Any, browsers: Browsers, console_env: Path
) -> None:
    tether.function(lineage_fns.prep).to(as_alice, name="prep").save()
    tether.function(name="prep")("2026-11-30")
    as_alice.keep_warm(autostop_mins=30)  # a countdown to show (nothing stops within the test)
    alice_reg = RemoteBackend(team.url, team.tokens["alice"])
    config = json.loads(json.dumps(alice_reg.get(Ref("alice", "prep")).config))
    config["cluster"] = {"name": "gpu-a", "backend": "sky", "instance_type": "g5.xlarge"}
    alice_reg.save(Ref("alice", "embed"), config, by="alice")  # saved onto the cloud cluster
    alice_reg.share(Ref("alice", "embed"), "bob", "read", by="alice")
    _gpu_cluster(console_env)
    alice_reg.record_calls([CallRecord(name="alice/embed", version=1, call_id=f"a{i}", duration_s=1800.0,
                                       cluster="gpu-a") for i in range(2)])
    RemoteBackend(team.url, team.tokens["bob"]).record_calls(
        [CallRecord(name="alice/embed", version=1, call_id="b1", duration_s=3600.0, cluster="gpu-a")])
    tether.registry.get_registry().flush()

    b = browsers()
    b.login(team.tokens["alice"])
    b.open("/console/clusters")
    b.wait_text("gpu-a", "main table")
    rows = {r[0]: r for r in _cells(b, "main table tbody tr")}
    assert rows["local"][2] == "up" and rows["local"][4] == "$0.0000" and rows["local"][6] == "1"
    assert rows["gpu-a"][1] == "sky" and rows["gpu-a"][2] != "up" and rows["gpu-a"][4] == f"${GPU_PRICE:.4f}"
    assert "stops in" in rows["local"][5]
    b.shot("clusters")

    b.driver.find_element(By.LINK_TEXT, "local").click()
    b.wait_text("local", "#cluster-name")
    b.driver.refresh()  # a second sample: the last hour's charts draw lines
    b.wait_text("local", "#cluster-name")
    facts = b.driver.find_element(By.ID, "cluster-facts").text
    assert "up" in facts and "$0.0000 per node × 1 node(s)" in facts
    left = b.driver.find_element(By.CSS_SELECTOR, ".countdown").text
    assert left.startswith(("29m", "30m")), left
    WebDriverWait(b.driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, ".countdown").text != left)  # ticks
    services = _cells(b, "#services ~ table tbody tr")
    assert services[0][:3] == ["alice/prep", "prep", "default"] and services[0][3] == "yes"
    workers = _cells(b, "#workers ~ table tbody tr")
    assert [w[0] for w in workers] == ["default"]
    assert workers[0][4].endswith("%") and workers[0][5].endswith("MiB"), workers  # read from /proc: local daemon
    assert b.find("#chart-cpu svg polyline.series") and b.find("#chart-memory svg polyline.series")
    nodes = _cells(b, "#nodes ~ table tbody tr")
    assert nodes[0][:3] == ["0", "127.0.0.1", "local"] and nodes[0][4].endswith("GiB"), nodes  # this machine
    b.shot("cluster-local")
    b.driver.execute_script("document.getElementById('workers').scrollIntoView();")
    b.shot("cluster-local-charts")

    b.open("/console/s/alice/embed")
    b.driver.execute_script("document.getElementById('usage-teams').scrollIntoView();")
    teams = {r[0]: r for r in _cells(b, "#usage-teams ~ .grid table tbody tr")}
    hours_cost = {"alice": 3600.0 * GPU_PRICE / 3600, "ml-platform": 3600.0 * GPU_PRICE / 3600}
    assert teams["alice"][1:] == ["2", "alice", "3600.000", f"${hours_cost['alice']:.4f}"]
    assert teams["ml-platform"][1:] == ["1", "bob", "3600.000", f"${hours_cost['ml-platform']:.4f}"]  # bob's team
    assert b.driver.find_element(By.ID, "cost-total").text == f"${2 * GPU_PRICE:.4f}"
    assert f"cluster gpu-a at ${GPU_PRICE:.4f}/h" in b.driver.find_element(By.ID, "cost-basis").text
    assert b.find("#chart-teams svg rect")
    b.shot("service-cost")

    carol = browsers()  # reads nothing: no cluster, and no cluster page
    carol.login(team.tokens["carol"])
    carol.open("/console/clusters")
    carol.wait_text("no cluster runs a service you can read")
    carol.open("/console/c/local")
    carol.wait_text("no service you may read runs on cluster 'local'", "#error")
    bob = browsers()  # reads alice/embed: sees gpu-a, not the local cluster alice's prep runs on
    bob.login(team.tokens["bob"])
    bob.open("/console/clusters")
    bob.wait_text("gpu-a", "main table")
    assert [r[0] for r in _cells(bob, "main table tbody tr")] == ["gpu-a"]
    bob.shot("clusters-bob")


def test_price_per_hour_from_the_catalog_when_the_backend_recorded_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_CATALOG_DIR", str(CATALOG))
    monkeypatch.setenv("TETHER_CATALOG_READER", "csv")
    state = {"backend": "sky", "spec": {"name": "g", "backend": "sky"}, "cloud": "aws", "region": "us-east-1",
             "instance_type": "g5.xlarge"}
    assert price_per_hour(state) == GPU_PRICE
    assert price_per_hour({**state, "price_per_hour": 0.5}) == 0.5
    assert price_per_hour({"backend": "local"}) == 0.0
    assert price_per_hour({"backend": "ssh", "spec": {"name": "s", "host": ["h1"]}}) is None  # unknown: not $0
    assert price_per_hour(None) is None


def test_a_callers_team(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "r.db"))
    try:
        store.add_member("ml-platform", "bob")
        store.add_member("research", "bob")
        got = teams_of_callers(store, ["alice", "bob", "ml-platform/ci", "airflow:etl"])
    finally:
        store.close()
    assert got == {"alice": "alice", "bob": "ml-platform", "ml-platform/ci": "ml-platform", "airflow:etl": "airflow"}
