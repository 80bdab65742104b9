"""The suite cannot pass by skipping: in CI (``CI=true``) a skipped test fails the run unless it is listed, with
the reason, in ``tests/allowed_skips.txt``; every run prints that list and what skipped.

Hooks (imported by ``tests/conftest.py``): a skipped test report (setup, call or teardown; an xfail too) that no
entry allows becomes a failure in CI; a skipped collector (a module-level ``pytest.skip`` or ``importorskip``)
is recorded and fails the session at its end (a failed collector would stop the whole run). Outside CI skips
stay skips and the summary says which would fail there.

Allow-list lines: ``<node id or pattern> | <reason>``; ``*`` in the pattern matches anything (``[`` and ``]``
of parametrized ids are literal); lines starting with ``#`` are comments. An entry without a reason is a usage error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ALLOW_LIST = Path(os.environ.get("TETHER_TEST_ALLOW_LIST") or Path(__file__).with_name("allowed_skips.txt"))
"""The one allow-list (``TETHER_TEST_ALLOW_LIST`` points elsewhere only for the policy's own test)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Entry:
    pattern: str
    reason: str
    line: int

    def matches(self, nodeid: str) -> bool:
        regex = ".*".join(re.escape(part) for part in self.pattern.split("*"))
        return re.fullmatch(regex, nodeid) is not None


def read_allow_list(path: Path = ALLOW_LIST) -> list[Entry]:
    entries: list[Entry] = []
    if not path.exists():
        return entries
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        pattern, sep, reason = (s.strip() for s in text.partition("|"))
        if not sep or not pattern or not reason:
            raise pytest.UsageError(f"{path}:{n}: an allowed skip needs '<node id or pattern> | <reason>': {raw!r}")
        entries.append(Entry(pattern, reason, n))
    return entries


@dataclass
class Skip:
    nodeid: str
    reason: str
    where: str
    entry: Entry | None


@dataclass
class SkipPolicy:
    entries: list[Entry]
    strict: bool
    seen: list[Skip] = field(default_factory=list)

    def allowed_by(self, nodeid: str) -> Entry | None:
        return next((e for e in self.entries if e.matches(nodeid)), None)

    def note(self, nodeid: str, longrepr: Any, wasxfail: str | None) -> Skip:
        where, reason = _where_and_reason(longrepr, wasxfail)
        skip = Skip(nodeid, reason, where, self.allowed_by(nodeid))
        self.seen.append(skip)
        return skip

    @property
    def unexpected(self) -> list[Skip]:
        return [s for s in self.seen if s.entry is None]


def _where_and_reason(longrepr: Any, wasxfail: str | None) -> tuple[str, str]:
    if wasxfail is not None:
        return "", f"xfail: {wasxfail}" if wasxfail else "xfail"
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, reason = longrepr
        return f"{path}:{lineno}", str(reason).removeprefix("Skipped: ")
    return "", str(longrepr)


def _shown(config: pytest.Config) -> str:
    try:
        return str(ALLOW_LIST.resolve().relative_to(config.rootpath))
    except ValueError:
        return str(ALLOW_LIST)


_KEY = pytest.StashKey[SkipPolicy]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = SkipPolicy(read_allow_list(), strict=in_ci())


def _policy(config: pytest.Config) -> SkipPolicy:
    return config.stash[_KEY]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.skipped:
        policy = _policy(item.config)
        skip = policy.note(report.nodeid, report.longrepr, getattr(report, "wasxfail", None))
        if skip.entry is None and policy.strict:
            report.outcome = "failed"
            if hasattr(report, "wasxfail"):
                del report.wasxfail
            report.longrepr = (
                f"unexpected skip in CI{f' at {skip.where}' if skip.where else ''}: {skip.reason}\n"
                f"In CI every test must run. Make it run on this machine, or list it with the reason in "
                f"{_shown(item.config)} ('{report.nodeid} | <why it may skip in CI>')."
            )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if report.skipped:
        _policy(collector.config).note(report.nodeid, report.longrepr, None)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    policy = _policy(session.config)
    if policy.strict and policy.unexpected and session.exitstatus in (
        pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    policy = _policy(config)
    tr = terminalreporter
    mode = "CI: a skip not listed here fails the run" if policy.strict else "not CI: skips are reported only"
    tr.write_sep("=", f"skip policy ({_shown(config)}; {mode})")
    if policy.entries:
        tr.write_line(f"allowed to skip in CI ({len(policy.entries)}):")
        for e in policy.entries:
            used = sum(1 for s in policy.seen if s.entry is e)
            tr.write_line(f"  {e.pattern} | {e.reason}  [skipped in this run: {used}]")
    else:
        tr.write_line("allowed to skip in CI: none (every collected test must run)")
    allowed = [s for s in policy.seen if s.entry is not None]
    unexpected = policy.unexpected
    tr.write_line(f"skipped in this run: {len(policy.seen)} (allowed {len(allowed)}, not allowed {len(unexpected)})")
    for s in unexpected:
        verdict = "FAILED (CI)" if policy.strict else "would fail in CI"
        tr.write_line(f"  {verdict}: {s.nodeid}: {s.reason}")
