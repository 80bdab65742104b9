"""Who may do what on a daemon: bearer tokens kept only as SHA-256 hashes, and per-service access levels.

The owner token (``--token-file``) may do everything. An access file (``--access-file``) adds principals with
levels per service (``*`` = all), the registry's levels: ``read`` = call, ``write`` = deploy/delete/put/rename,
``owner`` = also private state and deleting an env it wholly owns; daemon-wide routes need ``owner`` on ``*``.
A principal without ``allow_pickle`` may send JSON only and may not store objects (they are unpickled whatever
their label says), since unpickling runs the sender's code. Without ``--allowed-roots`` a deploy runs whatever it
names, so a principal deploys only with ``allow_code`` or ``allow_pickle``. The table per route and field is in
docs/RELIABILITY.md ("Access levels").
"""

from __future__ import annotations

import hmac
import importlib.machinery
import ipaddress
import json
import os
import sys
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tether.errors import AuthError, ConfigError
from tether.protocol.headers import PICKLE
from tether.protocol.tokens import hash_token, new_token, read_token_file

__all__ = [
    "AccessPolicy",
    "Grant",
    "TokenCheck",
    "add_grant",
    "GRANT_KEY",
    "authorize",
    "check_code_roots",
    "ROOTS_ENV",
    "check_imported",
    "forbidden_env_var",
    "hash_token",
    "is_loopback",
    "new_token",
    "read_token_file",
    "required_access",
    "visible",
]

Level = Literal["read", "write", "owner"]
_RANK = {"read": 1, "write": 2, "owner": 3}
HASH_CACHE = 64


@dataclass
class Grant:
    """One principal: its token's hash and its level per service name (``"*"`` = every service)."""

    principal: str
    token_sha256: str
    services: dict[str, Level] = field(default_factory=dict)
    allow_pickle: bool = False
    allow_code: bool = False  # may deploy any code (import paths, env vars, env python) without --allowed-roots

    @property
    def runs_code(self) -> bool:
        """Whether this principal may run code of its own choosing as the daemon's user (pickles are code)."""
        return self.allow_pickle or self.allow_code

    def level(self, service: str | None) -> int:
        if service is None:
            return max((_RANK[v] for v in self.services.values()), default=0)
        return max(_RANK.get(self.services.get(service, ""), 0), _RANK.get(self.services.get("*", ""), 0))


OWNER = Grant("owner", "", {"*": "owner"}, allow_pickle=True, allow_code=True)


class AccessPolicy:
    """The owner token's hash plus the grants of ``access_file`` (re-read when the file changes)."""

    def __init__(self, token_hash: str | None, access_file: Path | None = None, *, confined: bool = False) -> None:
        self.token_hash = token_hash
        self.access_file = access_file
        self.confined = confined  # --allowed-roots: a deploy runs only reviewed code, so write may deploy
        self._grants: dict[str, Grant] = {}
        self._mtime: float | None = None
        self._hashes: dict[str, str] = {}  # presented token -> its sha256, for the last few tokens seen

    @property
    def enabled(self) -> bool:
        return self.token_hash is not None

    def ok(self, authorization: str | None) -> bool:
        """Whether the header carries any valid token."""
        return self.identify(authorization) is not None

    def identify(self, authorization: str | None) -> Grant | None:
        if self.token_hash is None:
            return OWNER
        if not authorization or not authorization.startswith("Bearer "):
            return None
        presented = self._hash(authorization[7:].strip())
        if hmac.compare_digest(presented, self.token_hash):
            return OWNER
        return self._load().get(presented)

    def _hash(self, token: str) -> str:
        """``hash_token(token)``, remembered for the last ``HASH_CACHE`` tokens (a client sends the same one on
        every request)."""
        digest = self._hashes.get(token)
        if digest is None:
            digest = hash_token(token)
            if len(self._hashes) >= HASH_CACHE:
                del self._hashes[next(iter(self._hashes))]
            self._hashes[token] = digest
        return digest

    def _load(self) -> dict[str, Grant]:
        if self.access_file is None:
            return {}
        try:
            mtime = self.access_file.stat().st_mtime_ns
        except OSError:
            return {}
        if mtime != self._mtime:
            data = json.loads(self.access_file.read_text() or "{}")
            self._grants = {
                g["token_sha256"]: Grant(
                    g["principal"],
                    g["token_sha256"],
                    dict(g.get("services", {})),
                    bool(g.get("allow_pickle", False)),
                    bool(g.get("allow_code", False)),
                )
                for g in data.get("grants", [])
            }
            self._mtime = mtime
        return self._grants


