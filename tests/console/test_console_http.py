"""The console's session rules over plain HTTP (no browser): `tether console` on a local registry with its one-time
token, a revoked token ends its sessions at once, forms without the CSRF token or from another origin are refused,
and the session cookie never carries the token."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.conftest import Team


class Client:
    """A cookie-keeping HTTP client that does not follow redirects (so they can be checked)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def request(self, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def login(self, token: str) -> int:
        _, _, html = self.request("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf is not None
        status, headers, _ = self.request("/console/login", {"csrf": csrf.group(1), "token": token, "next": ""})
        assert status == 303
        return 0 if "login" in headers.get("Location", "") else 1

    def csrf(self, path: str) -> str:
        _, _, html = self.request(path)
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found is not None, html[:500]
        return found.group(1)


@pytest.fixture
def local_console(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``tether console`` on this test's local registry (alice/embed saved), on a free port."""
    from tether.registry import open_registry

    db = tmp_path / "tether-home" / "registry.db"
    reg = open_registry(db=db)
    reg.save("embed", {"kind": "function"})
    reg.close()
    ready = tmp_path / "console-ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "tether.cli", "console", "--port", "0", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert ready.stat().st_mode & 0o077 == 0  # the login token is in it
        yield info["url"], info["token"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_local_console_takes_its_one_time_token(local_console: tuple[str, str]) -> None:
    url, token = local_console
    c = Client(url)
    status, headers, _ = c.request("/console/services")
    assert status == 303 and headers["Location"].startswith("/console/login")
    assert c.login("wrong") == 0
    assert c.login(token) == 1
    status, _, html = c.request("/console/services")
    assert status == 200 and "alice/embed" in html and "alice (local)" in html
    assert token not in str([ck.value for ck in c.jar])


def test_a_revoked_token_ends_its_session_and_forms_need_the_csrf_token(team: Team) -> None:
    from tether.registry import open_registry

    alice = open_registry(url=team.url, token=team.tokens["alice"])
    alice.save("embed", {"kind": "function"})
    c = Client(team.url)
    assert c.login(team.tokens["alice"]) == 1
    csrf = c.csrf("/console/s/alice/embed")
    for data, headers in (({"principal": "carol", "level": "read"}, {}),  # no CSRF token
                          ({"principal": "carol", "level": "read", "csrf": "x" * len(csrf)}, {}),  # a wrong one
                          ({"principal": "carol", "level": "read", "csrf": csrf}, {"Origin": "http://evil.example"})):
        status, _, html = c.request("/console/s/alice/embed/grant", data, headers)
        assert status == 403 and "CSRF" in html
    assert alice.grants("embed") == []
    status, headers, _ = c.request("/console/s/alice/embed/grant", {"principal": "carol", "level": "read", "csrf": csrf})
    assert status == 303 and [g.principal for g in alice.grants("embed")] == ["carol"]

    alice.backend.revoke_token()  # the token's holder revokes it: the console session ends with it
    status, headers, _ = c.request("/console/services")
    assert status == 303 and headers["Location"].startswith("/console/login")
