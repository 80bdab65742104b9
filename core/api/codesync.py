"""Finding a callable's code: its import path and code root, and a fingerprint of that tree."""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import sysconfig
import warnings
from pathlib import Path
from typing import Any

from tether.specs import CodeRef

__all__ = ["code_ref", "find_root", "tree_hash"]

_SKIP_DIRS = {".git", ".hg", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache",
              ".pytest_cache", "build", "dist", ".tox", ".nox"}
_ROOT_MARKERS = (".git", "pyproject.toml", "setup.py", "setup.cfg")


def _installed_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return [str(Path(paths[k]).resolve()) for k in ("purelib", "platlib", "stdlib") if k in paths]


def find_root(start: Path) -> Path:
    """The nearest ancestor holding a repo or project marker; else the top of the package chain."""
    for parent in (start, *start.parents):
        if any((parent / m).exists() for m in _ROOT_MARKERS):
            return parent
    top = start
    while (top / "__init__.py").exists():
        top = top.parent
    return top


def tree_hash(root: Path) -> str:
    """Fingerprint of the Python files under ``root`` (path, size, mtime): changes when code is edited."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".py", ".pyi", ".json", ".yaml", ".yml", ".toml", ".txt", ".cfg")):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def python_files(root: Path) -> list[Path]:
    """The Python files of a code tree, relative to ``root``, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        out += [(Path(dirpath) / n).relative_to(root) for n in sorted(filenames) if n.endswith((".py", ".pyi"))]
    return out


def content_hash(root: Path) -> str:
    """Content hash of the code tree (for registry versions)."""
    h = hashlib.sha256()
    for rel in python_files(root):
        h.update(str(rel).encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


def _by_value(obj: Any, why: str) -> CodeRef:
    warnings.warn(f"{getattr(obj, '__qualname__', obj)!r} {why}; shipping it by value with cloudpickle "
                  "(move it into a module file to deploy it as code)", stacklevel=4)
    import cloudpickle  # here: off a fresh process's imports

    module = inspect.getmodule(obj)
    if module is not None and module.__name__ != "__main__":
        cloudpickle.register_pickle_by_value(module)
    try:
        return CodeRef(pickled_b64=base64.b64encode(cloudpickle.dumps(obj)).decode())
    finally:
        if module is not None and module.__name__ != "__main__":
            cloudpickle.unregister_pickle_by_value(module)


def code_ref(obj: Any) -> tuple[CodeRef, Path | None]:
    """How the daemon will find ``obj``, and the local code root to sync (None when nothing to sync)."""
    module = inspect.getmodule(obj)
    qualname = getattr(obj, "__qualname__", None)
    if module is None or qualname is None or "<locals>" in qualname or "<lambda>" in qualname:
        return _by_value(obj, "has no import path"), None
    if module.__name__ == "__main__" or not getattr(module, "__file__", None):
        return _by_value(obj, "is defined in __main__ or a notebook"), None
    file = Path(module.__file__).resolve()  # type: ignore[arg-type]
    if any(str(file).startswith(d + os.sep) for d in _installed_dirs()):
        return CodeRef(import_path=module.__name__, qualname=qualname), None
    root = find_root(file.parent)
    parts = module.__name__.split(".")
    expected = root.joinpath(*parts)
    if file in (expected.with_suffix(".py"), expected / "__init__.py"):
        import_path = module.__name__
    else:
        # imported under a different name (sys.path tweak): derive the dotted path from the file's place in root
        rel = file.relative_to(root).with_suffix("")
        rel_parts = [p for p in rel.parts if p != "__init__"]
        import_path = ".".join(rel_parts)
        if not all(p.isidentifier() for p in rel_parts):
            return _by_value(obj, f"lives in {file}, which has no importable path under {root}"), None
    return CodeRef(root=str(root), import_path=import_path, qualname=qualname, code_hash=tree_hash(root)), root
