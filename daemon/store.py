"""The daemon's deployment manifest: what is deployed where, persisted so a restarted daemon restores it; and
how the daemon writes stored state at all (:func:`write_atomic`).

Every file of stored state (``manifest.json``, ``services/<record>.json``, ``objects/<key>.pkl``) is written atomically: written whole to
a temporary file beside it (named ``.<name>.<random>``), fsynced, renamed over the old one, and the directory
fsynced. A crash at any point leaves either the old file or the new one, never a mix; a full disk (ENOSPC,
EDQUOT) raises :class:`~tether.errors.StorageFull` and removes the temporary file, so the old copy stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tether.errors import StorageFull
from tether.specs import ServiceSpec, validate_name

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def storage_full(exc: OSError, what: str, path: Path, **details: Any) -> StorageFull:
    """The typed error for a write of ``what`` that found no space (``exc.errno`` in :data:`NO_SPACE`)."""
    return StorageFull(f"no space left on the daemon's disk to store {what}: {exc.strerror}",
                       hint=f"free space on the disk holding {path.parent} (the previous copy is intact)",
                       details={"path": str(path), "errno": exc.errno, **details})


def stage(path: Path, data: bytes, *, what: str, **details: Any) -> Path:
    """Write ``data`` to a new temporary file beside ``path`` and fsync it (see :func:`commit`); raises
    :class:`StorageFull` on a full disk (nothing is left behind)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with memoryview(data) as view:
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        discard(Path(tmp))
        if exc.errno in NO_SPACE:
            raise storage_full(exc, what, path, **details) from None
        raise
    os.close(fd)
    return Path(tmp)


def commit(tmp: Path, path: Path) -> None:
    """Rename a staged file over ``path`` and fsync the directory (the rename itself survives a power cut)."""
    os.replace(tmp, path)
    sync_dir(path.parent)


def discard(tmp: Path) -> None:
    """Remove a staged file that will not be committed."""
    with contextlib.suppress(OSError):
        tmp.unlink()


def sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, *, what: str, **details: Any) -> None:
    """Replace ``path`` with ``data`` atomically and durably; :class:`StorageFull` (old copy intact) on a full disk."""
    commit(stage(path, data, what=what, **details), path)


