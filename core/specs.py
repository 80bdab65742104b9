"""Pydantic specs: what a cluster, an env and a service are, as plain data that round-trips through JSON."""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tether.errors import ConfigError

__all__ = ["ClusterSpec", "CodeRef", "EnvSpec", "ImageSpec", "ImageStep", "ServiceSpec", "MIN_MEMORY_LIMIT", "build", "check_memory_limit", "parse_bytes", "validate_name"]

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], data: dict[str, Any]) -> M:
    """Validate ``data`` into ``model``; a failure is a ``tether.ConfigError`` naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors())
        fields = [".".join(str(x) for x in e["loc"]) for e in exc.errors()]
        raise ConfigError(f"invalid {model.__name__}: {problems}", details={"fields": fields}) from None

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4}


MIN_MEMORY_LIMIT = 64 * 2**20
"""The smallest worker memory limit: a worker's Python and tether take ~35 MiB before any user code runs, and a
memory cgroup below what a process already uses OOM-kills it on the spot."""


def check_memory_limit(limit: int | None) -> int | None:
    """``limit`` if it is none, 0 (the daemon's default) or at least :data:`MIN_MEMORY_LIMIT`; else a ValueError."""
    if limit is not None and 0 < limit < MIN_MEMORY_LIMIT:
        raise ValueError(f"memory_limit {limit} B is below the {MIN_MEMORY_LIMIT >> 20} MiB a worker needs to start "
                         "(give at least '64MB', or 0/none for the daemon's default)")
    return limit


def parse_bytes(value: int | str | None) -> int | None:
    """``"256MB"`` / ``"1GB"`` / ``1048576`` → bytes (binary units)."""
    if value is None or isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. '256MB', '4GB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


COMPUTE_KEYS = ("CPU", "GPU", "memory")


def parse_compute(value: Any) -> dict[str, float]:
    """An env's ``compute`` request: ``{"CPU": 2, "GPU": 1, "memory": "8GB"}`` → numbers (memory in bytes)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"compute must be a dict of {', '.join(COMPUTE_KEYS)}, not {value!r}")
    out: dict[str, float] = {}
    for key, amount in value.items():
        if key not in COMPUTE_KEYS:
            raise ValueError(f"unknown resource {key!r} in compute (known: {', '.join(COMPUTE_KEYS)})")
        n = float(parse_bytes(amount) or 0) if key == "memory" else float(amount)
        if n < 0 or (key == "GPU" and n != int(n)):
            raise ValueError(f"compute {key}={amount!r}: " + ("whole GPUs only" if key == "GPU" else "negative"))
        out[key] = n
    return out


def validate_name(name: str, what: str = "name") -> str:
    """Daemon-side names: letters, digits, ``_ . -``; at most 128 characters."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '_', '.', '-' (start with a letter or digit, max 128)"
        )
    return name


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, defer_build=True)  # built at first use, not import


