"""``tether.__all__`` is the public API: sorted, every name resolves, and nothing public is left out of it."""

from __future__ import annotations

from types import ModuleType

import tether
import tether.errors

PUBLIC_SUBMODULES = {"registry", "runs"}  # modules that are part of the public API by name


def _public(module: ModuleType) -> set[str]:
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and (not isinstance(value, ModuleType) or name in PUBLIC_SUBMODULES)}


def test_all_is_sorted_and_resolves() -> None:
    assert tether.__all__ == sorted(tether.__all__)
    for name in tether.__all__:
        assert getattr(tether, name) is not None, name


def test_nothing_public_is_missing_from_all() -> None:
    for name in tether.__all__:  # loads every lazy name into the namespace
        getattr(tether, name)
    assert _public(tether) | {"__version__"} == set(tether.__all__)
    assert set(dir(tether)) >= set(tether.__all__)


def test_every_error_is_exported_from_tether_and_errors() -> None:
    errors = {n for n, v in vars(tether.errors).items() if isinstance(v, type) and issubclass(v, tether.TetherError)}
    assert errors <= set(tether.__all__)
    assert errors <= set(tether.errors.__all__)
