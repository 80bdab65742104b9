"""Lineage recorded where the code runs: the remote code says what it read and wrote, the caller stores it.

Remote side (``tether.lineage.input`` / ``tether.lineage.output``)::

    import tether

    def pretrain(day):
        tether.lineage.input(f"s3://lake/events/{day}", version=day)
        ...
        tether.lineage.output("s3://ckpt/bert", version=step)

Each declaration is a report of kind ``"lineage"`` (:func:`tether.api.report.emit`), payload
``{"direction": "in" | "out", "uri": str, "version": str | None}``; it travels with the call's log stream. The
caller's :class:`~tether.api.invocation.Invocation` collects them (:class:`Edges`) and writes them with the call's
usage record, so the registry knows, per call, which service version ran where, for whom, on what inputs, to
which outputs (``Registry.lineage(uri)``, ``Registry.dependents(name)``).
"""

from __future__ import annotations

import threading
from typing import Any

from tether.api.report import emit
from tether.client import LogSink
from tether.errors import ConfigError
from tether.protocol import reports as wire

__all__ = ["KIND", "Edge", "Edges", "declare", "input", "output"]

KIND = "lineage"
"""The report kind of a lineage declaration."""


Edge = tuple[str, str | None]
"""An artifact as the caller collects it: ``(uri, version)``."""


def _checked(uri: Any, version: Any) -> Edge:
    if not isinstance(uri, str) or not uri or len(uri) > 1024 or "\x00" in uri:
        raise ConfigError(f"lineage needs a uri (a string of 1 to 1024 characters), not {uri!r:.80}",
                          hint='e.g. "s3://bucket/ckpt"', details={"field": "uri"})
    if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
        raise ConfigError(f"lineage version {version!r:.80} must be a string or an integer",
                          details={"field": "version"})
    text = None if version is None else str(version)
    if text is not None and (len(text) > 256 or "\x00" in text):
        raise ConfigError("a lineage version is at most 256 characters", details={"field": "version"})
    return uri, text


def declare(direction: str, uri: str, version: Any = None) -> Edge:
    """Declare that the current call read (``"in"``) or wrote (``"out"``) ``uri`` at ``version``; the artifact.

    Outside a remote call (and any :func:`tether.api.report.collecting` block) nothing is sent.
    """
    if direction not in ("in", "out"):
        raise ConfigError(f"lineage direction {direction!r} is not 'in' or 'out'", details={"field": "direction"})
    edge = _checked(uri, version)
    emit(KIND, {"direction": direction, "uri": edge[0], "version": edge[1]})
    return edge


def input(uri: str, version: str | int | None = None) -> Edge:  # noqa: A001 - the documented name
    """Declare that the current remote call read ``uri`` (at ``version``, when known)."""
    return declare("in", uri, version)


def output(uri: str, version: str | int | None = None) -> Edge:
    """Declare that the current remote call wrote ``uri`` (at ``version``, when known)."""
    return declare("out", uri, version)


class Edges:
    """What one call declared, collected on the caller's side from its log stream (each edge once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], Edge] = {}

    def add(self, payload: dict[str, Any]) -> None:
        """Take one lineage report's payload; a malformed one is ignored (it must not fail the call)."""
        direction = payload.get("direction")
        try:
            edge = _checked(payload.get("uri"), payload.get("version"))
        except ConfigError:
            return
        if direction in ("in", "out"):
            with self._lock:
                self._seen.setdefault((direction, edge[0], edge[1] or ""), edge)

    def wrap(self, sink: LogSink | None) -> LogSink:
        """A log sink that notes lineage reports and hands every event on to ``sink`` (None: drops them)."""

        def noting(event: dict[str, Any]) -> None:
            found = wire.report_of(event)
            if found is not None and found[0] == KIND:
                self.add(found[1])
            if sink is not None:
                sink(event)

        return noting

    @property
    def inputs(self) -> list[Edge]:
        with self._lock:
            return [a for (d, *_), a in self._seen.items() if d == "in"]

    @property
    def outputs(self) -> list[Edge]:
        with self._lock:
            return [a for (d, *_), a in self._seen.items() if d == "out"]
