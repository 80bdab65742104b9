"""Pickling a call's arguments and unpickling its result, with typed errors for both."""

from __future__ import annotations

import pickle
from typing import Any

from tether.client import slabs
from tether.errors import ClusterUnavailable, SerializationError
from tether.protocol.pieces import Pieces

__all__ = ["Pieces", "dump_args", "dump_pieces", "dumps_args", "load_file", "loads", "pickle_error", "unpickle_error"]


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every argument is a plain value the C pickler handles (~10x cheaper than cloudpickle's)."""
    return all(type(a) in _PLAIN for a in args) and all(type(v) in _PLAIN for v in kwargs.values())


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The call's arguments as a pickle (plain values take the C pickler)."""
    if _plain(args, kwargs):
        return pickle.dumps((args, kwargs), protocol=5)
    import cloudpickle  # here: off a fresh process's imports

    try:
        return cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        raise pickle_error(exc) from exc


def dump_pieces(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pieces:
    """The call's arguments pickled into :class:`Pieces` (for big buffers among them: see :func:`dumps_args`)."""
    out = Pieces()
    try:
        dump_args((args, kwargs), out)
    except Exception as exc:
        raise pickle_error(exc) from exc
    return out


def pickle_error(exc: Exception) -> SerializationError:
    return SerializationError(f"could not pickle the call's arguments: {type(exc).__name__}: {exc}",
                              hint="pass picklable values (no open files, sockets, locks or live connections)")


def dump_args(obj: Any, file: Any) -> None:
    """Pickle the call's arguments into ``file`` (plain values take the C pickler, see :func:`dumps_args`)."""
    if _plain(*obj):
        pickle.dump(obj, file, protocol=5)
    else:
        import cloudpickle  # see dumps_args

        cloudpickle.dump(obj, file, protocol=5)


def unpickle_error(exc: Exception) -> SerializationError:
    return SerializationError(f"could not unpickle the remote result: {type(exc).__name__}: {exc}",
                              hint="the result's type must be importable here with the same code as on the cluster")


def loads(body: bytes) -> Any:
    """Unpickle a result or item: from bytes, or from a payload the transport streams (one with ``readinto``:
    the big buffers in it are received straight into the objects they become, see
    ``tether.client.syncwire``). cloudpickle's output needs only :mod:`pickle` to load (it imports what it
    refers to, cloudpickle's own helpers included, when a pickle names them)."""
    try:
        if hasattr(body, "readinto"):
            value = pickle.load(body)  # type: ignore[arg-type]
            body.finish()  # type: ignore[attr-defined]
            return value
        return pickle.loads(body)
    except ClusterUnavailable:  # the link dropped mid-payload: not the payload's fault
        raise
    except Exception as exc:
        raise unpickle_error(exc) from exc


def load_file(path: str) -> Any:
    try:
        return slabs.load(path)
    except OSError as exc:
        raise ClusterUnavailable(f"the daemon's result file {path} is gone: {exc}",
                                 hint="the daemon restarted or dropped the finished call; run the call again") from exc
    except Exception as exc:
        raise unpickle_error(exc) from exc
