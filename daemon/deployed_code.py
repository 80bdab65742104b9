"""A worker's view of the code deployed into it: the kinds of a service's callables, and forgetting the modules of
a code tree so that a redeploy imports its new files."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["describe", "from_root", "purge_modules_under", "purge_package"]


def describe(obj: Any) -> dict[str, str]:
    """Kinds of the callables an object offers: sync, async, gen, agen."""

    def kind(fn: Any) -> str:
        if inspect.isasyncgenfunction(fn):
            return "agen"
        if inspect.iscoroutinefunction(fn):
            return "async"
        if inspect.isgeneratorfunction(fn):
            return "gen"
        return "sync"

    if inspect.isroutine(obj):
        return {"__call__": kind(obj)}
    target = obj if inspect.isclass(obj) else type(obj)
    out = {}
    for name, member in inspect.getmembers(target):
        if callable(member) and not name.startswith("_"):
            out[name] = kind(member)
    return out


def from_root(module: Any, root: str) -> bool:
    """Whether ``module`` (a file or a package) was loaded from the tree at ``root``."""
    prefix = str(Path(root).resolve()) + os.sep
    paths = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
    return any(p and str(Path(p).resolve()).startswith(prefix) for p in paths)


def purge_package(top: str) -> None:
    """Forget package ``top`` and its submodules (another tree of the same name is deployed)."""
    for name in list(sys.modules):
        if name == top or name.startswith(top + "."):
            sys.modules.pop(name, None)
    importlib.invalidate_caches()


def _own_module(name: str) -> bool:
    """tether's own modules (the worker's state, e.g. the report emitter, lives in them): never purged, also when a
    code root contains tether's source (an editable install under the project)."""
    return name == "tether" or name.startswith("tether.")


def purge_modules_under(root: str) -> None:
    """Forget every module loaded from ``root`` (files and namespace packages), so the next import re-reads it."""
    prefix = str(Path(root).resolve()) + os.sep

    def under(path: str | None) -> bool:
        return bool(path) and str(Path(path).resolve()).startswith(prefix)  # type: ignore[arg-type]

    doomed = {name for name, module in list(sys.modules.items())
              if not _own_module(name) and (under(getattr(module, "__file__", None))
                                            or any(under(p) for p in (getattr(module, "__path__", None) or [])))}
    for name in list(sys.modules):
        if name in doomed or any(name.startswith(d + ".") for d in doomed):
            sys.modules.pop(name, None)
    importlib.invalidate_caches()
