"""A pickle kept as the pieces the pickler wrote: the client's call bodies and the worker's big results."""

from __future__ import annotations

from typing import Any

__all__ = ["Pieces"]


class Pieces:
    """A pickle as the pickler wrote it to a file, not joined: small frames, and each big buffer of the pickled
    value by reference (the C pickler hands a big ``bytes`` or array buffer to ``write`` as it is). A client's
    transport sends a call's argument pieces one after the other, so a 100 MB argument is sent from itself instead
    of being copied into a body first; a worker learns a result's size before it copies a byte (see
    ``tether.daemon.fills``). ``bytes(pieces)`` joins them (for a transport that needs one body)."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def write(self, data: Any) -> int:
        part = data if type(data) is bytes else memoryview(data).cast("B")  # a PickleBuffer has no len()
        self.parts.append(part)
        self.size += len(part)
        return len(part)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)
