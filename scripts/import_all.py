"""Import every module of tether and tether.daemon (not the providers, which need their extras): run with a
core-only install, it fails when a module needs a package the core distribution does not depend on."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import tether

failed = []
for mod in pkgutil.walk_packages(tether.__path__, "tether."):
    if mod.name.startswith("tether.providers") or mod.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(mod.name)
    except Exception as exc:  # noqa: BLE001 - report every module that fails, then exit non-zero
        failed.append(f"{mod.name}: {type(exc).__name__}: {exc}")
print("\n".join(failed) if failed else "every core and daemon module imports with the core dependencies only")
sys.exit(1 if failed else 0)
