"""The HTTP header names and content types of the client <-> daemon contract (no string literals elsewhere)."""

from __future__ import annotations

__all__ = [
    "ACCEPT_SHM", "AUTHORIZATION", "BODY_FOLLOWS", "CALLER", "CALL_ATTEMPT", "CALL_ID", "EXPECT", "FRAMES", "JSON", "PICKLE", "PREFER", "PRIVATE", "RECEIVED", "RESPOND_ASYNC",
    "RESULT_SLAB", "SHM", "SHM_LENT", "bearer", "wants_async",
]

PICKLE = "application/x-tether-pickle"
"""Request body: cloudpickled ``(args, kwargs)``; response of ``GET /objects/{key}``: a pickle."""
FRAMES = "application/x-tether-frames"
"""Response body of a pickle call: a stream of :mod:`tether.protocol.frames`."""
JSON = "application/json"

AUTHORIZATION = "Authorization"
CALL_ID = "X-Tether-Call-Id"
"""Optional on a call; the same id twice runs once. Echoed on the response."""
CALL_ATTEMPT = "X-Tether-Call-Attempt"
"""On a call's response: which run of the call id answers (1; 2 and up for a re-run of a call lost in a daemon
restart). A client resuming a stream whose attempt changed knows the frames are a new run's, not a replay."""
CALLER = "X-Tether-Caller"
"""Who calls, for lineage and usage records."""
EXPECT = "X-Tether-Expect"
"""The deployment a call expects: ``v<version>`` of a saved service or ``h:<code hash>`` of an ad-hoc one. The
daemon answers only from that code; another deployment under the name is a ``NotFound`` naming both (the client
then redeploys what it expects)."""
ACCEPT_SHM = "X-Tether-Accept-Shm"
"""``1``: a same-host client takes big results and items as ``/dev/shm`` files (``F`` frames)."""
SHM = "X-Tether-Shm"
"""A same-host client's ``/dev/shm`` file holding the pickled arguments; the daemon takes it over."""
SHM_LENT = "X-Tether-Shm-Lent"
"""``<path>:<length>``: a lent slab holding the pickled arguments; it stays the client's."""
RESULT_SLAB = "X-Tether-Result-Slab"
"""``<path>``: a lent slab a big result is pickled into; only this request may read it."""
BODY_FOLLOWS = "X-Tether-Body-Follows"
"""On a pickle call with ``Content-Length: 0``: ``<n>``, the pickled arguments follow the head as ``n`` raw bytes,
sent once the daemon answers ``100 Continue`` (any other answer is final, and the client sends nothing more). The
daemon receives them straight into the argument file its worker maps, past the HTTP parser, which would copy every
piece it reads (``tether.daemon.bodies``). On a call's response: ``1``, this daemon takes bodies that follow. A
client sends one only to a daemon that said so, over a connection that reaches the daemon itself (a tunnel, not an
HTTP proxy)."""
PRIVATE = "X-Tether-Private"
"""``1`` on a pickle call: only its caller knows its call id (nobody else attaches to it), so a big result may be
left in a file the daemon reuses once the caller has it (``tether.daemon.result_pool``)."""
RECEIVED = "X-Tether-Received"
"""On a call: ``<call id>,<call id>…`` of private calls whose results this caller received whole; the daemon takes
their files back (anyone attaching to those ids afterwards gets ``NotFound``: the result was not kept)."""
PREFER = "Prefer"
RESPOND_ASYNC = "respond-async"
"""``Prefer: respond-async`` (RFC 7240) on a call = spawn it: the daemon answers ``202 {"call_id", "state", ...}``
once the call is registered, instead of its frames (re-attach with ``GET /calls/{id}``)."""


def bearer(token: str | None) -> dict[str, str]:
    """The authorization header for ``token`` (none without one)."""
    return {AUTHORIZATION: f"Bearer {token}"} if token else {}


def wants_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header value asks for ``respond-async`` (among other preferences, any case)."""
    if not prefer:
        return False
    return any(part.split(";", 1)[0].strip().lower() == RESPOND_ASYNC for part in prefer.split(","))
