"""A call's frames folded into its outcome, and what each way a call can fail means (typed errors)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from tether.client import slabs
from tether.client.payloads import load_file, loads, unpickle_error
from tether.client.transport import Dropped, Unreachable
from tether.errors import ClusterUnavailable, NotFound, TetherError, WorkerDied, error_from_wire
from tether.protocol import frames as p

__all__ = ["RERUN", "Dropped", "LogSink", "Outcome", "Unreachable", "default_log_sink", "http_error", "raise_remote",
           "rerun_error", "unavailable"]

RERUN = -1
"""Not a wire frame: what :meth:`tether.client.DaemonClient.frames` yields (payload: the new attempt, ASCII) when a
retry's response comes from another run of the call id than the frames before it (``X-Tether-Call-Attempt``: the
call was lost in a daemon restart and runs again from its start). Frames after it are the re-run's, from its first."""

LogSink = Callable[[dict[str, Any]], None]


def raise_remote(payload: bytes) -> None:
    """Raise the error an E frame carries, with the remote traceback attached as a note."""
    body = json.loads(payload)
    exc = error_from_wire(body)
    tb = body.get("error", {}).get("details", {}).get("traceback")
    if tb and not isinstance(exc, TetherError):
        exc.add_note(f"--- remote traceback ---\n{tb.rstrip()}")
    raise exc


def default_log_sink(event: dict[str, Any]) -> None:
    """Re-emit a remote log event locally: printed text to stdout/stderr, log records to the same logger."""
    if "text" in event:
        stream = sys.stderr if event.get("stream") == "stderr" else sys.stdout
        stream.write(event["text"])
        stream.flush()
    else:
        logging.getLogger(event.get("name") or "tether.remote").log(int(event.get("level", 20)), event.get("msg", ""))


class Outcome:
    """Folds a call's frames into its outcome: logs to ``on_log``, items collected, the result or the error kept.

    Never raises while frames arrive (so the transport's error handling cannot mistake the remote error, or a
    failing log sink, for a broken connection); :meth:`outcome` returns or raises at the end. A stream takes the
    items from :attr:`items` as they come (:meth:`take_items`).
    """

    __slots__ = ("attempt", "big_payload", "big_result", "done", "error", "failure", "final", "items", "lease", "on_log", "seen",
                 "value")

    def __init__(self, on_log: LogSink | None) -> None:
        self.on_log = on_log
        self.seen = 0  # frames handled (a resumed attempt skips them)
        self.items: list[Any] | None = None
        self.value: Any = None
        self.error: bytes | None = None
        self.failure: BaseException | None = None
        self.done = False
        self.final = False  # the call's RESULT or ERROR arrived: the worker is done with its slabs
        self.big_result = False  # the result came in a file the daemon owns (next time: lend a result slab)
        self.big_payload = False  # the result came through the socket, 1 MiB or more
        self.lease: slabs.Lease | None = None
        self.attempt: str | None = None  # the run of the call id the frames came from (X-Tether-Call-Attempt)

    def feed(self, kind: int, payload: bytes) -> bool:
        """Take one frame; True once the call's outcome is known."""
        if kind == p.HEARTBEAT:
            return False
        self.seen += 1
        try:
            if kind in (p.RESULT, p.ERROR):
                self.final = True
            if kind == p.FILE:  # a big result or item in a shared-memory file the daemon owns (or in our slab)
                ref = json.loads(payload)
                kind = ref["kind"]
                self.final = kind != p.ITEM
                self.big_result = self.final and not ref.get("slab")
                loaded = self._load_slab(ref) if ref.get("slab") else _load_kept(ref["path"])
                if kind == p.ITEM:
                    self.items = self.items if self.items is not None else []
                    self.items.append(loaded)
                    return False
                self.value = self.items if self.items is not None else loaded
            elif kind == p.RESULT:
                self.big_payload = hasattr(payload, "readinto") or len(payload) >= slabs.THRESHOLD  # streamed: big
                self.value = self.items if self.items is not None else loads(payload)
            elif kind == p.ERROR:
                self.error = payload
            elif kind == p.LOG:
                if self.on_log is not None:
                    self.on_log(json.loads(payload))
                return False
            elif kind == p.ITEM:
                self.items = self.items if self.items is not None else []
                self.items.append(loads(payload))
                return False
            else:
                return False
        except Dropped:  # the link dropped while a streamed payload was read: this frame was not handled
            self.seen -= 1
            self.final = False
            raise
        except Exception as exc:  # noqa: BLE001 - raised by outcome(), after the transport is done
            self.failure = exc
        self.done = True
        return True

    def _load_slab(self, ref: dict[str, Any]) -> Any:
        """A result the worker pickled into the slab this call lent."""
        try:
            if self.lease is None:
                raise EOFError("this call lent no result slab")
            return self.lease.load_result(ref["path"], ref["size"])
        except (OSError, EOFError, ValueError) as exc:
            raise ClusterUnavailable(f"could not read the call's result slab: {exc}",
                                     hint="run the call again") from exc
        except Exception as exc:
            raise unpickle_error(exc) from exc

    def rerun(self) -> None:
        """The call runs again from its start (see :data:`RERUN`): the items collected so far were the lost run's."""
        self.items = None
        self.value = None

    def take_items(self) -> list[Any]:
        """The items collected since the last time (a stream hands them out as they come)."""
        items = self.items
        if not items:
            return []
        self.items = []
        return items

    def outcome(self, call_id: str) -> Any:
        if self.failure is not None:
            if isinstance(self.failure, NotFound) and self.failure.details.get("reason") == "result_gone":
                self.failure.details.setdefault("call_id", call_id)
            raise self.failure
        if self.error is not None:
            raise_remote(self.error)
        if not self.done:
            raise ClusterUnavailable(f"the stream of call {call_id} ended without a result",
                                     details={"call_id": call_id})
        return self.value


def _load_kept(path: str) -> Any:
    """A big result or item from the ``/dev/shm`` file the daemon keeps; a file that is gone (a reboot, another
    daemon's sweep) is the typed ``NotFound`` of a result that is gone (the call is not run again)."""
    if not os.path.exists(path):
        raise NotFound(f"the call's result file {path} is gone", details={"reason": "result_gone", "path": path},
                       hint="a call id runs once: its result is not computed again; run it under a new call id")
    return load_file(path)


def rerun_error(call_id: str, items_seen: int, attempt: int) -> WorkerDied:
    """A stream that handed out ``items_seen`` items of a run that was lost (a daemon restart) while its call id
    runs again from its start: the re-run's items are not the lost run's next ones."""
    return WorkerDied(
        f"call {call_id!r} was lost in a daemon restart after this stream had handed out {items_seen} items; it runs "
        f"again from its start (attempt {attempt}), so its next items would not follow the ones already given",
        hint="if the generator yields the same items when run again, make the handle replayable "
             "(handle.with_options(replayable=True)) and the stream skips the items it gave; or re-attach to the "
             "re-run with tether.call(call_id) for all of its items",
        retryable=False,  # the same id attaches to the re-run again
        details={"call_id": call_id, "reason": "rerun_after_items", "items_seen": items_seen, "attempt": attempt})


def unavailable(exc: Dropped, call_id: str) -> Dropped:
    """The link error of a call that could not be completed, naming the call (to re-attach to it)."""
    exc.details["call_id"] = call_id
    return exc


def http_error(status: int, body: bytes) -> BaseException:
    try:
        data = json.loads(body)
    except ValueError:
        data = {"error": {"type": "TetherError", "message": f"HTTP {status}: {body[:200]!r}"}}
    return error_from_wire(data, status=status)