TokenCheck = AccessPolicy  # the name the daemon first used


def add_grant(
    access_file: Path, principal: str, services: dict[str, Level], *, allow_pickle: bool = False,
    allow_code: bool = False,
) -> str:
    """Create a token for ``principal`` with ``services`` levels; only its hash is written. Returns the token."""
    for level in services.values():
        if level not in _RANK:
            raise ValueError(f"unknown access level {level!r}: use read, write or owner")
    token = new_token()
    data: dict[str, Any] = json.loads(access_file.read_text() or "{}") if access_file.exists() else {}
    grants = [g for g in data.get("grants", []) if g.get("principal") != principal]
    grants.append(
        {
            "principal": principal,
            "token_sha256": hash_token(token),
            "services": services,
            "allow_pickle": allow_pickle,
            "allow_code": allow_code,
        }
    )
    access_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=access_file.parent, prefix=".access.")
    with os.fdopen(fd, "w") as f:
        json.dump({"grants": grants}, f, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, access_file)
    return token


# route (canonical path) -> (level, where the service name is)
_ROUTES: dict[tuple[str, str], tuple[Level | None, str | None]] = {
    ("GET", "/health"): (None, None),
    ("GET", "/openapi.json"): (None, None),
    ("GET", "/status"): ("read", None),
    ("GET", "/objects"): ("read", None),
    ("POST", "/deploy"): ("write", "body"),
    ("POST", "/shutdown"): ("owner", "*"),
    ("POST", "/autostop"): ("owner", "*"),
    ("GET", "/envs"): ("read", None),
    ("DELETE", "/envs/{env}"): ("owner", "env"),
    ("POST", "/{name}/call"): ("read", "name"),
    ("POST", "/{name}/{method}/call"): ("read", "name"),
    ("GET", "/{name}/call"): ("read", "name"),  # query parameters as kwargs (Runhouse's curl spelling)
    ("GET", "/{name}/{method}/call"): ("read", "name"),
    ("GET", "/{name}"): ("read", "name"),
    ("GET", "/calls/{call_id}"): ("read", "call"),
    ("GET", "/calls/{call_id}/logs"): ("read", "call"),
    ("POST", "/calls/{call_id}/cancel"): ("read", "call"),
    ("GET", "/objects/{key}"): ("read", "key"),
    ("PUT", "/objects/{key}"): ("write", "key"),
    ("DELETE", "/objects/{key}"): ("write", "key"),
    ("POST", "/objects/{key}/rename"): ("write", "key"),
    ("DELETE", "/services/{key}"): ("write", "key"),
}


def required_access(method: str, canonical: str | None) -> tuple[Level | None, str | None]:
    """The level a route needs and where its service name comes from; unknown routes need any valid token."""
    if canonical is None:
        return "read", None
    return _ROUTES.get((method, canonical), ("owner", "*"))


GRANT_KEY = "tether.grant"  # where authorize() leaves the caller's Grant on the request (listings filter by it)


def visible(grant: Grant | None, name: str) -> bool:
    """Whether listings (``/status``, ``/objects``, ``/envs``) show ``name`` to ``grant`` (None: no auth)."""
    return grant is None or grant.level(name) >= _RANK["read"]


def _denied(grant: Grant, level: Level, service: str | None, why: str = "") -> AuthError:
    what = f"service {service!r}" if service else "this route"
    return AuthError(
        f"{grant.principal!r} lacks {level} access to {what}{why}",
        hint="read = call, write = deploy/delete/put, owner = everything; ask the cluster owner",
        details={"principal": grant.principal, "needed": level, "service": service},
    )


async def _json_body(request: Any) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        return None


