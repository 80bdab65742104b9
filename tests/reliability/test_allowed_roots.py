"""``--allowed-roots`` cannot be stepped around: a deployer of a daemon that runs only code from its allowed roots
runs nothing else, by import path, env vars, symlinks swapped after the check, or a manifest restored at restart.

Every attack's payload creates a marker file; the marker must never appear. One thing is not refused, by design:
the owner's pickled call arguments run (the owner token is the power to run code; see docs/RELIABILITY.md).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.reliability.daemons import DaemonProc, start_daemon

PICKLE = "application/x-tether-pickle"


class Tree:
    """An allowed root and an attacker's folder outside it, with a marker file each payload creates."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.allowed = base / "allowed"
        self.other = base / "other"  # outside the roots: the attacker's
        self.mine = base / "mine"  # outside the roots: where the attacker keeps symlinks
        self.marker = base / "pwned"
        for d in (self.allowed / "okpkg", self.other / "okpkg", self.other / "evilpkg", self.mine,
                  self.allowed / "bin"):
            d.mkdir(parents=True)
        touch = f"open({str(self.marker)!r}, 'a').write('x')"
        (self.allowed / "okpkg" / "__init__.py").write_text(
            "import os\n"
            "run = os.system  # an alias: defined in posix, not here\n"
            "def hello():\n    return 'hi from okpkg'\n"
            "def echo(x):\n    return repr(x)\n"
            "class Greeter:\n    def greet(self):\n        return 'hello'\n"
        )
        (self.other / "okpkg" / "__init__.py").write_text(f"{touch}\ndef hello():\n    return 'evil'\n")
        (self.other / "evilpkg" / "__init__.py").write_text(f"{touch}\ndef hello():\n    return 'evil'\n")
        (self.other / "sitecustomize.py").write_text(touch + "\n")
        self.python = self.allowed / "bin" / "py"  # a python inside the roots (a wrapper script)
        self.python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
        self.python.chmod(0o755)
        self.evil_python = self.mine / "evil-py"
        self.evil_python.write_text(f'#!/bin/sh\ntouch {self.marker}\nexec {sys.executable} "$@"\n')
        self.evil_python.chmod(0o755)

    def code(self, import_path: str = "okpkg", qualname: str = "hello", root: Path | None = None) -> dict:
        return {"root": str(root or self.allowed), "import_path": import_path, "qualname": qualname}

    @property
    def pwned(self) -> bool:
        return self.marker.exists()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return Tree(tmp_path_factory.mktemp("roots"))


@pytest.fixture(scope="module")
def confined(tree: Tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("confined") / "state", "--allowed-roots", str(tree.allowed))
    yield d
    d.kill()


@pytest.fixture(autouse=True)
def _no_marker(tree: Tree) -> Iterator[None]:
    tree.marker.unlink(missing_ok=True)
    yield
    tree.marker.unlink(missing_ok=True)


