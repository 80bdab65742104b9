"""``tether.Image``: what a cluster's machines start from and the setup steps run on them, with the builder
Runhouse users know::

    img = (tether.Image("train").pip_install(["numpy"]).run_bash("mkdir -p ~/data")
           .set_env_vars({"OMP_NUM_THREADS": "4"}).sync_secrets(["huggingface"]))
    gpu = tether.cluster(name="lab", host=[...], image=img).up_if_not()

Where the steps run: on ssh hosts once per host, each cached by the content hash of the image so far (a second
``up`` runs none; which ran and which were cached is printed); on the local cluster on this machine, into the
python the local daemon's workers run with; on sky clusters the docker image is SkyPilot's ``image_id`` and the
steps run in the task's setup. ``from_docker`` needs a sky cluster; ``conda_install`` needs conda on the host
(the step fails naming the host when it is not there). ``sync_secrets`` steps deliver those secrets to every
env's workers at the first deploy (names in the image, values never).
"""

from __future__ import annotations

from typing import Any

from tether.api.secrets import Secret
from tether.compute.setup import image_hash
from tether.errors import ConfigError
from tether.specs import ImageSpec, ImageStep, build

__all__ = ["Image"]


def _list(packages: str | list[str]) -> list[str]:
    return [packages] if isinstance(packages, str) else [str(p) for p in packages]


class Image:
    """A builder of an :class:`~tether.specs.ImageSpec`; every method adds a step and returns the image."""

    def __init__(self, name: str = "image", *, spec: ImageSpec | None = None) -> None:
        self.spec = spec if spec is not None else ImageSpec(name=name)

    @property
    def name(self) -> str:
        return self.spec.name

    def _add(self, kind: str, args: list[str] | None = None, env: dict[str, str] | None = None) -> Image:
        self.spec.steps.append(build(ImageStep, {"kind": kind, "args": args or [], "env": env or {}}))
        return self

    def from_docker(self, image_id: str) -> Image:
        """Start from a docker image (sky clusters: SkyPilot's ``image_id="docker:<image_id>"``)."""
        self.spec.docker = image_id.removeprefix("docker:")
        return self

    def pip_install(self, packages: str | list[str]) -> Image:
        """``pip install`` into the cluster's python (or the venv of an earlier ``set_venv``)."""
        return self._add("pip_install", _list(packages))

    install_packages = pip_install

    def uv_install(self, packages: str | list[str]) -> Image:
        """``uv pip install``: needs ``uv`` on the host (an earlier ``run_bash`` may install it)."""
        return self._add("uv_install", _list(packages))

    def conda_install(self, packages: str | list[str]) -> Image:
        """``conda install -y``: needs conda on the host (or in the docker image)."""
        return self._add("conda_install", _list(packages))

    def run_bash(self, command: str) -> Image:
        """A shell command, run from the remote HOME."""
        return self._add("run_bash", [command])

    def set_env_vars(self, env_vars: dict[str, str]) -> Image:
        """Environment variables of the daemon and every worker on the cluster."""
        return self._add("set_env_vars", env={str(k): str(v) for k, v in env_vars.items()})

    def rsync(self, source: str, dest: str, *, contents: bool = False) -> Image:
        """Copy a local file or folder into ``dest`` on each host (relative: under the remote HOME);
        ``contents``: a folder's contents, not the folder itself."""
        src = str(source).rstrip("/") + "/" if contents else str(source)
        return self._add("rsync", [src, str(dest)])

    def sync_secrets(self, secrets: list[str | Secret]) -> Image:
        """Deliver these secrets to every env's workers on the cluster and their files into each remote HOME, at
        the first deploy (the image keeps their names; a ``tether.secret`` object given here is saved)."""
        names = []
        for s in secrets:
            if isinstance(s, Secret):
                s.save()  # found by name at delivery (this user's private store; the image keeps the name)
            names.append(s.name if isinstance(s, Secret) else str(s))
        return self._add("sync_secrets", names)

    def set_venv(self, path: str) -> Image:
        """Make (if missing) and use the venv at ``path``: later installs go there and the daemon and its
        default workers run with its python (it also sees tether's own packages)."""
        return self._add("set_venv", [path])

    def setup_conda_env(self, *args: Any, **kwargs: Any) -> Image:
        raise ConfigError("conda environments are not made by tether images",
                          hint="use a docker image with conda (sky), conda_install on a host that has conda, "
                               "or set_venv for a venv")

    @property
    def hash(self) -> str:
        """Content hash of the image (what the per-host cache is keyed by)."""
        return image_hash(self.spec) or ""

    def secret_names(self) -> list[str]:
        return [n for st in self.spec.steps if st.kind == "sync_secrets" for n in st.args]

    def config(self) -> dict[str, Any]:
        return {"kind": "image", **self.spec.model_dump(mode="json")}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Image:
        return cls(spec=build(ImageSpec, {k: v for k, v in config.items() if k != "kind"}))

    def __repr__(self) -> str:
        return f"Image({self.name!r}, {len(self.spec.steps)} steps{', docker ' + self.spec.docker if self.spec.docker else ''})"
