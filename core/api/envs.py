"""``tether.env``: where a service's worker runs (env vars, working dir, requirements, memory limit)."""

from __future__ import annotations

from typing import Any

from tether.api.records import save_resource
from tether.api.secrets import Secret
from tether.specs import EnvSpec, build

__all__ = ["Env", "env"]


class Env:
    """A named worker environment on a cluster; one worker process per env."""

    def __init__(self, spec: EnvSpec, secret_objects: dict[str, Secret] | None = None) -> None:
        self.spec = spec
        self.secret_objects = dict(secret_objects or {})  # tether.secret(...) objects given by value, by name

    @property
    def name(self) -> str:
        return self.spec.name

    def config(self) -> dict[str, Any]:
        return {"kind": "env", **self.spec.model_dump(mode="json")}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Env:
        data = {k: v for k, v in config.items() if k != "kind"}
        return cls(build(EnvSpec, data))

    def save(self, name: str | None = None) -> Any:
        return save_resource(name or self.name, self.config())

    def __repr__(self) -> str:
        return f"Env({self.spec.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Env) and other.spec == self.spec


def env(
    name: str = "default",
    reqs: list[str] | None = None,
    env_vars: dict[str, str] | None = None,
    working_dir: str | None = None,
    python: str | None = None,
    memory_limit: int | str | None = None,
    secrets: list[str | Secret] | None = None,
    compute: dict[str, int | float | str] | None = None,
    node: int | str | None = None,
) -> Env:
    """Describe a worker environment: ``tether.env(name="train", reqs=["numpy"], env_vars={"X": "1"})``.

    ``secrets``: ``tether.secret(...)`` objects or names (saved secrets, or providers like ``"aws"``), delivered to
    the env's workers at deploy; the spec (and any saved config) keeps their names only. ``compute``: what the env
    asks of its node (``{"CPU": 2, "GPU": 1, "memory": "8GB"}``), ``node``: the node it goes on (an index or a
    host); :mod:`tether.api.placement` chooses the node and its GPUs (``CUDA_VISIBLE_DEVICES``)."""
    objects = {s.name: s for s in secrets or [] if isinstance(s, Secret)}
    names = [s.name if isinstance(s, Secret) else str(s) for s in secrets or []]
    return Env(build(EnvSpec, dict(name=name, reqs=reqs or [], env_vars=env_vars or {}, working_dir=working_dir,
                                   python=python, memory_limit=memory_limit, secrets=names,
                                   compute=compute or {}, node=node)), objects)
