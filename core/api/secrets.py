"""``tether.secret``: credentials a worker needs, read from where each tool keeps them, delivered without ever
being written into a config, a log, an error or a command line.

A secret is a name, a provider (or none for your own ``values``) and its values. What a worker gets is the
secret's *delivery*: environment variables (``AWS_ACCESS_KEY_ID``, ``HF_TOKEN``, ``WANDB_API_KEY``, ...) and 0600
files in the layout the tool expects (``.aws/credentials``, ``.netrc``, ...), with the variables that point the
tool at them (``AWS_SHARED_CREDENTIALS_FILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``HF_TOKEN_PATH``, ``NETRC``,
``TETHER_SSH_KEY``). Configs, env specs and the registry hold secret *names* only.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import netrc
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tether.api import box
from tether.compute.state import write_private
from tether.errors import ConfigError, NotFound
from tether.home import private_dir, tether_home
from tether.specs import validate_name

__all__ = ["PROVIDERS", "Secret", "deliver_for_deploy", "delete_from_cluster", "secret", "sync_to_cluster"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _valid(name: str) -> str:
    try:
        return validate_name(name, "secret name")
    except ValueError as exc:
        raise ConfigError(str(exc), hint="a secret's name is letters, digits, '_', '.', '-'") from None


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# --- providers: where each tool keeps its credentials, and the layout it reads them from ---------------------


def _aws_values(path: str | None) -> dict[str, str]:
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY") and path is None:
        out = {"access_key": os.environ["AWS_ACCESS_KEY_ID"], "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"]}
        if os.environ.get("AWS_SESSION_TOKEN"):
            out["session_token"] = os.environ["AWS_SESSION_TOKEN"]
        return out
    file = Path(path or os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or _home() / ".aws" / "credentials")
    parser = configparser.ConfigParser()
    parser.read_string(_read(file) or "")
    profile = os.environ.get("AWS_PROFILE", "default")
    if not parser.has_section(profile):
        return {}
    sec = parser[profile]
    out = {"access_key": sec.get("aws_access_key_id", ""), "secret_key": sec.get("aws_secret_access_key", "")}
    if sec.get("aws_session_token"):
        out["session_token"] = sec["aws_session_token"]
    return {k: v for k, v in out.items() if v}


def _aws_delivery(v: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    env = {"AWS_ACCESS_KEY_ID": v["access_key"], "AWS_SECRET_ACCESS_KEY": v["secret_key"]}
    lines = ["[default]", f"aws_access_key_id = {v['access_key']}", f"aws_secret_access_key = {v['secret_key']}"]
    if v.get("session_token"):
        env["AWS_SESSION_TOKEN"] = v["session_token"]
        lines.append(f"aws_session_token = {v['session_token']}")
    return env, {".aws/credentials": "\n".join(lines) + "\n"}, {"AWS_SHARED_CREDENTIALS_FILE": ".aws/credentials"}


_GCP_ADC = ".config/gcloud/application_default_credentials.json"


def _gcp_values(path: str | None) -> dict[str, str]:
    file = Path(path or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or _home() / _GCP_ADC)
    text = _read(file)
    return {"credentials_json": text} if text else {}


def _gcp_delivery(v: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    env: dict[str, str] = {}
    with contextlib.suppress(ValueError, AttributeError):
        project = json.loads(v["credentials_json"]).get("quota_project_id") or ""
        if project:
            env["GOOGLE_CLOUD_PROJECT"] = project
    return env, {_GCP_ADC: v["credentials_json"]}, {"GOOGLE_APPLICATION_CREDENTIALS": _GCP_ADC}


def _hf_values(path: str | None) -> dict[str, str]:
    if os.environ.get("HF_TOKEN") and path is None:
        return {"token": os.environ["HF_TOKEN"]}
    hf_home = Path(os.environ.get("HF_HOME") or _home() / ".cache" / "huggingface")
    text = _read(Path(path or os.environ.get("HF_TOKEN_PATH") or hf_home / "token"))
    return {"token": text.strip()} if text and text.strip() else {}


def _hf_delivery(v: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    rel = ".cache/huggingface/token"
    return {"HF_TOKEN": v["token"]}, {rel: v["token"]}, {"HF_TOKEN_PATH": rel}


def _wandb_values(path: str | None) -> dict[str, str]:
    if os.environ.get("WANDB_API_KEY") and path is None:
        return {"api_key": os.environ["WANDB_API_KEY"]}
    file = Path(path or os.environ.get("NETRC") or _home() / ".netrc")
    if _read(file) is None:
        return {}
    try:
        auth = netrc.netrc(str(file)).authenticators("api.wandb.ai")
    except (netrc.NetrcParseError, OSError):
        return {}
    return {"api_key": auth[2], "login": auth[0] or "user"} if auth and auth[2] else {}


def _wandb_delivery(v: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    text = f"machine api.wandb.ai\n  login {v.get('login') or 'user'}\n  password {v['api_key']}\n"
    return {"WANDB_API_KEY": v["api_key"]}, {".netrc": text}, {"NETRC": ".netrc"}


def _ssh_values(path: str | None) -> dict[str, str]:
    candidates = [Path(path)] if path else [_home() / ".ssh" / n for n in ("id_ed25519", "id_ecdsa", "id_rsa")]
    for key in candidates:
        private = _read(key)
        if private:
            return {"private_key": private, "public_key": _read(key.with_name(key.name + ".pub")) or "",
                    "key_name": key.name}
    return {}


def _ssh_delivery(v: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    rel = f".ssh/{v.get('key_name') or 'id_tether'}"
    files = {rel: v["private_key"]}
    if v.get("public_key"):
        files[rel + ".pub"] = v["public_key"]
    return {}, files, {"TETHER_SSH_KEY": rel}  # e.g. GIT_SSH_COMMAND="ssh -i $TETHER_SSH_KEY"


Reader = Callable[[str | None], dict[str, str]]
Delivery = Callable[[dict[str, str]], tuple[dict[str, str], dict[str, str], dict[str, str]]]

#: provider → (where its values are read from, how a worker gets them, the values it needs)
PROVIDERS: dict[str, tuple[Reader, Delivery, tuple[str, ...]]] = {
    "aws": (_aws_values, _aws_delivery, ("access_key", "secret_key")),
    "gcp": (_gcp_values, _gcp_delivery, ("credentials_json",)),
    "huggingface": (_hf_values, _hf_delivery, ("token",)),
    "wandb": (_wandb_values, _wandb_delivery, ("api_key",)),
    "ssh": (_ssh_values, _ssh_delivery, ("private_key",)),
}
_ALIASES = {"hf": "huggingface", "google": "gcp", "gcloud": "gcp", "s3": "aws"}


class Secret:
    """A named credential. Its values stay in this object, the private local store and the cluster's secret
    store (0600); ``repr``, ``config()`` and every error show its name and provider only."""

    def __init__(self, name: str, values: dict[str, str], provider: str | None = None) -> None:
        self.name = _valid(name)
        self.provider = provider
        self.registry_version: int | None = None  # the vault's version number, when saved to the registry
        self._values = {str(k): str(v) for k, v in values.items()}
        needed = PROVIDERS[provider][2] if provider else ()
        missing = [k for k in needed if not self._values.get(k)]
        if missing:
            raise ConfigError(f"secret {name!r} ({provider}) lacks {', '.join(missing)}",
                              hint=f"pass values={{{', '.join(repr(k) + ': ...' for k in missing)}}}")
        if provider is None:
            bad = [k for k in self._values if not _ENV_NAME.match(k)]
            if bad:
                raise ConfigError(f"secret {name!r}: {bad} are not environment variable names",
                                  hint="the values of a secret of your own become the worker's env vars")

    @property
    def values(self) -> dict[str, str]:
        """The values (a copy)."""
        return dict(self._values)

    def delivery(self) -> dict[str, Any]:
        """What the daemon gives a worker: ``env`` (variables), ``files`` (path under the secret's folder →
        content, written 0600) and ``file_env`` (variable → one of those paths)."""
        env: dict[str, str]
        files: dict[str, str]
        file_env: dict[str, str]
        if self.provider is None:
            env, files, file_env = dict(self._values), {}, {}
        else:
            env, files, file_env = PROVIDERS[self.provider][1](self._values)
        return {"name": self.name, "provider": self.provider, "env": env, "files": files, "file_env": file_env}

    def home_files(self) -> dict[str, str]:
        """The files this secret puts in a host's HOME on ``cluster.sync_secrets`` (path under HOME → content)."""
        return dict(self.delivery()["files"])

    def config(self) -> dict[str, Any]:
        """Name and provider: never the values."""
        return {"kind": "secret", "name": self.name, "provider": self.provider}

    def save(self, *, registry: bool = False) -> Secret:
        """Keep the values in this user's private store (``$TETHER_HOME/secrets/<name>.json``, 0600), or with
        ``registry=True`` in the registry's vault, encrypted at rest, as a new version (the team server when
        ``TETHER_REGISTRY_URL`` is set); ``registry_version`` is then its number."""
        if registry:
            vault, ref = _vault_for(self.name)
            self.registry_version = vault.put(ref, self._values, self.provider, by=_whoami())
            return self
        data = {"name": self.name, "provider": self.provider, "values": self._values}
        write_private(_store() / f"{self.name}.json", json.dumps(data).encode())
        return self

    def rotate(self, values: dict[str, str], *, registry: bool = False) -> Secret:
        """New values under the same name, saved (locally, or as a new registry version); envs that use it get
        them when they next start (a deploy or ``cluster.sync_secrets`` delivers them)."""
        rotated = Secret(self.name, {**self._values, **values}, self.provider)
        self._values = rotated._values
        return self.save(registry=registry)

    def delete(self, *, registry: bool = False) -> None:
        """Forget the stored values (``registry=True``: every version in the registry's vault); a cluster keeps
        what was delivered until ``cluster.delete_secrets``."""
        if registry:
            vault, ref = _vault_for(self.name)
            vault.delete(ref)
            return
        (_store() / f"{self.name}.json").unlink(missing_ok=True)

    def share(self, principal: str, access_level: str = "read") -> None:
        """Let a user or team read (use), write (rotate) or own this secret in the registry's vault."""
        vault, ref = _vault_for(self.name)
        vault.share(ref, principal, access_level)

    def to(self, cluster: Any, env: Any = None) -> Secret:
        """Deliver this secret to a cluster: to every env's workers (and its files into each remote HOME), or
        with ``env`` (a ``tether.env`` or its name) to that env's workers only."""
        if env is None:
            cluster.sync_secrets([self])
        else:
            sync_to_cluster(cluster, [self], all_envs=False, to_home=False)
        return self

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, provider={self.provider!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and (other.name, other.provider, other._values) == (
            self.name, self.provider, self._values)

    __hash__ = None  # type: ignore[assignment]


def _store() -> Path:
    return private_dir(tether_home() / "secrets")


def secret(name: str | None = None, *, provider: str | None = None, values: dict[str, str] | None = None,
           path: str | None = None) -> Secret:
    """A secret by name. ``values={...}``: your own (its keys become env vars). A provider (``"aws"``, ``"gcp"``,
    ``"huggingface"``/``"hf"``, ``"wandb"``, ``"ssh"``), as ``name`` or ``provider=``: read from where that tool
    keeps it (``path=`` another file). Otherwise a secret saved before with ``.save()``."""
    prov = _ALIASES.get(provider or "", provider)
    if prov is None and name is not None:  # a provider's name is that provider's secret, values given or not
        prov = _ALIASES.get(name, name) if _ALIASES.get(name, name) in PROVIDERS else None
    if prov is not None and prov not in PROVIDERS:
        raise ConfigError(f"unknown secret provider {provider!r}", hint=f"use one of {', '.join(PROVIDERS)}")
    name = name or prov
    if not name:
        raise ConfigError("a secret needs a name or a provider", hint="tether.secret('aws') or name=, values=")
    if values is not None:
        return Secret(name, values, prov)
    stored = None if "/" in name else _read(_store() / f"{_valid(name)}.json")  # "team/x": the registry's only
    if stored is not None and path is None:
        data = json.loads(stored)
        return Secret(name, data["values"], data.get("provider"))
    kept = _from_registry(name)
    if kept is not None:
        return kept
    if prov is None:
        raise NotFound(f"no secret {name!r}: none saved under that name and no provider of that name",
                       hint="tether.secret(name, values={...}).save(), or a provider: " + ", ".join(PROVIDERS))
    found = PROVIDERS[prov][0](path)
    if not found:
        raise NotFound(f"no {prov} credentials found for secret {name!r}",
                       hint=f"where {prov} keeps them ({_WHERE[prov]}), or pass values=")
    return Secret(name, found, prov)


def _vault_for(name: str) -> tuple[Any, Any]:
    """The registry's vault and the reference of secret ``name`` in it."""
    from tether.registry.vault_client import open_vault, secret_ref  # only for secrets kept in the registry

    return open_vault(), secret_ref(name)


def _whoami() -> str:
    return os.environ.get("TETHER_USER") or os.environ.get("USER") or "unknown"


def _from_registry(name: str) -> Secret | None:
    """The latest version of ``name`` in the registry's vault: the team server's when ``TETHER_REGISTRY_URL`` is
    set, else the local registry's (when its database exists); None when it holds none."""
    if not os.environ.get("TETHER_REGISTRY_URL") and not (
            Path(os.environ.get("TETHER_REGISTRY_DB") or tether_home() / "registry.db").exists()):
        return None
    vault, ref = _vault_for(name)
    try:
        data = vault.get(ref)
    except NotFound:
        return None
    found = Secret(name.rsplit("/", 1)[-1], data["values"], data.get("provider"))
    found.registry_version = int(data["version"])
    return found


_WHERE = {"aws": "~/.aws/credentials or AWS_ACCESS_KEY_ID", "gcp": "GOOGLE_APPLICATION_CREDENTIALS or "
          "~/.config/gcloud/application_default_credentials.json", "huggingface": "HF_TOKEN or "
          "~/.cache/huggingface/token", "wandb": "WANDB_API_KEY or ~/.netrc (api.wandb.ai)",
          "ssh": "~/.ssh/id_ed25519, id_ecdsa or id_rsa"}


def resolve(items: Iterable[Secret | str]) -> list[Secret]:
    """Secrets given as objects or names, as objects (names are looked up with :func:`secret`)."""
    return [s if isinstance(s, Secret) else secret(s) for s in items]


# --- delivery to a cluster -------------------------------------------------------------------------------------


def sync_to_cluster(cluster: Any, items: Iterable[Secret | str], *, all_envs: bool, to_home: bool,
                    node: int | str | None = "all") -> list[str]:
    """Put secrets in the cluster's secret store (``<state-dir>/secrets/<name>.json``, 0600, over stdin) on each
    node; ``all_envs``: every env's workers get them (else only envs that name them); ``to_home``: also write the
    tool's files into each remote host's HOME (``~/.aws/credentials``, ...; not on the local cluster, whose HOME
    is yours). Returns the names delivered."""
    chosen = resolve(items)
    if not chosen:
        return []
    for place in box.places(cluster, node):
        records = {f"{s.name}.json": json.dumps({**s.delivery(), "all_envs": all_envs}).encode() for s in chosen}
        box.write_private_files(place, records, base=f"{place.state_dir}/secrets")
        if to_home and not place.local:
            files = {rel: text.encode() for s in chosen for rel, text in s.home_files().items()}
            if files:
                box.write_private_files(place, files, base="~", keep_old=True)
    return [s.name for s in chosen]


def delete_from_cluster(cluster: Any, names: Iterable[str]) -> None:
    """Remove secrets from the cluster's secret store on every node (files already in a HOME stay)."""
    for place in box.places(cluster, "all"):
        for name in names:
            _valid(name)
            box.run_one(place, f"rm -rf {place.state_dir}/secrets/{name}.json {place.state_dir}/secrets/files/{name}",
                        stream=False)


def deliver_for_deploy(cluster: Any, env: Any) -> None:
    """Before a deploy: the env's secrets (and the cluster image's ``sync_secrets``) into the cluster's store."""
    given: dict[str, Secret] = dict(getattr(env, "secret_objects", {}) or {})
    names = list(getattr(getattr(env, "spec", None), "secrets", []) or [])
    if names:
        sync_to_cluster(cluster, [given.get(n, n) for n in names], all_envs=False, to_home=False)
    image = getattr(cluster.spec, "image", None)
    image_names = [n for st in (image.steps if image else []) if st.kind == "sync_secrets" for n in st.args]
    if image_names:
        sync_to_cluster(cluster, image_names, all_envs=True, to_home=True)
