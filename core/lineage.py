"""``tether.lineage``: declare, inside remote code, what a call read and wrote; ask the registry what came of it.

    import tether

    def pretrain(day):
        tether.lineage.input("s3://lake/events", version=day)      # what this call read
        ...
        tether.lineage.output("s3://ckpt/bert", version=step)      # what it wrote

The caller stores these edges with the call's usage record (service version, cluster, caller, duration), and
``tether.lineage.upstream("s3://ckpt/bert", "1200")`` / ``tether.lineage.downstream("team/pretrain@3")`` walk them
(see :meth:`tether.registry.Registry.lineage` and :meth:`~tether.registry.Registry.dependents`).
"""

from __future__ import annotations

from tether.api.lineage import declare, input, output
from tether.registry import get_registry
from tether.registry.models import LineageGraph

__all__ = ["declare", "downstream", "input", "output", "upstream"]


def upstream(uri: str, version: str | int | None = None, *, depth: int = 20) -> LineageGraph:
    """What produced ``uri`` (at ``version``), with which code version, from which inputs, transitively."""
    return get_registry().lineage(uri, version, depth=depth)


def downstream(name: str, *, depth: int = 20) -> LineageGraph:
    """What depends on service ``name`` (``"team/pretrain@3"``: that version): the calls that read what its calls
    wrote, and theirs, transitively."""
    return get_registry().dependents(name, depth=depth)
