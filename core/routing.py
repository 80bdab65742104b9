"""``tether.routing``: the public import path of :mod:`tether.compute.routing` (the same module object)."""

import sys

from tether.compute.routing import *  # noqa: F403 - the names, for type checkers
from tether.compute.routing import __all__  # noqa: F401

sys.modules[__name__] = sys.modules["tether.compute.routing"]
