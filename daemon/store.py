"""The daemon's deployment manifest: what is deployed where, persisted so a restarted daemon restores it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tether.specs import ServiceSpec, validate_name


class Manifest:
    """Services (name → spec) and stored objects (key → env), written atomically to ``manifest.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "manifest.json"
        self.objects_dir = state_dir / "objects"
        self.services: dict[str, ServiceSpec] = {}
        self.methods: dict[str, dict[str, str]] = {}
        self.objects: dict[str, str] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(exist_ok=True)
        if self.path.exists():
            data = json.loads(self.path.read_text())
            self.services = {k: ServiceSpec.model_validate(v) for k, v in data.get("services", {}).items()}
            self.methods = data.get("methods", {})
            self.objects = data.get("objects", {})

    def save(self) -> None:
        data = {
            "services": {k: v.model_dump(mode="json") for k, v in self.services.items()},
            "methods": self.methods,
            "objects": self.objects,
        }
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".manifest.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def env_of(self, name: str) -> str | None:
        if name in self.services:
            return self.services[name].env.name
        return self.objects.get(name)

    def names(self) -> list[str]:
        return sorted(set(self.services) | set(self.objects))

    def in_env(self, env: str) -> tuple[list[ServiceSpec], list[str]]:
        """Services of ``env`` in deploy order (classes before their instances), and its object keys."""
        services = [s for s in self.services.values() if s.env.name == env]
        services.sort(key=lambda s: s.kind == "instance")
        return services, [k for k, e in self.objects.items() if e == env]

    def object_path(self, key: str) -> Path:
        return self.objects_dir / f"{validate_name(key, 'object key')}.pkl"

    def put_object(self, key: str, env: str, body: bytes) -> None:
        self.object_path(key).write_bytes(body)
        self.objects[key] = env
        self.save()

    def forget(self, name: str) -> None:
        self.services.pop(name, None)
        self.methods.pop(name, None)
        if self.objects.pop(name, None) is not None:
            self.object_path(name).unlink(missing_ok=True)
        self.save()

    def rename(self, old: str, new: str) -> None:
        if old in self.services:
            spec = self.services.pop(old)
            self.services[new] = spec.model_copy(update={"name": new})
            self.methods[new] = self.methods.pop(old, {})
        if old in self.objects:
            self.objects[new] = self.objects.pop(old)
            self.object_path(old).rename(self.object_path(new))
        self.save()

    def status(self) -> list[dict[str, Any]]:
        out = [{"name": n, "kind": s.kind, "env": s.env.name, "version": s.version} for n, s in self.services.items()]
        out += [{"name": k, "kind": "object", "env": e, "version": None} for k, e in self.objects.items()]
        return sorted(out, key=lambda r: r["name"])