async def authorize(
    request: Any, policy: AccessPolicy, call_service: Callable[[str], str | None],
    in_env: Callable[[str], list[str]] | None = None, is_service: Callable[[str], bool] | None = None,
    env_reqs: Callable[[str], list[str]] | None = None, call_starter: Callable[[str], str | None] | None = None,
) -> AuthError | None:
    """None when ``request`` (an aiohttp request) may proceed, else the AuthError to answer with.

    ``in_env(env)`` names the services and objects of an env, ``is_service(key)`` says whether a key is a deployed
    service, ``env_reqs(env)`` lists the requirements a known env has installed, ``call_starter(id)`` is the token hash
    of whoever started a call. The rules per route and field are in docs/RELIABILITY.md ("Access levels"): what a body would do is
    checked, not its label; daemon-wide routes need ``owner`` on ``*``; a non-owner principal runs no code of its
    own choosing without ``allow_pickle`` or ``allow_code`` (without --allowed-roots, deploying is running code).
    """
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else None
    level, source = required_access(request.method, canonical)
    if level is None:
        return None
    grant = policy.identify(request.headers.get("Authorization"))
    if grant is None:
        return AuthError(
            "missing or wrong bearer token",
            hint="pass the cluster's token (cluster.token) as 'Authorization: Bearer …'",
        )
    request[GRANT_KEY] = grant
    if grant is OWNER:
        return None
    pickled = request.content_type == PICKLE or canonical == "/objects/{key}" and request.method == "PUT"
    if pickled and not grant.allow_pickle:  # PUT /objects is unpickled whatever its label says
        return AuthError(
            f"{grant.principal!r} may send JSON bodies only (a stored object is a pickle, and unpickling runs code)",
            hint="call with JSON {'args': [...], 'kwargs': {...}}, or ask the owner for allow_pickle",
        )
    extra: list[tuple[Level, str, str]] = []  # further (level, name, why) the request needs
    service: str | None = None
    if source in ("name", "key"):
        service = request.match_info.get(source)
    elif source == "call":
        call_id = request.match_info.get("call_id", "")
        service = call_service(call_id)
        if service is None:
            service = "*"  # an unknown id: only the daemon's owners may cancel a call before it arrives
        starter = call_starter(call_id) if call_starter is not None else None
        if starter is not None and starter != grant.token_sha256 and grant.level(service) < _RANK["owner"]:
            return AuthError(f"call {call_id!r} was started by another principal",
                             hint="re-attach to, read and cancel calls you started",
                             details={"principal": grant.principal, "call_id": call_id})
    elif source == "body":
        spec = await _json_body(request)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return None  # the handler answers the malformed body
        service = spec["name"]
        code: dict[str, Any] = spec["code"] if isinstance(spec.get("code"), dict) else {}
        if (code.get("pickled_b64") or spec.get("init_pickled_b64")) and not grant.allow_pickle:
            return AuthError(
                f"{grant.principal!r} may not deploy pickled code or arguments",
                hint="deploy code by import path, or ask the owner for allow_pickle",
            )
        if not policy.confined and not grant.runs_code and grant.level(service) >= _RANK["write"]:
            return AuthError(
                f"{grant.principal!r} may not deploy code on this daemon: without --allowed-roots a deploy runs any "
                "code (an import path, env vars, env python) as the daemon's user",
                hint="ask the owner to start the daemon with --allowed-roots, or for allow_code in your grant",
                details={"principal": grant.principal, "service": service},
            )
        env = spec.get("env")
        env_name = env.get("name", "default") if isinstance(env, dict) else "default"
        reqs = env.get("reqs") if isinstance(env, dict) else None
        if isinstance(reqs, list) and reqs and not grant.runs_code and isinstance(env_name, str):
            known = env_reqs(env_name) if env_reqs is not None else []
            new = [r for r in reqs if r not in known]
            if new:  # installing a package runs its build code: the owner picks what an env installs
                return AuthError(
                    f"{grant.principal!r} may not add requirements to env {env_name!r} ({', '.join(map(str, new))}): "
                    "installing a package runs code of its choosing",
                    hint="deploy into an env the owner set up with these requirements, or ask for allow_code",
                    details={"principal": grant.principal, "env": env_name, "reqs": new},
                )
        if isinstance(spec.get("of"), str):
            extra.append(("write", spec["of"], " (an instance of its class is a deploy of it)"))
        replace = request.query.get("replace_env", "0") not in ("", "0", "false")
        if replace and in_env is not None and isinstance(env_name, str):  # a restart redeploys all of the env
            extra += [("write", n, f" (replace_env restarts env {env_name!r}, which holds it)")
                      for n in in_env(env_name)]
    elif source == "env":
        names = in_env(request.match_info.get("env", "")) if in_env is not None else []
        extra += [("owner", n, " (deleting its env deletes it)") for n in names] or [("owner", "*", "")]
        service = names[0] if names else "*"
    elif source == "*":
        service = "*"
    method = request.match_info.get("method")
    if method == "__setattr__":
        level = "write"  # setting an attribute changes the service's state for every caller
    # below: private state is the service owner's; one who may run code in the worker reaches it anyway
    if method in ("__getattr__", "__setattr__") and not grant.runs_code:
        data = await _json_body(request)
        args = data.get("args") if isinstance(data, dict) else None
        attr = args[0] if isinstance(args, list) and args else None
        if not isinstance(attr, str) or attr.startswith("_"):
            level = "owner"  # private state (``__dict__``, ``_secret``) is the service owner's
    if canonical == "/objects/{key}" and request.method == "GET" and service and is_service is not None \
            and is_service(service) and not grant.runs_code:
        level = "owner"  # a service's pickled object is its whole state, private fields included
    if canonical == "/objects/{key}/rename":
        data = await _json_body(request)
        if isinstance(data, dict) and isinstance(data.get("to"), str):
            extra.append(("write", data["to"], " (the rename's target)"))
    if grant.level(service) < _RANK[level]:
        return _denied(grant, level, service)
    for need, name, why in extra:
        if grant.level(name) < _RANK[need]:
            return _denied(grant, need, name, why)
    return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ROOTS_ENV = "TETHER_ALLOWED_ROOTS"  # the daemon's resolved --allowed-roots, for its workers (os.pathsep-joined)

