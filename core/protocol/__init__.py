"""The client <-> daemon contract, in one place: frames, headers and content types, call states, the
shared-memory primitives both sides use, bearer tokens and pinned TLS.

It imports only ``tether.errors`` (and the standard library), so both the client and the daemon depend on it
and neither depends on the other.
"""

from tether.protocol import frames, headers, shm, tokens
from tether.protocol.frames import Frame, FrameDecoder
from tether.protocol.states import CallState

__all__ = ["CallState", "Frame", "FrameDecoder", "frames", "headers", "shm", "tokens"]
