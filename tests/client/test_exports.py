"""``tether.client`` keeps its ``__all__`` honest (its layer is checked in tests/test_layers.py)."""

from __future__ import annotations

import tether.client


def test_all_is_sorted_and_names_the_public_members():
    public = {name for name in vars(tether.client) if not name.startswith("_")} - {
        name for name, value in vars(tether.client).items() if type(value).__name__ == "module"}
    assert tether.client.__all__ == sorted(tether.client.__all__)
    lazy = {"close_all"}  # given by the module's __getattr__ at first use (the asyncio transport's)
    assert set(tether.client.__all__) == public | lazy
    assert all(getattr(tether.client, name) is not None for name in tether.client.__all__)