# env vars that change what the worker's interpreter (or a program it starts) loads and runs, whatever code is
# deployed: refused under --allowed-roots. HOME moves the user site-packages, whose .pth files run at start-up.
FORBIDDEN_ENV_PREFIXES = ("PYTHON", "LD_", "DYLD_", "TETHER_")
FORBIDDEN_ENV_VARS = frozenset({
    "PATH", "HOME", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "GCONV_PATH",
    "PERL5OPT", "PERL5LIB", "PERLLIB", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS", "GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_CONFIG_GLOBAL", "SSL_CERT_FILE",
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "VIRTUAL_ENV",
    "CONDA_PREFIX", "MALLOC_CONF", "GLIBC_TUNABLES", "OPENSSL_CONF", "OPENSSL_MODULES",
})


def forbidden_env_var(name: str) -> bool:
    upper = name.upper()
    return upper in FORBIDDEN_ENV_VARS or upper.startswith(FORBIDDEN_ENV_PREFIXES)


def _dotted(value: str | None, what: str, spec_name: str) -> list[str]:
    parts = (value or "").split(".") if value else []
    if any(not part.isidentifier() for part in parts):
        raise ConfigError(f"invalid {what} {value!r} of service {spec_name!r}: dotted Python names only")
    return parts


def _in_root(root: Path, top: str) -> bool:
    """Whether the top-level module ``top`` is found in ``root`` itself (a package, namespace folder or module
    file), not elsewhere on the worker's path."""
    if (root / top).is_dir():
        return True
    return any((root / f"{top}{suffix}").is_file() for suffix in importlib.machinery.all_suffixes())