class EnvSpec(_Spec):
    """Where a service's worker process runs: its env vars, working dir, requirements and memory limit."""

    name: str = Field("default", description="env name; one worker process per env")
    reqs: list[str] = Field(default_factory=list, description="pip requirements installed into the env's own venv")
    env_vars: dict[str, str] = Field(default_factory=dict, description="environment variables of the worker")
    working_dir: str | None = Field(None, description="working directory of the worker (default: the code root)")
    python: str | None = Field(None, description="python executable of an existing venv to run the worker with")
    memory_limit: int | None = Field(None, ge=0, description="worker memory limit in bytes (accepts '256MB'; "
                                                           "0 or none: the daemon's default)")
    secrets: list[str] = Field(default_factory=list, description="names of secrets delivered to the worker (env "
                                                                 "vars, 0600 files); never their values")
    compute: dict[str, float] = Field(default_factory=dict, description="resources the env asks of its node: "
                                      "CPU, GPU (whole), memory (bytes; accepts '8GB'); see tether.api.placement")
    node: int | str | None = Field(None, description="the node the env is placed on (an index or a host)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "env name")

    @field_validator("compute", mode="before")
    @classmethod
    def _compute(cls, v: Any) -> dict[str, float]:
        return parse_compute(v)

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _mem(cls, v: Any) -> int | None:
        return check_memory_limit(parse_bytes(v))


class ImageStep(_Spec):
    """One setup step of an image: ``kind`` and its arguments (names of secrets, never their values)."""

    kind: Literal["pip_install", "uv_install", "conda_install", "run_bash", "set_env_vars", "rsync", "sync_secrets",
                  "set_venv"]
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class ImageSpec(_Spec):
    """What a cluster's machines start from (``docker``: sky only) and the steps run on them once."""

    name: str = "image"
    docker: str | None = Field(None, description="docker image id (sky clusters: SkyPilot's image_id docker:...)")
    steps: list[ImageStep] = Field(default_factory=list)


class ClusterSpec(_Spec):
    """A cluster: the embedded local daemon, static SSH hosts, or a SkyPilot cluster on a cloud."""

    name: str = Field("local", description="cluster name, unique per user")
    backend: Literal["local", "ssh", "sky", "endpoint"] | None = Field(
        None, description="derived from the other fields if None")
    endpoint: str | None = Field(None, description="URL of a daemon someone else runs (backend 'endpoint')")
    token: SecretStr | None = Field(None, exclude=True, description="its bearer token; never saved in configs")
    instance_type: str | None = Field(None, description="'A10G:1', 'CPU:4+', 'g5.xlarge' or 'local:256MB'")
    provider: str | list[str] | dict[str, Any] | None = Field(
        None, description="'cheapest', a cloud name, an ordered list, or a routing policy (tether.RoutingPolicy)")
    host: list[str] | None = Field(None, description="static hosts for the ssh backend")
    ssh_creds: dict[str, str] | None = Field(None, description="{'user':..., 'key':..., 'port':...}")
    autostop_mins: float | None = Field(None, description="stop after this many idle minutes (None: never)")
    memory: str | None = Field(None, description="host memory request, e.g. '32+' (GiB)")
    gpu_memory: str | None = Field(None, description="GPU memory request, e.g. '40+' (GiB)")
    regions: list[str] | None = Field(None, description="allowed regions")
    exclude_regions: list[str] | None = Field(None, description="denied regions")
    zones: list[str] | None = Field(None, description="sky: allowed zones (SkyPilot picks one of them)")
    num_nodes: int = Field(1, ge=1, description="sky: nodes to launch (ssh: the host list is the nodes)")
    use_spot: bool = Field(False, description="use spot instances")
    server_port: int | None = Field(None, description="daemon port (default: a free port for local, 32300 remote)")
    server_connection_type: Literal["none", "tls", "ssh"] = Field("none", description="how the client reaches it")
    auth: bool = Field(True, description="require a bearer token")
    disk_size: int | None = Field(None, gt=0, description="sky: boot disk in GB (SkyPilot's default, 256, is billed "
                                                          "while stopped too)")
    image_id: str | None = Field(None, description="sky: machine image or 'docker:<image>'")
    ports: list[int | str] | None = Field(None, description="sky: ports to open to the internet ('8080', '9000-9010')")
    kubernetes_namespace: str | None = Field(None, description="sky on Kubernetes: the namespace of the cluster's "
                                                               "pods (the context is the provider's region)")
    image: ImageSpec | None = Field(None, description="setup steps (and a docker image on sky) applied at up")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "cluster name")

    @field_validator("provider", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        return v.model_dump(mode="json") if hasattr(v, "model_dump") else v

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, v: Any) -> Any:
        spec = getattr(v, "spec", None)  # a tether.Image builder
        return spec if isinstance(spec, ImageSpec) else v

    @field_validator("host", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("ssh_creds", mode="before")
    @classmethod
    def _creds(cls, v: Any) -> Any:
        """Runhouse's spellings (``ssh_user``, ``ssh_private_key``, ``ssh_port``) mean ours; any other key is
        refused here, when the cluster is described, not at the first connection."""
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for key, value in v.items():
            name = _SSH_CRED_ALIASES.get(key, key)
            if name not in _SSH_CRED_KEYS:
                raise ValueError(f"unknown ssh_creds key {key!r}: use {', '.join(sorted(_SSH_CRED_KEYS))} "
                                 f"(or Runhouse's {', '.join(sorted(_SSH_CRED_ALIASES))})")
            if name in out:
                raise ValueError(f"ssh_creds gives {name!r} twice (as {key!r} too)")
            out[name] = str(value)
        return out

    @model_validator(mode="after")
    def _derive_backend(self) -> ClusterSpec:
        if self.backend is None:
            if self.endpoint:
                self.backend = "endpoint"
            elif self.host:
                self.backend = "ssh"
            elif self.instance_type is None or self.instance_type.startswith("local"):
                self.backend = "local"
            else:
                self.backend = "sky"
        if self.backend == "sky":
            _check_sky(self)
        return self


#: the cluster names SkyPilot accepts (``sky.skylet.constants.CLUSTER_NAME_VALID_REGEX``)
_SKY_NAME_RE = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")


def _check_sky(spec: ClusterSpec) -> None:
    """What SkyPilot would refuse only at launch, refused when the cluster is described."""
    if not _SKY_NAME_RE.fullmatch(spec.name):
        raise ValueError(f"invalid sky cluster name {spec.name!r}: SkyPilot needs a letter first, then letters, "
                         "digits, '-', '_' or '.', not ending in one of those three")
    mins = spec.autostop_mins
    if mins is not None and (mins < 0 or not float(mins).is_integer()):
        raise ValueError(f"autostop_mins={mins!r}: a sky cluster stops after a whole number of idle minutes (>= 0)")


_SSH_CRED_KEYS = frozenset({"user", "key", "port", "connect_timeout"})
_SSH_CRED_ALIASES = {"ssh_user": "user", "ssh_private_key": "key", "ssh_port": "port", "private_key": "key"}


class CodeRef(_Spec):
    """How the daemon finds the code: an import path under a synced root, or the object pickled by value."""

    root: str | None = Field(None, description="code root on the cluster, put on sys.path")
    import_path: str | None = Field(None, description="dotted module path")
    qualname: str | None = Field(None, description="attribute path inside the module")
    code_hash: str | None = Field(None, description="fingerprint of the synced tree; a change re-imports")
    pickled_b64: str | None = Field(None, description="cloudpickled object when it has no import path")


class ServiceSpec(_Spec):
    """A deployment: a named function, class or class instance living in an env's worker."""

    name: str
    kind: Literal["function", "module", "instance"] = "function"
    env: EnvSpec = Field(default_factory=lambda: EnvSpec())
    code: CodeRef
    init_pickled_b64: str | None = Field(None, description="instance: cloudpickled (args, kwargs) for __init__")
    of: str | None = Field(None, description="instance: the module service it was made from")
    version: int | None = Field(None, description="registry version, when saved")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "service name")
