"""Call ids for orchestrator providers: deterministic ids, what a call runs (version and arguments), the n-th
call of an attempt, and the one retry scheme (re-attach to a running or succeeded call, ``<id>-r<n>`` after a
failure)."""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.api.calls import call as attach
from tether.api.clusters import Cluster
from tether.errors import ConfigError, NotFound, TetherError
from tether.protocol import CallState
from tether.runs.where import ClusterRef, target_label, to_cluster

REATTACH_SCOPES = ("retries", "run")
"""What a try may re-attach to (``reattach=`` of every provider): ``"retries"`` (default) the call an earlier try
of the same attempt started; ``"run"`` also a call of an earlier attempt in the same run with the same service
version and arguments (an Airflow Clear, a Dagster re-execution of the same root run)."""

def call_id_for(*parts: Any) -> str:
    """A deterministic call id from e.g. (dag_id, task_id, run_id, map_index): a retry re-attaches to it."""
    raw = "\x1f".join("" if p is None else str(p) for p in parts)
    return "run-" + hashlib.sha256(raw.encode()).hexdigest()[:32]


class CallCounter:
    """Counts the calls each attempt of an orchestrator step has made, so a retry's n-th call gets the n-th id.

    A step may call tether several times; each call's id includes its index within the attempt. Keys name the
    attempt (e.g. task run and retry count); a retry has a new key and counts from 0 again, so its calls get
    the same ids as the previous attempt's and re-attach to them. Thread-safe; only the ``max_keys`` most
    recently used keys are kept.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._counts: OrderedDict[Hashable, int] = OrderedDict()
        self._lock = threading.Lock()

    def next(self, key: Hashable) -> int:
        """The index of the next call made under ``key``: 0, 1, 2, ..."""
        with self._lock:
            index = self._counts.get(key, 0)
            self._counts[key] = index + 1
            self._counts.move_to_end(key)
            while len(self._counts) > self.max_keys:
                self._counts.popitem(last=False)
            return index


def choose_call_id(base_id: str, state_of: Callable[[str], CallState | None], *, limit: int = 100) -> str:
    """The retry scheme, given ``state_of(call_id)`` (the daemon's state of a call, None when it has none).

    ``base_id`` unless its call failed or was cancelled; then the first of ``<base_id>-r1``, ``-r2``, ... that is
    running, succeeded or unknown. Re-attaching to a running or succeeded call means a retry after a lost worker
    does not pay twice; running again after a failure means a retry is not just a replay of the recorded error.
    """
    candidate = base_id
    for n in range(1, limit + 1):
        state = state_of(candidate)
        if state is None or state in CallState.reattachable():
            return candidate
        candidate = f"{base_id}-r{n}"
    return candidate


def call_state(call_id: str, cluster: Cluster) -> CallState | None:
    """The state of ``call_id`` on ``cluster``'s daemon (which must be reachable); None if it has no such call."""
    try:
        return CallState(attach(call_id, cluster, on_log=None).status()["state"])
    except NotFound:
        return None


def attempt_call_id(base_id: str, cluster: ClusterRef = None, *, limit: int = 100) -> str:
    """The call id one attempt (a first try or an orchestrator retry) of the call ``base_id`` uses.

    The one retry scheme of every provider (see :func:`choose_call_id`); the daemon of ``cluster`` (brought up if
    needed; None: the embedded local cluster) decides, so any process on any worker picks the same id.
    """
    return choose_attempt(base_id, cluster, limit=limit).call_id


@dataclass(frozen=True)
class CallChoice:
    """The call id one try uses, and the daemon's state of that call when it was chosen."""

    call_id: str
    state: CallState | None = None
    """RUNNING or SUCCEEDED: the try re-attaches to that call; None: the daemon has no such call, a new one starts."""

    @property
    def reattached(self) -> bool:
        return self.state is not None and self.state in CallState.reattachable()


def choose_attempt(base_id: str, cluster: ClusterRef = None, *, limit: int = 100) -> CallChoice:
    """:func:`attempt_call_id` with the state it found: whether the try re-attaches, and to what."""
    c = to_cluster(cluster).up_if_not()
    seen: dict[str, CallState | None] = {}

    def state_of(call_id: str) -> CallState | None:
        seen[call_id] = call_state(call_id, c)
        return seen[call_id]

    chosen = choose_call_id(base_id, state_of, limit=limit)
    return CallChoice(chosen, seen.get(chosen))


def check_reattach(value: Any) -> str:
    """A provider's ``reattach=`` argument, checked (one of :data:`REATTACH_SCOPES`)."""
    if value not in REATTACH_SCOPES:
        raise ConfigError(f"reattach={value!r} is not one of {', '.join(map(repr, REATTACH_SCOPES))}",
                          hint="'retries': only retries of a try re-attach; 'run': a Clear or re-execution with "
                               "the same version and arguments does too; force_rerun=True: never",
                          details={"field": "reattach"})
    return str(value)


def call_identity(service: Any, args: tuple | list = (), kwargs: Mapping[str, Any] | None = None) -> str:
    """What one call runs, as a digest: the service's version (or its code) and its arguments.

    Part of every provider's call id, so a call with other arguments, or of another version of the service,
    never re-attaches to an earlier one's result.
    """
    raw = "\x1f".join((service_version(service), args_digest(args, kwargs)))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def service_version(service: Any) -> str:
    """What identifies the code a call of ``service`` runs: a saved service's name and registry version; else the
    name, import path and a digest of its module's source (or of the pickled code shipped by value)."""
    spec = getattr(service, "spec", None)
    name = getattr(service, "registry_name", None) or target_label(service)
    if spec is not None and spec.version is not None:
        return f"{name}@{spec.version}"
    code = spec.code if spec is not None else None
    where = f"{code.import_path}:{code.qualname}" if code is not None else ""
    source = _source_digest(getattr(service, "obj", None))
    if source is None and code is not None and code.pickled_b64:
        source = hashlib.sha256(code.pickled_b64.encode()).hexdigest()[:32]
    return f"{name}:{where}:{source or (code.code_hash if code is not None else '')}"


def _source_digest(obj: Any) -> str | None:
    """A digest of the source file ``obj`` is defined in (edited code is other code), or None."""
    if obj is None:
        return None
    try:
        path = inspect.getsourcefile(obj)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32] if path else None
    except (TypeError, OSError):
        return None


