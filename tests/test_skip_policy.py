"""The skip policy (tests/skip_policy.py) on a throwaway suite run by a real pytest: in CI an unlisted skip fails
the run, a listed one does not, the allow-list is printed either way, and a malformed entry is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.skip_policy import Entry, read_allow_list

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = """
from tests.skip_policy import (pytest_configure, pytest_make_collect_report, pytest_runtest_makereport,
                               pytest_sessionfinish, pytest_terminal_summary)
"""

TESTS = """
import pytest

def test_runs():
    assert True

def test_skips_in_its_body():
    pytest.skip("no accelerator here")

@pytest.mark.skipif(True, reason="needs a writable /dev/shm")
def test_skips_by_marker():
    pass

@pytest.mark.parametrize("x", ["a-1", "b-2"])
def test_param(x):
    if x == "a-1":
        pytest.skip("only b")

@pytest.fixture
def host():
    pytest.skip("netns hosts unavailable: needs root")

def test_skips_in_a_fixture(host):
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert False
"""


def _suite(tmp_path: Path, allow: str, *, module_skip: bool = False) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(textwrap.dedent(TESTS))
    if module_skip:
        (tmp_path / "test_gone.py").write_text('import pytest\npytest.importorskip("no_such_module_here")\n')
    allow_list = tmp_path / "allowed.txt"
    allow_list.write_text(allow)
    return allow_list


def _pytest(tmp_path: Path, allow_list: Path, *, ci: bool, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=str(ROOT), TETHER_TEST_ALLOW_LIST=str(allow_list), **({"CI": "true"} if ci else {}))
    # the throwaway suite needs no installed plugin: loading them (schemathesis, hypothesis, ...) takes ~2.5 s of
    # each run's ~3 s here
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


ALL_ALLOWED = """
# comment lines and blank lines are ignored

tests-elsewhere::nothing | an entry that matches nothing is printed as unused
test_suite.py::test_skips_in_its_body | the CI machine has no accelerator
test_suite.py::test_skips_by_marker | stands for a shared-memory test on a box without /dev/shm
test_suite.py::test_param[a-1] | brackets are literal, not a character class
test_suite.py::test_skips_in_a_*  | a pattern: * matches anything
test_suite.py::test_xfails | an xfail is a pass that proves nothing: it is listed like a skip
"""


def test_in_ci_every_unlisted_skip_fails_the_run_and_says_how_to_allow_it(tmp_path: Path) -> None:
    out = _pytest(tmp_path, _suite(tmp_path, "test_suite.py::test_xfails | listed\n"), ci=True)
    assert out.returncode == 1, out.stdout
    text = out.stdout
    assert "unexpected skip in CI" in text and "no accelerator here" in text
    for name in ("test_skips_in_its_body", "test_skips_by_marker", "test_param[a-1]", "test_skips_in_a_fixture"):
        assert f"FAILED (CI): test_suite.py::{name}" in text, text
    assert "'test_suite.py::test_skips_by_marker | <why it may skip in CI>'" in text
    assert "test_suite.py::test_xfails | listed  [skipped in this run: 1]" in text
    assert "skipped in this run: 5 (allowed 1, not allowed 4)" in text
    assert "2 passed" in text  # test_runs and test_param[b-2]


def test_listed_skips_pass_in_ci_and_the_list_is_printed_with_its_use(tmp_path: Path) -> None:
    out = _pytest(tmp_path, _suite(tmp_path, ALL_ALLOWED), ci=True)
    assert out.returncode == 0, out.stdout
    assert "skip policy (" in out.stdout and "CI: a skip not listed here fails the run" in out.stdout
    assert "allowed to skip in CI (6):" in out.stdout
    assert "tests-elsewhere::nothing | an entry that matches nothing is printed as unused  [skipped in this run: 0]" \
        in out.stdout
    assert "test_suite.py::test_skips_in_a_* | a pattern: * matches anything  [skipped in this run: 1]" in out.stdout
    assert "skipped in this run: 5 (allowed 5, not allowed 0)" in out.stdout


def test_outside_ci_skips_stay_skips_but_are_reported(tmp_path: Path) -> None:
    out = _pytest(tmp_path, _suite(tmp_path, ""), ci=False)
    assert out.returncode == 0, out.stdout
    assert "not CI: skips are reported only" in out.stdout
    assert "allowed to skip in CI: none" in out.stdout
    assert "would fail in CI: test_suite.py::test_skips_by_marker: needs a writable /dev/shm" in out.stdout


def test_a_module_that_skips_at_collection_fails_the_session_in_ci(tmp_path: Path) -> None:
    allow_list = _suite(tmp_path, ALL_ALLOWED, module_skip=True)
    out = _pytest(tmp_path, allow_list, ci=True)
    assert out.returncode == 1, out.stdout
    assert "FAILED (CI): test_gone.py: could not import 'no_such_module_here'" in out.stdout
    allow_list.write_text(ALL_ALLOWED + "test_gone.py | the module's extra is not installed in this venv\n")
    assert _pytest(tmp_path, allow_list, ci=True).returncode == 0


def test_a_run_that_only_skips_is_not_no_tests_ran_in_ci(tmp_path: Path) -> None:
    """Exit 5 is scripts/test's business; a run whose every test skipped must fail here, not exit 0."""
    allow_list = _suite(tmp_path, "")
    out = _pytest(tmp_path, allow_list, ci=True, args=("-k", "skips_by_marker"))
    assert out.returncode == 1, out.stdout


def test_an_entry_without_a_reason_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("test_suite.py::test_skips_by_marker\n")
    out = _pytest(tmp_path, _suite(tmp_path, bad.read_text()), ci=True)
    assert out.returncode == 4 and "needs '<node id or pattern> | <reason>'" in out.stderr, out.stderr
    assert read_allow_list(tmp_path / "missing.txt") == []
    assert Entry("a/b.py::t[x-1]*", "r", 1).matches("a/b.py::t[x-1]-y")
    assert not Entry("a/b.py::t[x]", "r", 1).matches("a/b.py::tx")


def test_the_real_allow_list_parses_and_every_entry_names_a_reason() -> None:
    for entry in read_allow_list():
        assert entry.reason and entry.pattern.startswith("tests/"), entry