def remove_staged(directory: Path) -> None:
    """Remove temporary files a crash left in ``directory`` (``.<name>.<random>`` beside the file they replace)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


#: services whose records moved to a file of records: manifest.json names the file
SERVICES_DIR = "services"
#: records kept in manifest.json itself (the services deployed since the last move to a file)
INLINE_MAX = 32
_FORMAT = 2
_Held = tuple[ServiceSpec, dict[str, str], dict[str, Any]]  # the spec and methods a record says, and the record


class Manifest:
    """Services (name → spec, with their methods) and stored objects (key → env), persisted so a restarted daemon
    restores them.

    ``manifest.json`` is written whole (atomically) at every change, but it stays small: it holds the records
    (spec + methods) of at most :data:`INLINE_MAX` services, those that changed last, and for every other service
    only the name of the file of records that holds its record (``services/<hash>.json``, written once, never
    changed). When more records are inline, they move together into a new file of records first. A deploy thus
    writes the same few bytes (and fsyncs as often) at the 1st and the 1,000th service. A crash leaves the old
    manifest or the new one, each naming only whole files; files of records no manifest names are removed at the
    next start. The one-file manifest of earlier versions (every spec inside) is read as well.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "manifest.json"
        self.objects_dir = state_dir / "objects"
        self.services_dir = state_dir / SERVICES_DIR
        self.services: dict[str, ServiceSpec] = {}
        self.methods: dict[str, dict[str, str]] = {}
        self.objects: dict[str, str] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(exist_ok=True)
        self.services_dir.mkdir(mode=0o700, exist_ok=True)
        remove_staged(self.objects_dir)  # what a crash mid-write left behind
        remove_staged(self.services_dir)
        for entry in self.dir.glob(f".{self.path.name}.*"):
            discard(entry)
        self._entries: dict[str, str | dict[str, Any]] = {}  # name → its entry in manifest.json on disk
        self._held: dict[str, _Held] = {}  # name → what that entry says
        self._load(self.path.read_bytes() if self.path.exists() else b"{}")
        self._remove_unnamed_files()
        self._kept = self._snapshot()

    def _load(self, raw: bytes) -> None:
        data = json.loads(raw)
        services, methods = data.get("services", {}), data.get("methods", {})
        self.services, self.methods, self._entries, self._held = {}, {}, {}, {}
        files: dict[str, dict[str, Any]] = {}
        for name, entry in services.items():
            if isinstance(entry, str):  # in a file of records
                if entry not in files:
                    files[entry] = json.loads((self.services_dir / entry).read_bytes())
                record = files[entry][name]
            elif "spec" in entry:  # inline
                record = entry
            else:  # a manifest of an earlier version: the spec itself (rewritten inline at the next save)
                record = {"spec": entry, "methods": methods.get(name, {})}
                entry = None
            spec, kinds = ServiceSpec.model_validate(record["spec"]), dict(record.get("methods", {}))
            self.services[name] = spec
            if kinds or name in methods:
                self.methods[name] = kinds
            if entry is not None:
                self._entries[name] = entry
                self._held[name] = (spec, kinds, record)
        self.objects = data.get("objects", {})

    def _snapshot(self) -> tuple[dict[str, ServiceSpec], dict[str, dict[str, str]], dict[str, str]]:
        return dict(self.services), {k: dict(v) for k, v in self.methods.items()}, dict(self.objects)

    def _remove_unnamed_files(self) -> None:
        named = {e for e in self._entries.values() if isinstance(e, str)}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.services_dir):
                if entry.name not in named:
                    discard(Path(entry.path))

    def save(self) -> None:
        """Write the manifest (atomically). A write that fails (:class:`StorageFull` on a full disk) leaves the
        files as they were and puts this object back to what they say: a change that is not on disk did not
        happen."""
        entries: dict[str, str | dict[str, Any]] = {}
        held: dict[str, _Held] = {}
        inline: list[str] = []
        for name, spec in self.services.items():
            kinds = self.methods.get(name, {})
            was = self._held.get(name)
            if was is not None and was[0] is spec and was[1] == kinds:  # specs are replaced, never changed
                entries[name], held[name] = self._entries[name], was
            else:
                record = {"spec": spec.model_dump(mode="json"), "methods": kinds}
                entries[name], held[name] = record, (spec, dict(kinds), record)
            if not isinstance(entries[name], str):
                inline.append(name)
        new: Path | None = None
        try:
            if len(inline) > INLINE_MAX:  # move the inline records into a file of their own first
                batch = {name: held[name][2] for name in inline}
                raw = json.dumps(batch).encode()
                file = f"{hashlib.sha256(raw).hexdigest()[:24]}.json"
                new = self.services_dir / file
                os.replace(stage(new, raw, what="the deployment manifest"), new)
                sync_dir(self.services_dir)  # durable before a manifest names it
                entries.update(dict.fromkeys(inline, file))
            index = json.dumps({"format": _FORMAT, "services": entries, "objects": self.objects}).encode()
            write_atomic(self.path, index, what="the deployment manifest")
        except BaseException:
            if new is not None:
                discard(new)
            services, methods, objects = self._kept
            self.services, self.methods, self.objects = dict(services), {k: dict(v) for k, v in methods.items()}, \
                dict(objects)
            raise
        before = {e for e in self._entries.values() if isinstance(e, str)}
        self._entries, self._held = entries, held
        self._kept = self._snapshot()
        for file in before - {e for e in entries.values() if isinstance(e, str)}:
            discard(self.services_dir / file)  # no service's record is in it any more

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

    def stage_object(self, key: str, body: bytes) -> Path:
        """The object's new bytes in a temporary file, fsynced (:meth:`commit_object` puts it in place);
        :class:`StorageFull` on a full disk."""
        return stage(self.object_path(key), body, what=f"object {key!r}", key=key)

    def commit_object(self, key: str, env: str, staged: Path) -> None:
        """Put a staged object in place (and record its env when that is new). On any failure the staged file
        is removed and the stored object and the manifest are as they were."""
        try:
            if self.objects.get(key) != env:
                self.objects[key] = env
                self.save()  # a failure puts the manifest back as it was
            commit(staged, self.object_path(key))
        except BaseException:
            discard(staged)
            raise

    def put_object(self, key: str, env: str, body: bytes) -> None:
        self.commit_object(key, env, self.stage_object(key, body))

    def forget(self, name: str) -> None:
        """Drop a service or object. An object's file goes first: on a full disk that makes the room the
        manifest needs."""
        self.services.pop(name, None)
        self.methods.pop(name, None)
        if self.objects.pop(name, None) is not None:
            self.object_path(name).unlink(missing_ok=True)
        self.save()

    def rename(self, old: str, new: str) -> None:
        moved = False
        if old in self.services:
            spec = self.services.pop(old)
            self.services[new] = spec.model_copy(update={"name": new})
            self.methods[new] = self.methods.pop(old, {})
        if old in self.objects:
            self.objects[new] = self.objects.pop(old)
            if self.object_path(old).exists():
                os.replace(self.object_path(old), self.object_path(new))
                moved = True
        try:
            self.save()  # a failure puts the manifest back as it was
        except BaseException:
            if moved:
                os.replace(self.object_path(new), self.object_path(old))
            raise

    def status(self) -> list[dict[str, Any]]:
        out = [{"name": n, "kind": s.kind, "env": s.env.name, "version": s.version} for n, s in self.services.items()]
        out += [{"name": k, "kind": "object", "env": e, "version": None} for k, e in self.objects.items()]
        return sorted(out, key=lambda r: r["name"])