def args_digest(args: tuple | list = (), kwargs: Mapping[str, Any] | None = None) -> str:
    """A digest of a call's arguments: equal arguments give equal digests, in any process.

    Plain containers are put in a canonical order first (dict items and set members sorted), so neither
    insertion order nor string-hash randomisation changes the digest; the rest is pickled (protocol 5, big
    buffers hashed in place). Arguments that cannot be pickled get a digest of their own every time (such a call
    is never mistaken for another; it cannot be sent anyway).
    """
    import cloudpickle  # here: off a fresh process's imports
    h = hashlib.blake2b(digest_size=16)
    buffers: list[pickle.PickleBuffer] = []
    try:
        h.update(cloudpickle.dumps(_canonical((tuple(args), dict(kwargs or {}))), protocol=5,
                                   buffer_callback=buffers.append))
    except Exception:  # noqa: BLE001 - see the docstring: unique, never equal to another call's
        return os.urandom(16).hex()
    for buf in buffers:
        h.update(buf.raw())
    return h.hexdigest()


def _canonical(obj: Any) -> Any:
    kind = type(obj)
    if kind in (list, tuple):
        return (kind.__name__, [_canonical(x) for x in obj])
    if kind is dict:
        return ("dict", sorted(((_canonical(k), _canonical(v)) for k, v in obj.items()), key=_order))
    if kind in (set, frozenset):
        return (kind.__name__, sorted((_canonical(x) for x in obj), key=_order))
    return obj


def _order(item: Any) -> bytes:
    try:
        return pickle.dumps(item, protocol=5)
    except Exception:  # noqa: BLE001 - an order for things pickle refuses (cloudpickle takes them later)
        return repr(item).encode()


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again can help (a tether error marked retryable)."""
    return isinstance(exc, TetherError) and exc.retryable


# -- clusters from settings ------------------------------------------------------------------------------------------