def check_code_roots(spec: Any, allowed_roots: list[Path] | None) -> Any:
    """Refuse a deployment that would run anything not under ``allowed_roots``; return the spec to run, its paths
    resolved (symlinks, ``..``) once, here: the worker imports from and runs what was checked, not a path whose
    symlink may be swapped afterwards. Without ``allowed_roots`` the spec is returned as it is.

    Refused with ``AuthError``: by-value code or init arguments (pickles run code); code with no root; a module
    not found in its root itself (``builtins:exec``, ``os:system`` with an allowed root; the worker also checks
    that what the qualname reaches is defined under the root); a code root, env ``working_dir`` or the folder of
    env ``python`` outside the roots; env vars that change what the interpreter loads (PYTHONPATH, PYTHONHOME,
    PYTHONSTARTUP, LD_PRELOAD, HOME, PATH, ...: :func:`forbidden_env_var`); requirements that are paths, URLs or
    pip options (names from the package index are still installed: see docs/RELIABILITY.md).
    """
    if not allowed_roots:
        return spec
    allowed = [Path(r).resolve() for r in allowed_roots]
    hint = f"deploy code under one of: {', '.join(map(str, allowed))} (daemon --allowed-roots)"
    details = {"allowed_roots": [str(a) for a in allowed]}
    code = spec.code
    if code.pickled_b64 or spec.init_pickled_b64:
        raise AuthError(
            f"service {spec.name!r} ships pickled code, but this daemon deploys only from allowed roots",
            hint=hint,
        )
    if not code.root:
        raise AuthError(
            f"service {spec.name!r} has no code root, but this daemon deploys only from allowed roots",
            hint=hint,
        )

    def inside(what: str, value: str, *, keep_name: bool = False) -> str:
        try:
            raw = Path(value)
            # a venv's bin/python is a symlink out of the venv: the folder holding it is what must be inside
            path = raw.parent.resolve() / raw.name if keep_name else raw.resolve()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"invalid {what} {value!r}: {exc}") from None
        if not raw.is_absolute() or not any(path.is_relative_to(a) for a in allowed):
            raise AuthError(f"{what} {str(path)!r} of service {spec.name!r} is outside the allowed roots",
                            hint=hint, details=details)
        return str(path)

    root = inside("code root", code.root)
    parts = _dotted(code.import_path, "import path", spec.name)
    if not _dotted(code.qualname, "qualname", spec.name):
        raise AuthError(
            f"service {spec.name!r} names the module {code.import_path!r} itself: under allowed roots a service is "
            "a function or class (the method route would reach everything the module imported)",
            hint="name a function or class in the module (import_path:qualname)", details=details,
        )
    if not parts or not _in_root(Path(root), parts[0]):
        raise AuthError(
            f"module {code.import_path!r} of service {spec.name!r} is not in its code root {root!r}: this daemon "
            "runs only code from the allowed roots",
            hint=hint, details=details,
        )
    env = spec.env
    updates: dict[str, Any] = {}
    if env.python is not None:
        updates["python"] = inside("env python", env.python, keep_name=True)
    if env.working_dir is not None:
        updates["working_dir"] = inside("env working_dir", env.working_dir)
    bad = sorted(k for k in env.env_vars if forbidden_env_var(k))
    if bad:
        raise AuthError(
            f"env {env.name!r} of service {spec.name!r} sets {', '.join(bad)}, which change what the worker's "
            "interpreter loads: refused under allowed roots",
            hint="drop those env vars (put code under an allowed root instead)",
            details={**details, "env_vars": bad},
        )
    odd = [r for r in env.reqs if r.startswith((".", "-")) or any(c in r for c in "/\\:@")]
    if odd:
        raise AuthError(
            f"env {env.name!r} of service {spec.name!r} requires {odd!r}: paths, URLs and pip options are refused "
            "under allowed roots",
            hint="require packages by name and version", details={**details, "reqs": odd},
        )
    return spec.model_copy(update={"code": code.model_copy(update={"root": root}),
                                   "env": env.model_copy(update=updates)})


def check_imported(obj: Any, root: str | None) -> None:
    """Under ``--allowed-roots`` (the worker's side): what an import path and qualname reached must be defined in
    a module loaded from ``root`` (the resolved, checked root), not reached through it (``mypkg:os.system``)."""
    if not root:
        raise AuthError("code without a root cannot be deployed under allowed roots")
    if isinstance(obj, types.ModuleType):
        raise AuthError(f"module {obj.__name__!r} is no service under allowed roots: name a function or class",
                        hint="deploy import_path:qualname of a function or class defined under the allowed roots")
    base = Path(root).resolve()
    module = obj if isinstance(obj, types.ModuleType) else sys.modules.get(getattr(obj, "__module__", None) or "")
    paths = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])] if module else []
    if not any(p and Path(p).resolve().is_relative_to(base) for p in paths):
        where = getattr(module, "__name__", None) or getattr(obj, "__module__", None) or type(obj).__name__
        raise AuthError(
            f"{getattr(obj, '__qualname__', repr(obj)[:80])!r} is defined in {where!r}, not under the code root "
            f"{root!r}: this daemon runs only code from its allowed roots",
            hint="deploy a function or class defined in a module under the allowed roots",
        )
