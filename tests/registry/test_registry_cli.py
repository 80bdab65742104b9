"""``tether registry ...`` commands print tables from the registry the environment selects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.registry import CallRecord, get_registry
from tether.registry.cli import registry
from tether.registry.store import Store

CONFIG = {
    "kind": "function",
    "code": {"import_path": "pkg.embed", "qualname": "embed", "code_hash": "0123456789abcdef"},
}


def run(*args: str) -> str:
    result = CliRunner().invoke(registry, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def saved() -> None:
    reg = get_registry()
    reg.save("embed", CONFIG)
    reg.save("embed", {**CONFIG, "code": {**CONFIG["code"], "code_hash": "fedcba9876543210"}})


@pytest.mark.usefixtures("saved")
def test_history_tag_rollback_show() -> None:
    out = run("tag", "embed", "1", "prod")
    assert "tagged alice/embed@1" in out and "prod" in out
    assert "now alice/embed@3" in run("rollback", "embed", "1")
    table = run("history", "embed")
    lines = [line for line in table.splitlines() if "pkg.embed:embed" in line]
    assert len(lines) == 3
    assert "prod" in lines[0] and "0123456789ab" in lines[0]
    assert "fedcba987654" in lines[1]
    assert "copy of 1" in lines[2]
    shown = json.loads(run("show", "embed@prod"))
    assert shown["version"] == 1 and shown["config"] == CONFIG


@pytest.mark.usefixtures("saved")
def test_ls_and_usage_tables() -> None:
    reg = get_registry()
    for i in range(3):
        reg.record_call(
            CallRecord(
                name="embed", version=2, call_id=f"c{i}", duration_s=2.0, outcome="error" if i == 0 else "ok"
            )
        )
    ls = run("ls")
    assert "alice/embed" in ls and "function" in ls
    usage = run("usage", "embed")
    row = next(line for line in usage.splitlines() if "alice" in line)
    cells = [c.strip() for c in row.replace("│", "|").split("|") if c.strip()]
    assert cells[:6] == ["alice", "2", "3", "1", "2.000", "2.000"]


def test_unknown_name_is_a_clean_error() -> None:
    get_registry().save("embed", CONFIG)
    result = CliRunner().invoke(registry, ["history", "embd"])
    assert result.exit_code == 1
    assert "NotFound" in result.output and "alice/embed" in result.output


def test_share_prints_the_grant(saved: None) -> None:
    assert "shared alice/embed with ml-platform: write" in run(
        "share", "embed", "ml-platform", "--level", "write"
    )
    assert [(g.principal, g.access_level) for g in get_registry().grants("embed")] == [
        ("ml-platform", "write")
    ]


def test_token_command_issues_a_token_stored_hashed(tmp_path: Path) -> None:
    db = str(tmp_path / "server.db")
    token = run("token", "dana", "--db", db, "--team", "ml-platform").strip()
    store = Store(db)
    try:
        assert store.principal_for(token) == "dana"
        assert store.principal_for(token + "x") is None
    finally:
        store.close()
