"""Secrets on the daemon's side: what a worker gets from the cluster's secret store at start.

The client writes one 0600 JSON file per secret into ``<state-dir>/secrets/`` (over ssh's stdin, never a
command line): ``{"name", "env", "files", "file_env", "all_envs"}``. A worker of an env that names the secret
(``EnvSpec.secrets``), or any worker when ``all_envs`` (``cluster.sync_secrets``), gets its ``env`` as
environment variables and its ``files`` written 0600 under ``<state-dir>/secrets/files/<name>/`` with the
``file_env`` variables pointing at them. Values are read here at each worker start (so a rotated value reaches
the env on its next start) and never logged: errors name the secret only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tether.errors import ConfigError

__all__ = ["secret_env"]


def _store(state_dir: Path) -> Path:
    return state_dir / "secrets"


def _load(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"secret {name!r} is not on this cluster",
                          hint=f"deploy with tether.env(secrets=[{name!r}]) or call cluster.sync_secrets([{name!r}])",
                          details={"secret": name}) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"secret {name!r} on this cluster cannot be read ({type(exc).__name__})",
                          details={"secret": name}) from None
    if not isinstance(data, dict):
        raise ConfigError(f"secret {name!r} on this cluster is not a secret record", details={"secret": name})
    return data


def _write_file(path: Path, content: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(tmp, path)


def secret_env(state_dir: Path, names: list[str]) -> dict[str, str]:
    """The environment variables of a worker whose env names ``names``, plus every secret synced to all envs;
    the secrets' files are (re)written on the way. A named secret that is not in the store is a ConfigError."""
    store = _store(state_dir)
    records: dict[str, dict[str, Any]] = {}
    if store.is_dir():
        for path in sorted(store.glob("*.json")):
            data = _load(path, path.stem)
            if data.get("all_envs"):
                records[path.stem] = data
    for name in names:
        if name not in records:
            if "/" in name or name.startswith("."):
                raise ConfigError(f"invalid secret name {name!r}", details={"secret": name})
            records[name] = _load(store / f"{name}.json", name)
    env: dict[str, str] = {}
    for name, data in records.items():
        env.update({str(k): str(v) for k, v in (data.get("env") or {}).items()})
        base = store / "files" / name
        for rel, content in (data.get("files") or {}).items():
            target = (base / rel).resolve()
            if not target.is_relative_to(base.resolve()):
                raise ConfigError(f"secret {name!r} names a file outside its folder", details={"secret": name})
            _write_file(target, str(content))
        for var, rel in (data.get("file_env") or {}).items():
            env[str(var)] = str(base / rel)
    return env
