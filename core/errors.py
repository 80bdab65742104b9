"""The one error tree of tether.

Every error a user can see is a :class:`TetherError`; each subclass says what went wrong and what to do::

    TetherError                  root; .hint says what to do, .retryable says whether trying again can help
    ├── ClusterUnavailable       the cluster cannot be reached or brought up
    │   ├── CapacityError        the cloud has no capacity for this request (another region/cloud may)
    │   └── QuotaError           the account's quota is exhausted
    ├── AuthError                missing/wrong token or too low an access level
    ├── NotFound                 no service, object, call or registry entry of that name
    ├── SerializationError       arguments or results could not be (un)pickled
    ├── RemoteError              the remote code raised an exception whose type cannot be rebuilt locally
    ├── OutOfMemory              the remote code ran out of memory (host RAM or GPU)
    ├── WorkerDied               the worker process died mid-call (segfault, kill)
    ├── CallCancelled            the call was cancelled
    ├── CallTimeout              no answer within the timeout
    ├── ConfigError              a config or spec failed validation
    ├── PayloadTooLarge          the request body is over the daemon's limit
    └── StorageFull              the daemon's disk is full: nothing was written, the previous copy is intact
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = [
    "AuthError",
    "CallCancelled",
    "CallTimeout",
    "CapacityError",
    "ClusterUnavailable",
    "ConfigError",
    "NotFound",
    "OutOfMemory",
    "PayloadTooLarge",
    "QuotaError",
    "RemoteError",
    "SerializationError",
    "StorageFull",
    "TetherError",
    "WorkerDied",
    "error_from_wire",
]


class TetherError(Exception):
    """Root of every tether error."""

    status: int = 500
    default_retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.retryable = self.default_retryable if retryable is None else retryable
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.hint, self.retryable, self.details))

    def to_wire(self) -> dict[str, Any]:
        """The JSON body the daemon and registry send for this error."""
        return {
            "error": {
                "type": type(self).__name__,
                "message": self.message,
                "hint": self.hint,
                "retryable": self.retryable,
                "details": self.details,
            }
        }


def _rebuild(cls: type[TetherError], message: str, hint: str | None, retryable: bool, details: dict) -> TetherError:
    return cls(message, hint=hint, retryable=retryable, details=details)


class ClusterUnavailable(TetherError):
    """The cluster cannot be reached or brought up."""

    status = 503
    default_retryable = True


class CapacityError(ClusterUnavailable):
    """No capacity for the request in this region/cloud."""


class QuotaError(ClusterUnavailable):
    """The account's quota does not allow the request."""

    default_retryable = False


class AuthError(TetherError):
    """Missing or wrong credentials, or too low an access level."""

    status = 401


class NotFound(TetherError):
    """No service, object, call or registry entry of that name."""

    status = 404


class SerializationError(TetherError):
    """Arguments or results could not be serialized or deserialized."""

    status = 400


class RemoteError(TetherError):
    """The remote code raised an exception whose type cannot be rebuilt locally."""

    status = 200

    @property
    def remote_type(self) -> str:
        return str(self.details.get("remote_type", ""))

    @property
    def remote_traceback(self) -> str:
        return str(self.details.get("traceback", ""))


class OutOfMemory(TetherError):
    """The remote code ran out of memory; a larger instance may succeed."""

    status = 507
    default_retryable = True


class WorkerDied(TetherError):
    """The worker process died mid-call; the env restarts on next use."""

    status = 502
    default_retryable = True


class CallCancelled(TetherError):
    """The call was cancelled."""

    status = 409


class CallTimeout(TetherError):
    """No answer within the timeout."""

    status = 504
    default_retryable = True


class ConfigError(TetherError):
    """A config or spec failed validation."""

    status = 422


class PayloadTooLarge(TetherError):
    """The request body is larger than the daemon accepts."""

    status = 413


class StorageFull(TetherError):
    """The daemon could not store state because its disk is full (or over quota); nothing was changed on disk."""

    status = 507


_BY_NAME: dict[str, type[TetherError]] = {
    cls.__name__: cls
    for cls in (
        TetherError,
        ClusterUnavailable,
        CapacityError,
        QuotaError,
        AuthError,
        NotFound,
        SerializationError,
        RemoteError,
        OutOfMemory,
        WorkerDied,
        CallCancelled,
        CallTimeout,
        ConfigError,
        PayloadTooLarge,
        StorageFull,
    )
}


def error_from_wire(body: dict[str, Any], *, status: int | None = None) -> BaseException:
    """Rebuild an error from its wire form; the original exception when it was shipped and can be unpickled."""
    import cloudpickle  # here: off a fresh process's imports
    err = body.get("error", body) if isinstance(body, dict) else {}
    exc_b64 = err.get("exc")
    if exc_b64:
        try:
            exc = cloudpickle.loads(base64.b64decode(exc_b64))
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # noqa: BLE001 - the type may not exist here; fall through to RemoteError
            pass
    cls = _BY_NAME.get(str(err.get("type")))
    details = dict(err.get("details") or {})
    message = str(err.get("message") or f"HTTP {status}")
    if cls is None:
        details.setdefault("remote_type", err.get("type"))
        cls = RemoteError
    return cls(message, hint=err.get("hint"), retryable=err.get("retryable"), details=details)
