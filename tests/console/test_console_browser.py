"""The console in a real browser (headless Chromium + Selenium) against ``tether registry serve``: login, browsing,
a user without rights, a grant and a revoke through the UI, the lineage page of a three-step chain run on a real
daemon, and a live log tail of a running call. Every test takes screenshots (``TETHER_CONSOLE_SHOTS`` keeps them)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

import tether
from tests.console import console_fns
from tests.console.conftest import Browser, Browsers, Team
from tests.registry import lineage_fns


def chain(local: Any) -> None:
    """prep → pretrain → bert, saved (pretrain twice: a config diff) and called once each."""
    for fn, name in ((lineage_fns.prep, "prep"), (lineage_fns.pretrain, "pretrain"), (lineage_fns.serve_bert, "bert")):
        tether.function(fn).to(local, name=name).save()
    tether.function(lineage_fns.pretrain).to(local, name="pretrain", env=tether.env(name="train",
                                                                                        env_vars={"STEPS": "3"})).save()
    prep, pretrain, bert = (tether.function(name=n) for n in ("prep", "pretrain", "bert"))
    bert(pretrain(prep("2026-11-30")), "the quick brown fox")
    tether.registry.get_registry().flush()


def test_login_and_browsing(team: Team, as_alice: Any, browsers: Browsers) -> None:
    chain(as_alice)
    b = browsers()
    b.open("/console/services")
    assert b.driver.current_url.startswith(team.url + "/console/login")  # not signed in: the login page
    b.shot("login")
    b.login("not-a-token", wait=False)
    b.wait_text("unknown, revoked or expired token", "#error")
    b.shot("wrong-token")
    b.login(team.tokens["alice"])
    b.wait_text("alice", "#whoami")
    cookie = next(c for c in b.driver.get_cookies() if c["name"] == "tether_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert team.tokens["alice"] not in json.dumps(b.driver.get_cookies())  # the token never reaches a cookie
    assert {"alice/prep", "alice/pretrain", "alice/bert"} <= set(b.text().split())
    b.shot("services")
    b.driver.find_element(By.ID, "search").send_keys("pre")  # filters as you type
    visible = [r.get_attribute("data-name") for r in b.driver.find_elements(By.CSS_SELECTOR, "tr[data-name]")
               if r.is_displayed()]
    assert visible == ["alice/prep", "alice/pretrain"]

    b.driver.find_element(By.LINK_TEXT, "alice/pretrain").click()
    b.wait_text("alice/pretrain", "#service-name")
    assert b.driver.find_element(By.ID, "access-level").text == "owner"
    assert "STEPS" in b.driver.find_element(By.ID, "config-diff").text  # version 1 → 2: the env changed
    assert b.find("#chart-callers svg rect") and b.find("#chart-versions svg rect")  # usage charts drawn
    b.shot("service")
    b.driver.execute_script("document.getElementById('usage').scrollIntoView();")
    b.shot("usage")
    b.driver.find_element(By.CSS_SELECTOR, "#versions ~ table a[href*='/code/']").click()  # the code snapshot
    b.wait_text("lineage_fns.py", "#code-files")
    b.driver.find_element(By.LINK_TEXT, "tests/registry/lineage_fns.py").click()
    b.wait_text("def pretrain", "#code-file")
    b.shot("code")
    b.open("/console/calls")
    b.wait_text("alice/bert")
    assert sum("alice/" in row.text for row in b.driver.find_elements(By.CSS_SELECTOR, "tbody tr")) == 3
    b.shot("calls")


def test_a_user_without_rights_sees_nothing_of_it(team: Team, as_alice: Any, browsers: Browsers) -> None:
    chain(as_alice)
    carol = browsers()
    carol.login(team.tokens["carol"])
    carol.wait_text("carol", "#whoami")
    assert "alice/" not in carol.text() and carol.find("#no-services")
    carol.shot("services-empty")
    for path in ("/console/s/alice/prep", "/console/s/alice/prep/calls/x", "/console/s/alice/prep/code/1"):
        carol.open(path)
        carol.wait_text("lacks 'read' access to 'alice/prep'", "#error")
    carol.shot("denied")
    carol.open("/console/lineage?uri=s3://preds/today")  # the walk hides alice's calls and says so
    carol.wait_text("1 calls you may not read are left out", "#hidden")
    assert not carol.find(".node-call")
    carol.open("/console/calls")
    assert "alice/" not in carol.text()
    carol.shot("lineage-hidden")


def _grantees(b: Browser) -> list[str]:
    return [el.text for el in b.driver.find_elements(By.CSS_SELECTOR, "#access ~ table .grantee")]


def test_grant_and_revoke_through_the_ui(team: Team, as_alice: Any, browsers: Browsers) -> None:
    tether.function(lineage_fns.prep).to(as_alice, name="prep").save()
    alice, carol = browsers(), browsers()
    alice.login(team.tokens["alice"])
    carol.login(team.tokens["carol"])
    carol.open("/console/s/alice/prep")
    carol.wait_text("lacks 'read' access", "#error")

    alice.open("/console/s/alice/prep")
    alice.driver.find_element(By.ID, "grant-principal").send_keys("carol")
    alice.driver.find_element(By.CSS_SELECTOR, "#grant-level option[value='read'], #grant-level option").click()
    alice.driver.find_element(By.CSS_SELECTOR, "form[action$='/grant'] button").click()
    alice.wait_text("granted read to carol", "#flash")
    assert _grantees(alice) == ["carol"]
    alice.shot("granted")
    carol.open("/console/s/alice/prep")
    carol.wait_text("alice/prep", "#service-name")
    assert carol.driver.find_element(By.ID, "access-level").text == "read"
    assert not carol.find("form[action$='/grant']") and not carol.find("form[action$='/revoke']")  # not an owner
    carol.shot("carol-reads")

    # a forged form (no CSRF token) from carol's session is refused, and changes nothing
    status = carol.driver.execute_async_script(
        "const done = arguments[0]; fetch('/console/s/alice/prep/grant', {method: 'POST', body: "
        "new URLSearchParams({principal: 'carol', level: 'owner'})}).then(r => done(r.status));")
    assert status == 403
    alice.open("/console/s/alice/prep")
    assert [r.text.split()[1] for r in alice.driver.find_elements(By.CSS_SELECTOR, "#access ~ table tbody tr")] == ["read"]

    alice.driver.execute_script("window.confirm = () => true;")  # the revoke button asks first
    alice.driver.find_element(By.CSS_SELECTOR, "form[action$='/revoke'] button").click()
    alice.wait_text("revoked carol's access", "#flash")
    assert _grantees(alice) == []
    alice.shot("revoked")
    carol.open("/console/s/alice/prep")
    carol.wait_text("lacks 'read' access", "#error")
    carol.shot("carol-denied-again")


def test_the_lineage_page_of_a_three_step_chain(team: Team, as_alice: Any, browsers: Browsers) -> None:
    chain(as_alice)
    b = browsers()
    b.login(team.tokens["alice"])
    b.open("/console/lineage")
    b.driver.find_element(By.ID, "lineage-uri").send_keys("s3://preds/today")
    b.driver.find_element(By.CSS_SELECTOR, "form[action='/console/lineage'] button").click()
    b.wait_text("s3://preds/today", "h1")
    assert len(b.find("#lineage-graph .node-call")) == 3 and len(b.find("#lineage-graph .node-artifact")) == 4
    rows = [r.text for r in b.driver.find_elements(By.CSS_SELECTOR, "main > table tbody tr")]
    assert [r.split()[0] for r in rows] == ["alice/bert@1", "alice/pretrain@2", "alice/prep@1"]
    assert "s3://lake/raw@2026-11-30" in rows[2] and "s3://ckpt/bert@step-3" in rows[1]
    b.shot("lineage")
    b.driver.find_element(By.LINK_TEXT, "alice/pretrain@2").click()  # the call that made the checkpoint
    b.wait_text("s3://ckpt/bert@step-3")
    assert "local" in b.text() and "lineage_fns:pretrain" in b.text()
    b.shot("call")
    b.open("/console/s/alice/prep")  # downstream on the service page: prep's output fed pretrain, then bert
    assert len(b.find("#lineage ~ .graph .node-call")) == 3
    b.driver.execute_script("document.getElementById('lineage').scrollIntoView();")
    b.shot("service-lineage")


def test_a_live_log_tail_shows_lines_as_the_call_prints_them(
    team: Team, as_alice: Any, browsers: Browsers, tmp_path: Path
) -> None:
    tether.function(console_fns.gated_lines).to(as_alice, name="gated").save()
    release = tmp_path / "release"
    handle = tether.function(name="gated").spawn(str(release))
    b = browsers()
    b.login(team.tokens["alice"])
    b.open(f"/console/s/alice/gated/calls/{handle.call_id}")
    b.wait_text("line 3 of 6", "#log-tail")
    assert "line 4" not in b.driver.find_element(By.ID, "log-tail").text  # the call waits: line 4 is not printed
    assert b.driver.find_element(By.ID, "log-state").text == "running"
    b.shot("tail-running")
    release.touch()
    b.wait_text("line 6 of 6", "#log-tail")
    b.wait_text("succeeded", "#log-state")
    assert handle.result(timeout=60) == 6
    lines = b.driver.find_element(By.ID, "log-tail").text.splitlines()
    assert lines == [f"line {i} of 6" for i in range(1, 7)]  # each line once, in order
    b.shot("tail-done")

    # without a session the stream is not served; another user without access cannot open the page
    req = urllib.request.Request(f"{team.url}/console/s/alice/gated/calls/{handle.call_id}/logs")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert "/console/login" in resp.url
    carol = browsers()
    carol.login(team.tokens["carol"])
    carol.open(f"/console/s/alice/gated/calls/{handle.call_id}")
    carol.wait_text("lacks 'read' access", "#error")


def test_an_owner_cancels_a_running_call_from_its_page(
    team: Team, as_alice: Any, browsers: Browsers, tmp_path: Path
) -> None:
    tether.function(console_fns.gated_lines).to(as_alice, name="gated").save()
    tether.registry.get_registry().share("gated", "carol", "read")
    handle = tether.function(name="gated").spawn(str(tmp_path / "never"))
    carol = browsers()  # read access: sees the live log, no cancel button
    carol.login(team.tokens["carol"])
    carol.open(f"/console/s/alice/gated/calls/{handle.call_id}")
    carol.wait_text("line 3 of 6", "#log-tail")
    assert not carol.find("form[action$='/cancel']")
    alice = browsers()
    alice.login(team.tokens["alice"])
    alice.open(f"/console/s/alice/gated/calls/{handle.call_id}")
    alice.wait_text("line 3 of 6", "#log-tail")
    alice.shot("cancel-button")
    alice.driver.execute_script("window.confirm = () => true;")
    alice.driver.find_element(By.CSS_SELECTOR, "form[action$='/cancel'] button").click()
    alice.wait_text(f"cancelled call {handle.call_id}", "#flash")
    carol.wait_text("cancelled", "#log-state")  # the tail that was open sees the end
    with pytest.raises(tether.CallCancelled):
        handle.result(timeout=60)
    carol.shot("tail-cancelled")
