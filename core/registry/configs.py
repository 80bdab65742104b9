"""Checks a resource config before it is saved: a corrupt or foreign config is refused naming the field.

Default checks: a JSON object with a known ``kind``, JSON-safe values, and any embedded cluster / env / service
spec valid against :mod:`tether.specs`. The public API can add a stricter check per kind (e.g. its own
``from_config``) with :func:`register_validator`; it runs client-side before anything is sent or written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from tether.errors import ConfigError
from tether.registry.models import KINDS
from tether.specs import ClusterSpec, EnvSpec, ServiceSpec

__all__ = ["check_config", "code_fields", "dumps", "register_validator"]

Validator = Callable[[dict[str, Any]], object]
_VALIDATORS: dict[str, Validator] = {}

#: where a spec sits inside a config of each kind: key → model ("" = the config itself, flat, as
#: ``Cluster.config()`` = ``{"kind": "cluster", **spec}``); specs forbid unknown fields, so foreign keys are named
_EMBEDDED: dict[str, dict[str, type[BaseModel]]] = {
    "cluster": {"": ClusterSpec, "spec": ClusterSpec},
    "env": {"": EnvSpec, "spec": EnvSpec},
    "function": {"cluster": ClusterSpec, "env": EnvSpec, "service": ServiceSpec, "spec": ServiceSpec},
    "module": {"cluster": ClusterSpec, "env": EnvSpec, "service": ServiceSpec, "spec": ServiceSpec},
    "instance": {"cluster": ClusterSpec, "env": EnvSpec, "service": ServiceSpec, "spec": ServiceSpec},
}


def register_validator(kind: str, validator: Validator) -> None:
    """Run ``validator(config)`` on every save of ``kind``; it raises ConfigError or pydantic ValidationError."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}", hint=f"one of {list(KINDS)}", details={"field": "kind"})
    _VALIDATORS[kind] = validator


def _fail(field: str, message: str, **details: Any) -> ConfigError:
    return ConfigError(
        f"invalid config: field {field!r}: {message}",
        hint="nothing was saved; fix the field and save again",
        details={"field": field, **details},
    )


def _json_safe(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(path or "config", f"{value!r} is not valid JSON")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _json_safe(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(path or "config", f"key {key!r} is not a string")
            _json_safe(item, f"{path}.{key}" if path else key)
        return
    raise _fail(path or "config", f"{type(value).__name__} is not JSON data")


def _from_validation(exc: ValidationError, prefix: str) -> ConfigError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = ".".join(p for p in (prefix, loc) if p) or "config"
    return _fail(
        field, first["msg"], errors=[{"loc": [prefix, *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
    )


def check_config(config: Any) -> str:
    """Validate ``config`` for saving and return its kind; raise ConfigError naming the first bad field."""
    if not isinstance(config, dict):
        raise _fail("config", f"expected a JSON object with 'kind', got {type(config).__name__}")
    _json_safe(config, "")
    kind = config.get("kind")
    if kind is None:
        raise _fail("kind", "missing; a tether config says what it is", allowed=list(KINDS))
    if kind not in KINDS:
        raise _fail("kind", f"{kind!r} is not a tether resource kind", allowed=list(KINDS))
    for key, model in _EMBEDDED[kind].items():
        data = config if key == "" else config.get(key)
        if data is None:
            continue
        if not isinstance(data, dict):
            continue  # e.g. a cluster referenced by name
        try:
            model.model_validate({k: v for k, v in data.items() if k != "kind"})
        except ValidationError as exc:
            raise _from_validation(exc, key) from None
    extra = _VALIDATORS.get(kind)
    if extra is not None:
        try:
            extra(config)
        except ValidationError as exc:
            raise _from_validation(exc, "") from None
    return kind


def _code_dict(config: dict[str, Any]) -> dict[str, Any]:
    for path in (("code",), ("service", "code"), ("spec", "code")):
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return node
    return {}


def code_fields(config: dict[str, Any], code_hash: str | None = None) -> tuple[str | None, str | None]:
    """(code_hash, import_path) of a config: the explicit hash wins, else the embedded CodeRef's."""
    code = _code_dict(config)
    code_hash = code_hash or config.get("code_hash") or code.get("code_hash")
    import_path = config.get("import_path") or code.get("import_path")
    if import_path and code.get("qualname") and ":" not in import_path:
        import_path = f"{import_path}:{code['qualname']}"
    return code_hash, import_path


def dumps(config: dict[str, Any]) -> str:
    """JSON text of a config as stored (key order kept, so a load returns the config exactly)."""
    return json.dumps(config, separators=(",", ":"), allow_nan=False)
