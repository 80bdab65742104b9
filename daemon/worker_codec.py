"""How a worker reads a call's arguments and writes its results and errors: JSON or pickle, a big pickle in a
shared-memory file (the caller's lent result slab, else a new file), an error with its remote traceback and,
when it pickles, the exception itself."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import mmap
import pickle
import traceback
from typing import Any

import cloudpickle

from tether.daemon import protocol as p
from tether.daemon.slabs import ResultSpill
from tether.errors import ConfigError, SerializationError, TetherError
from tether.escalation.oom import classify_exception
from tether.protocol.pieces import Pieces

__all__ = ["SMALL", "Body", "decode_args", "encode_result", "error_payload", "is_small", "spill_pieces", "unmapper",
           "unserializable"]

Body = bytes | mmap.mmap | memoryview  # a call's arguments: in the frame, a mapped file, or a view of a lent slab
_SCALARS = frozenset({int, float, bool, type(None)})
SMALL = 64 * 1024  # a str or bytes result shorter than this never needs a shared-memory file


def decode_args(body: Body, json_mode: bool) -> tuple[list, dict]:
    """The call's (args, kwargs) from its pickle or JSON body (a mapped file is unmapped once read)."""
    try:
        if json_mode:
            data = json.loads(bytes(body)) if body else {}
            if not isinstance(data, dict):
                raise ValueError("the JSON body must be an object")
            args, kwargs = data.get("args", []), data.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError("'args' must be a list and 'kwargs' an object")
            return args, kwargs
        if not body:
            return [], {}
        args, kwargs = cloudpickle.loads(body)
        return list(args), dict(kwargs)
    except Exception as exc:
        raise SerializationError(
            f"could not decode the call's arguments: {exc}", hint="send cloudpickled (args, kwargs) or JSON"
        ) from exc
    finally:
        if isinstance(body, mmap.mmap):  # unmapping frees the (unlinked) file's pages: ~1 ms per 10 MB, off the loop
            unmapper().submit(body.close)
        elif isinstance(body, memoryview):  # a view of a lent slab: the mapping stays for the next call
            body.release()


@functools.cache
def unmapper() -> concurrent.futures.ThreadPoolExecutor:
    """One thread that closes mapped argument files (not the call threads' pool: it may be busy for long)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tether-unmap")


def spill_pieces(pieces: Pieces) -> tuple[dict[str, Any] | None, bytes]:
    """A result already pickled into ``pieces``, as :func:`encode_result`'s last two ways send it: a
    shared-memory file of our own, else (``/dev/shm`` full) the bytes over the socket. Nothing is pickled again."""
    out = p.Spill()
    try:
        for part in pieces.parts:
            out.write(part)
        return out.finish()
    except OSError:
        out.abort()
        return None, bytes(pieces)


def encode_result(value: Any, json_mode: bool, open_slab: Any = None) -> tuple[dict[str, Any] | None, bytes]:
    """The meta and body of a RESULT/ITEM frame; a large pickle is written straight to a shared-memory file:
    the caller's lent result slab (``open_slab()`` returns it), else a new file."""
    if json_mode:
        try:
            return None, json.dumps(value).encode()
        except Exception as exc:
            raise unserializable(value, exc) from exc
    if is_small(value):  # the C pickler: the same bytes as
        return None, pickle.dumps(value, protocol=5)  # cloudpickle's, ~8x less work than its Python subclass
    if open_slab is not None:
        into = ResultSpill(open_slab)
        try:
            cloudpickle.dump(value, into, protocol=5)
            return into.finish()
        except (OSError, ConfigError, EOFError):  # the slab is gone or refused: a file of our own, below
            pass
        except Exception as exc:
            raise unserializable(value, exc) from exc
    out = p.Spill()
    try:
        cloudpickle.dump(value, out, protocol=5)
        return out.finish()
    except OSError:  # /dev/shm full: pickle in memory, the bytes go over the socket
        out.abort()
    except Exception as exc:
        out.abort()
        raise unserializable(value, exc) from exc
    try:
        return None, cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise unserializable(value, exc) from exc


def is_small(value: Any) -> bool:
    """A value the C pickler writes into the frame itself (no shared-memory file)."""
    kind = type(value)
    return kind in _SCALARS or (kind in (str, bytes) and len(value) < SMALL)


def unserializable(value: Any, exc: Exception) -> SerializationError:
    return SerializationError(
        f"the result of type {type(value).__name__} could not be serialized: {exc}",
        hint="return picklable values (or JSON values when calling with JSON)",
    )


def _classify(exc: BaseException) -> BaseException:
    oom = classify_exception(exc)
    return oom if oom is not None else exc


def error_payload(exc: BaseException) -> tuple[dict[str, Any], bytes]:
    """JSON wire error (with the remote traceback) and, when possible, the pickled exception."""
    tb = "".join(traceback.format_exception(exc))
    classified = _classify(exc)
    if isinstance(classified, TetherError):
        wire = classified.to_wire()
        wire["error"]["details"].setdefault("traceback", tb)
        wire["error"]["details"].setdefault("remote_type", type(exc).__name__)
        return wire, b""
    wire = {
        "error": {
            "type": "RemoteError",
            "message": f"{type(exc).__name__}: {exc}",
            "hint": "the remote code raised; see the remote traceback",
            "retryable": False,
            "details": {"remote_type": f"{type(exc).__module__}.{type(exc).__qualname__}", "traceback": tb},
        }
    }
    try:
        body = cloudpickle.dumps(exc, protocol=5)
    except Exception:  # noqa: BLE001 - the type cannot travel; the client raises RemoteError
        body = b""
    return wire, body
