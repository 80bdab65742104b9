"""The import-layer contract (docs/ARCHITECTURE.md, "Dependency rules"), checked on the source with ``ast``.

Layers, bottom to top: errors/specs (and the other base modules) → protocol → client → compute →
escalation | registry → api → runs → the ``tether`` package itself and the CLI. A module imports its own layer
or lower ones, never upward; escalation and registry do not import each other. ``tether.daemon`` imports the
protocol, the base modules and OOM classification only, and nothing outside ``daemon/`` imports it. Providers
import public ``tether``, ``tether.runs`` and ``tether.errors`` only, and never each other. No ``import``
inside a function, except of optional extras and of the heavy modules listed in ``DEFERRED`` (each with why).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"core": "tether", "daemon": "tether.daemon", "providers": "tether.providers"}

BASE = {"tether.errors", "tether.specs", "tether._version", "tether.home", "tether.logging"}
LAYERS: list[set[str]] = [
    BASE,
    {"tether.protocol"},
    {"tether.client"},
    {"tether.compute", "tether.catalog", "tether.routing"},
    {"tether.escalation", "tether.oom", "tether.registry", "tether.console"},
    {"tether.api"},
    {"tether.runs"},
    {"tether", "tether.cli"},
]
SIBLINGS_APART = [({"tether.escalation", "tether.oom"}, {"tether.registry"})]
DAEMON_MAY_IMPORT = BASE | {"tether.protocol", "tether.escalation.oom", "tether.daemon"}
PROVIDERS_MAY_IMPORT = {"tether", "tether.runs", "tether.errors"}
OPTIONAL_EXTRAS = {"sky", "uvloop", "airflow", "prefect", "dagster", "cryptography", "psycopg", "openlineage",
                   "ray", "distributed", "torch"}  # the last three: the distributed extra
_CLOUDPICKLE = ("cloudpickle ~15 ms: a fresh process calling with plain values never pickles with it (cloudpickle's "
                "output loads with pickle)")
_PYDANTIC = "pydantic"
_ASYNCIO = "asyncio"
_TENACITY = "tenacity ~6 ms: only a retry needs it, and a fresh process's first call is not one"
DEFERRED = {
    # (importing module, imported module): why it is imported only where it is used
    ("tether.registry", "tether.registry.store"): "SQLAlchemy: a call by name must not pay ~0.2 s of ORM import",
    ("tether.registry.lean", "tether.registry.store"): "SQLAlchemy, only for what the sqlite3 reader does not do",
    ("tether.logging", "structlog"): "structlog + rich ~0.1 s: a fresh caller logs nothing, the daemon configures it",
    ("tether.registry", "tether.registry.remote"): "the team registry's HTTP client, for remote registries only",
    ("tether.registry.cli", "tether.registry.server"): "aiohttp's server, for `tether registry serve` only",
    ("tether.registry.cli", "tether.registry.store"): "SQLAlchemy, for the commands that open a store",
    ("tether.console.cli", "tether.console.routes"): "aiohttp's server and SQLAlchemy, for `tether console` only",
    ("tether.compute.bootstrap", "rich.console"): "rich ~20 ms: only a host's bring-up shows progress, and a fresh "
                                                  "caller imports this module (tether.api.box) without bringing up",
    ("tether.compute.bootstrap", "rich.progress"): "rich, as above",
    ("tether.api.distribute.pool", "rich.progress"): "rich, only for a map's progress bar",
    ("tether.compute.bootstrap", "packaging.requirements"): "not a core dependency: only bootstrapping hosts needs it",
    ("tether.compute.bootstrap", "packaging.utils"): "not a core dependency: only bootstrapping hosts needs it",
    ("tether.api.secrets", "tether.registry.vault_client"): "the registry's vault (HTTP client or SQLAlchemy), only "
                                                             "for secrets kept in the registry",
    ("tether.registry.vault_client", "tether.registry.vault"): "SQLAlchemy, only for secrets in the local registry",
    ("tether.errors", "cloudpickle"): _CLOUDPICKLE,
    ("tether.client.payloads", "cloudpickle"): _CLOUDPICKLE,
    ("tether.client.routes", "cloudpickle"): _CLOUDPICKLE,
    ("tether.client.mock", "cloudpickle"): _CLOUDPICKLE,
    ("tether.api.codesync", "cloudpickle"): _CLOUDPICKLE,
    ("tether.api.module", "cloudpickle"): _CLOUDPICKLE,
    ("tether.api.services", "cloudpickle"): _CLOUDPICKLE,
    ("tether.runs.ids", "cloudpickle"): _CLOUDPICKLE,
    ("tether.client.daemon", "tenacity"): _TENACITY,
    ("tether.api.clusters", "tether.compute.routing"): "the router with its catalog and models (~10 ms), only for "
                                                      "`.plan()`; bring-up plans inside the backend",
    ("tether.api.services", "tether.api.distribute"): "the replica pool and the engines (~8 ms), only for "
                                                       "`.distribute()`, which a fresh caller does not use",
    ("tether.client.syncclient", "tenacity"): _TENACITY,
    ("tether.registry.usage", "tenacity"): _TENACITY,
    # asyncio (~20 ms with what it pulls): a plain sync call (the blocking transport) needs no event loop; the async
    # side (transport, background loop, off-loop transfers) is imported at its first use
    ("tether.api.invocation", "asyncio"): _ASYNCIO + ": the async and streaming calls' own",
    ("tether.api.invocation", "tether.client.loop"): _ASYNCIO + ": a sync stream runs on the background loop",
    ("tether.api.calls", "tether.client.loop"): _ASYNCIO + ": only re-attaching waits on the background loop",
    ("tether.client", "tether.client.wire"): _ASYNCIO + ": close_all, on first use",
    ("tether.client.daemon", "tether.client.wire"): _ASYNCIO + ": the async transport, made at the first async request",
    ("tether.client.daemon", "tether.client.offloop"): _ASYNCIO + ": off-loop transfers of async calls",
    ("tether.client.daemon", "tether.client.loop"): _ASYNCIO + ": a sync call resumed on the async path",
    ("tether.client.syncclient", "tether.client.loop"): _ASYNCIO + ": a transport with no sync side, and streams",
    # pydantic (~0.1 s to import, more to build models): a fresh process that loads a saved function by name and
    # calls it once builds no model (tether.api.saved); these modules are on that path and import them on use
    ("tether.api.saved", "tether.api.loading"): _PYDANTIC + ": the full handles, for what a plain saved function's "
                                                "call does not need (tether.api.saved)",
    ("tether.api.compat", "tether.api.envs"): _PYDANTIC + ": only an env Runhouse's spellings make needs them",
    ("tether.api.calls", "tether.api.clusters"): _PYDANTIC + ": only re-attaching with no cluster makes one",
    ("tether.api.records", "tether.api.codesync"): _PYDANTIC + ": only a save freezes code (CodeRef)",
    ("tether.api.records", "tether.registry.models"): _PYDANTIC + ": only a call with lineage edges records a model",
    ("tether.registry", "tether.registry.models"): _PYDANTIC + ": the record models, on first use",
    ("tether.registry", "tether.registry.configs"): _PYDANTIC + ": register_validator, on first use",
    ("tether.registry.client", "tether.registry.configs"): _PYDANTIC + ": only a save checks a config",
    ("tether.registry.client", "tether.registry.models"): _PYDANTIC + ": only a lineage query makes an Artifact",
    ("tether.registry.lean", "tether.registry.models"): _PYDANTIC + ": get() builds a Version, saved() none",
    ("tether.registry.plain", "tether.registry.models"): _PYDANTIC + ": only a sink that needs models makes them",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    pkg = FOLDERS[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([pkg, *parts])


def _sources() -> list[tuple[str, Path, ast.Module]]:
    out = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out.append((_module_name(path), path, ast.parse(path.read_text(), str(path))))
    return out


SOURCES = _sources()


def _imports(tree: ast.Module, module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import in ``tree``, ``TYPE_CHECKING`` ones out."""
    found: list[tuple[str, int, bool]] = []
    package = module if module in {m for m, p, _ in SOURCES if p.name == "__init__.py"} else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                if base == "tether":  # `from tether import errors` names submodules too
                    found.extend((f"tether.{a.name}" if _is_module(f"tether.{a.name}") else "tether", child.lineno,
                                  in_function) for a in child.names)
                else:
                    found.append((base, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def _is_module(name: str) -> bool:
    return any(m == name for m, _, _ in SOURCES)


def _layer(name: str) -> int | None:
    """The layer of ``tether.x.y``: that of its longest listed prefix."""
    best: tuple[int, int] | None = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            matches = name == prefix or name.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def _within(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations() -> list[str]:
    bad: list[str] = []
    for module, path, tree in SOURCES:
        where = path.relative_to(ROOT)
        for imported, line, in_function in _imports(tree, module):
            at = f"{where}:{line}: {module} imports {imported}"
            top = imported.split(".")[0]
            if in_function and top not in OPTIONAL_EXTRAS and (module, imported) not in DEFERRED \
                    and not (module == "tether.daemon.eventloop" and top == "uvloop"):
                bad.append(f"{at} inside a function (import at the top, or list it in DEFERRED with why)")
            if top != "tether":
                continue
            if module.startswith("tether.providers."):
                own = ".".join(module.split(".")[:3])
                if not (imported in PROVIDERS_MAY_IMPORT or _within(imported, {own})):
                    bad.append(f"{at}: providers import only public tether, tether.runs and tether.errors")
                continue
            if module.startswith("tether.daemon"):
                if not _within(imported, DAEMON_MAY_IMPORT):
                    bad.append(f"{at}: the daemon imports protocol, errors/specs and OOM classification only")
                continue
            if _within(imported, {"tether.daemon"}):
                bad.append(f"{at}: nothing outside daemon/ imports tether.daemon (start it as a program)")
                continue
            if _within(imported, {"tether.providers"}):
                bad.append(f"{at}: core never imports a provider")
                continue
            mine, theirs = _layer(module), _layer(imported)
            if mine is None or theirs is None:
                bad.append(f"{at}: {module if mine is None else imported} is in no layer (add it to LAYERS)")
            elif theirs > mine:
                bad.append(f"{at}: layer {mine} imports the higher layer {theirs}")
            for a, b in SIBLINGS_APART:
                if (_within(module, a) and _within(imported, b)) or (_within(module, b) and _within(imported, a)):
                    bad.append(f"{at}: escalation and registry do not import each other")
    return bad


def test_the_import_layers_hold() -> None:
    assert _violations() == []


@pytest.mark.parametrize("source, rule", [
    ("from tether.api.services import Function\n", "higher layer"),
    ("def f():\n    from tether.errors import NotFound\n", "inside a function"),
    ("from tether.daemon import protocol\n", "nothing outside daemon/"),
])
def test_the_checker_catches_a_violation(source: str, rule: str) -> None:
    """The contract is not vacuous: a client module importing upward, a function-level import, or core
    importing the daemon is reported."""
    fake = ("tether.client.fake", ROOT / "core" / "client" / "fake.py", ast.parse(source))
    SOURCES.append(fake)
    try:
        assert any(rule in v for v in _violations()), _violations()
    finally:
        SOURCES.remove(fake)


def test_every_module_is_in_a_layer() -> None:
    for module, _, _ in SOURCES:
        if module.startswith(("tether.daemon", "tether.providers")):
            continue
        assert _layer(module) is not None, f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md"
