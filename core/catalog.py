"""``tether.catalog``: the public import path of :mod:`tether.compute.catalog` (the same module object)."""

import sys

from tether.compute.catalog import *  # noqa: F403 - the names, for type checkers
from tether.compute.catalog import __all__  # noqa: F401

sys.modules[__name__] = sys.modules["tether.compute.catalog"]