def _refused(r: requests.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "AuthError", r.text


def _call_retrying(d: DaemonProc, name: str, *args: object) -> requests.Response:
    """A call right after its worker was killed: the first may report WorkerDied while the env restarts."""
    for _ in range(20):
        r = d.call(name, *args)
        if r.status_code not in (502, 503):
            return r
        time.sleep(0.2)
    return r


def _kill_worker(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


ESCAPES = {
    # import path, qualname, JSON args that would run the payload if deployed
    "builtins:exec": ("builtins", "exec", ["open({m!r}, 'a').write('x')"]),
    "os:system": ("os", "system", ["touch {m}"]),
    "okpkg:os.system (through an import of the allowed module)": ("okpkg", "os.system", ["touch {m}"]),
    "okpkg:run (an alias of os.system in the allowed module)": ("okpkg", "run", ["touch {m}"]),
    "okpkg:hello.__globals__ (attribute walk)": ("okpkg", "hello.__globals__", []),
    "subprocess:getoutput": ("subprocess", "getoutput", ["touch {m}"]),
}


def test_a_module_from_the_root_is_no_service_whose_methods_reach_its_imports(confined, tree):
    """The method route calls any attribute: a module as the target would expose everything it imported."""
    r = confined.post("/deploy", json={"name": "wholemod", "code": tree.code("okpkg", "")})
    if r.status_code == 200:
        confined.post("/wholemod/run/call", json={"args": [f"touch {tree.marker}"], "kwargs": {}})
    assert not tree.pwned, "okpkg.run (os.system) ran through the method route"
    _refused(r)


@pytest.mark.parametrize("attack", list(ESCAPES))
def test_an_allowed_root_reaches_no_code_outside_it(confined, tree, attack):
    import_path, qualname, args = ESCAPES[attack]
    name = "esc" + str(list(ESCAPES).index(attack))
    r = confined.post("/deploy", json={"name": name, "code": tree.code(import_path, qualname)})
    if r.status_code == 200:  # the bypass: now run it
        confined.call(name, *[a.format(m=str(tree.marker)) for a in args])
    assert not tree.pwned, f"{attack}: the payload ran"
    _refused(r)
    assert name not in confined.get("/objects").json()["keys"]


def test_code_defined_under_the_root_still_deploys(confined, tree):
    confined.deploy("ok", "hello", module="okpkg", root=tree.allowed)
    assert confined.call("ok").json()["result"] == "hi from okpkg"
    r = confined.post("/deploy", json={"name": "ok2", "env": {"name": "py-inside", "python": str(tree.python)},
                                       "code": tree.code()})
    assert r.status_code == 200, r.text  # a python inside the roots runs the worker
    assert confined.call("ok2").json()["result"] == "hi from okpkg"


ENV_VARS = {
    "PYTHONPATH": "{other}",  # sitecustomize.py there runs at interpreter start
    "PYTHONSTARTUP": "{other}/sitecustomize.py",
    "PYTHONHOME": "{other}",
    "PYTHONWARNINGS": "ignore::evilpkg.Warning",  # imports evilpkg to resolve the category
    "PYTHONPYCACHEPREFIX": "{other}",
    "PYTHONUSERBASE": "{other}",
    "LD_PRELOAD": "{other}/evil.so",
    "LD_LIBRARY_PATH": "{other}",
    "HOME": "{other}",  # moves the user site-packages, whose .pth files run at start
    "PATH": "{other}:/usr/bin:/bin",
    "BASH_ENV": "{other}/sitecustomize.py",
    "TETHER_ALLOWED_ROOTS": "/",
}


@pytest.mark.parametrize("var", list(ENV_VARS))
def test_env_vars_that_change_the_interpreter_are_refused(confined, tree, var):
    env = {"name": f"ev-{var.lower().replace('_', '-')}",
           "env_vars": {var: ENV_VARS[var].format(other=tree.other)}}
    r = confined.post("/deploy", json={"name": "ev", "env": env, "code": tree.code()})
    if r.status_code == 200:
        confined.call("ev")
    assert not tree.pwned, f"{var}: the payload ran"
    _refused(r)
    assert var in r.json()["error"]["message"]


def test_harmless_env_vars_and_requirements_pass_but_paths_in_requirements_do_not(confined, tree):
    r = confined.post("/deploy", json={"name": "harmless", "env": {"name": "harmless", "env_vars": {"API_KEY": "x"}},
                                       "code": tree.code()})
    assert r.status_code == 200, r.text
    for req in (str(tree.other), "./evilpkg", "-e/tmp/x", "--index-url=http://127.0.0.1:1/simple", "evil @ file:///x",
                "git+https://example.invalid/x.git"):
        r = confined.post("/deploy", json={"name": "reqs", "env": {"name": "reqs", "reqs": [req]},
                                           "code": tree.code()})
        _refused(r)


def test_a_code_root_symlink_swapped_after_the_check_changes_nothing(confined, tree):
    link = tree.mine / "link"
    link.symlink_to(tree.allowed)
    r = confined.post("/deploy", json={"name": "swapped", "code": tree.code(root=link)})
    assert r.status_code == 200, r.text
    assert confined.call("swapped").json()["result"] == "hi from okpkg"
    link.unlink()
    link.symlink_to(tree.other)  # now the same path is the attacker's tree
    _kill_worker(r.json()["pid"])  # the restarted worker imports the service again
    answer = _call_retrying(confined, "swapped")
    assert not tree.pwned, "the restarted worker imported the swapped tree"
    assert answer.json().get("result") == "hi from okpkg", answer.text
    status = confined.get("/status").json()["services"]
    assert str(link) not in str(status)  # the daemon keeps the resolved root


def test_an_env_python_symlink_swapped_after_the_check_changes_nothing(confined, tree):
    link = tree.mine / "python"
    link.symlink_to(tree.python)  # resolves inside the roots at check time
    r = confined.post("/deploy", json={"name": "pyswap", "env": {"name": "pyswap", "python": str(link)},
                                       "code": tree.code()})
    if r.status_code == 200:
        link.unlink()
        link.symlink_to(tree.evil_python)
        _kill_worker(r.json()["pid"])
        _call_retrying(confined, "pyswap")
    assert not tree.pwned, "the restarted worker ran the swapped python"
    _refused(r)  # the folder holding the python is outside the roots


def test_a_restarted_daemon_rechecks_what_its_manifest_restores(tree, tmp_path):
    state = tmp_path / "state"
    d = start_daemon(state)  # no --allowed-roots: the owner deploys what they like
    try:
        d.deploy("good", "hello", module="okpkg", root=tree.allowed)
        d.deploy("evil", "hello", module="evilpkg", root=tree.other, env="evil")
        r = d.post("/deploy", json={"name": "envvar", "env": {"name": "envvar",
                                                              "env_vars": {"PYTHONPATH": str(tree.other)}},
                                    "code": tree.code()})
        assert r.status_code == 200, r.text
        r = d.post("/deploy", json={"name": "builtin", "env": {"name": "builtin"},
                                    "code": tree.code("builtins", "exec")})
        assert r.status_code == 200, r.text
    finally:
        d.kill()
    tree.marker.unlink(missing_ok=True)
    d = start_daemon(state, "--allowed-roots", str(tree.allowed))
    try:
        time.sleep(1.0)  # the daemon starts each env with services at once
        for name in ("evil", "envvar", "builtin"):
            r = d.call(name, f"open({str(tree.marker)!r}, 'a').write('x')")
            assert r.status_code in (401, 404), (name, r.text)
        assert not tree.pwned, "the restarted daemon restored code outside its allowed roots"
        assert d.call("good").json()["result"] == "hi from okpkg"
        assert sorted(d.get("/objects").json()["keys"]) == ["good"]
    finally:
        d.kill()


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # runs wherever it is unpickled
        return (exec, (f"open({self.marker!r}, 'a').write('x')",))


def test_the_owners_pickled_arguments_run_by_design(confined, tree):
    """Documented, not refused: the owner token may send pickles, and unpickling runs code. --allowed-roots limits
    what is deployed, not what the owner sends (a non-owner without allow_pickle sends JSON only)."""
    confined.deploy("echo", "echo", module="okpkg", root=tree.allowed)
    body = pickle.dumps(((_Payload(str(tree.marker)),), {}))
    r = confined.post("/echo/call", data=body, headers={**confined.headers, "Content-Type": PICKLE})
    assert r.status_code == 200, r.text
    assert tree.pwned
