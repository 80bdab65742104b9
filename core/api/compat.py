"""Runhouse's spellings, translated once into tether's: cluster fields, where a service goes, call keywords.

Code written for Runhouse runs with ``import tether as rh``; each spelling here means what tether already does
(see the README's "Coming from Runhouse" table). Nothing in this module talks to a daemon.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.api.envs import Env

__all__ = ["CALL_KEYWORDS", "call_keywords", "cluster_fields", "placement", "process_env", "quiet", "resource_name"]

#: call keywords that are tether's, never passed on to the user's function
CALL_KEYWORDS = frozenset({"run_async", "stream_logs"})

_TO_ASYNC = {"sync": "async", "gen": "agen"}
_TO_SYNC = {"async": "sync", "agen": "gen"}


def quiet(event: dict[str, Any]) -> None:
    """A log sink that drops the remote call's output (``stream_logs=False``)."""


def call_keywords(kind: str, kwargs: dict[str, Any], default_async: bool | None = None
                  ) -> tuple[str, dict[str, Any], Any]:
    """``(kind, kwargs, on_log)`` of a call with Runhouse's keywords taken out: ``run_async=True`` makes a sync
    function's call a coroutine (an async caller), ``run_async=False`` waits for an async one's value;
    ``stream_logs=False`` drops its output here. ``default_async``: what ``handle.set_async(True)`` chose."""
    kwargs = dict(kwargs)
    run_async = kwargs.pop("run_async", default_async)
    stream_logs = kwargs.pop("stream_logs", True)
    if run_async is True:
        kind = _TO_ASYNC.get(kind, kind)
    elif run_async is False:
        kind = _TO_SYNC.get(kind, kind)
    return kind, kwargs, (None if stream_logs else quiet)


def _one_of(fields: dict[str, Any], theirs: str, ours: str, convert: Any) -> None:
    if fields.get(theirs) is None:
        fields.pop(theirs, None)
        return
    if fields.get(ours) is not None:
        raise ConfigError(f"both {theirs}= and {ours}= given", hint=f"pass one: {theirs}= is Runhouse's {ours}=",
                          details={"fields": [theirs, ours]})
    fields[ours] = convert(fields.pop(theirs))


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def resource_name(name: str) -> str:
    """Runhouse's resource names as tether's: ``~/aws_cluster`` (a local resource) is ``aws_cluster``,
    ``/team/embed`` (a Den path) is the registry's ``team/embed``."""
    if name.startswith("~/"):
        return name[2:]
    return name.lstrip("/") if name.startswith("/") else name


def cluster_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Cluster fields with Runhouse's names as ours: ``region`` → ``regions``, ``ips`` → ``host``,
    ``open_ports`` → ``ports``, ``gpus`` → ``instance_type``, ``autostop_minutes`` → ``autostop_mins``, and
    :func:`resource_name`. An ssh password is refused (tether connects with keys, never a password it would
    have to keep), naming the key, never its value."""
    out = dict(fields)
    if isinstance(out.get("name"), str):
        out["name"] = resource_name(out["name"])
    _one_of(out, "gpus", "instance_type", str)
    _one_of(out, "autostop_minutes", "autostop_mins", lambda v: v)
    _one_of(out, "region", "regions", lambda v: [v])
    _one_of(out, "ips", "host", _listed)
    _one_of(out, "open_ports", "ports", _listed)
    creds = out.get("ssh_creds")
    given = sorted({"password", "ssh_password"} & set(creds)) if isinstance(creds, dict) else []
    if given:
        raise ConfigError(f"unknown ssh_creds key {given[0]!r}: tether connects to hosts with ssh keys only, never "
                          "a password",
                          hint="install a key once (ssh-copy-id user@host), then pass "
                               "ssh_creds={'ssh_user': ..., 'ssh_private_key': '~/.ssh/id_ed25519'}",
                          details={"fields": ["ssh_creds.password"]})
    return out


def _reqs_env(reqs: list[str]) -> Env:
    """Runhouse's ``env=["numpy", ...]``: an env named after its requirements (an env name means one spec)."""
    from tether.api.envs import Env  # the env models: a name's spelling (resource_name) needs none

    if not reqs:
        return Env.from_config({"name": "default"})
    digest = hashlib.sha256("\n".join(sorted(map(str, reqs))).encode()).hexdigest()[:8]
    return Env.from_config({"name": f"reqs-{digest}", "reqs": [str(r) for r in reqs]})


def placement(cluster: Any, env: Any, *, system: Any = None, process: Any = None) -> tuple[Any, Any]:
    """``(cluster, env)`` of a ``.to()``: Runhouse's ``system=`` is the cluster, ``process=`` (a name or a
    ``tether.env``) the env, and ``env=[reqs]`` an env with those requirements."""
    if system is not None:
        if cluster is not None and cluster is not system:
            raise ConfigError("both a cluster and system= given", hint="pass one: system= is Runhouse's cluster")
        if isinstance(system, str):
            raise ConfigError(f"system={system!r} is a name", hint=f"pass the cluster: tether.cluster(name={system!r})")
        cluster = system
    if process is not None:
        if env is not None:
            raise ConfigError("both env= and process= given", hint="pass one: process= is Runhouse's env placement")
        env = process
    if isinstance(env, list | tuple):
        env = _reqs_env(list(env))
    return cluster, env


def process_env(name: str, env_vars: dict[str, str] | None = None, compute: dict[str, Any] | None = None) -> Env:
    """Runhouse's ``cluster.ensure_process_created(name, env_vars=...)``: the env (one worker process) of that
    name, to pass as ``process=``; the daemon starts it at the first deploy into it. Placement by resources or
    node (``compute=``) is refused: a tether env runs on the cluster's head."""
    from tether.api.envs import Env  # as in _reqs_env

    if compute:
        raise ConfigError(f"compute={compute!r}: tether places an env's worker on the head node",
                          hint="size the cluster instead (instance_type=...), or leave compute out",
                          details={"fields": ["compute"]})
    return Env.from_config({"name": name, "env_vars": dict(env_vars or {})})
