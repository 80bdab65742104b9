"""``tether.oom``: the public import path of :mod:`tether.escalation.oom` (the same module object)."""

import sys

from tether.escalation.oom import *  # noqa: F403 - the names, for type checkers
from tether.escalation.oom import __all__  # noqa: F401

sys.modules[__name__] = sys.modules["tether.escalation.oom"]
