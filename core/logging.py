"""structlog set-up: one JSON event per line; :func:`get_logger` for modules on a caller's path.

structlog (and the rich console it loads when installed) costs ~0.1 s to import: a fresh process that only loads a
service by name and calls it must not pay that, so client-side modules take a logger that imports structlog at its
first event.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

__all__ = ["LazyLogger", "configure_logging", "get_logger", "redact_credentials"]

#: event keys whose values are credentials whatever they hold
SECRET_KEYS = frozenset({"authorization", "token", "password", "secret", "api_key", "cookie", "x-tether-token"})
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)(\s+|[=:]\s*)[^\s'\",;]+")
_REDACTED = "<redacted>"


def redact_credentials(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: values of credential keys (``token``, ``authorization``, ...) and anything shaped
    like ``Bearer <token>`` in a string value are replaced before the event is written."""
    for key, value in list(event.items()):
        if key.lower() in SECRET_KEYS:
            event[key] = _REDACTED
        elif isinstance(value, str) and _BEARER.search(value):
            event[key] = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{_REDACTED}", value)
    return event


def configure_logging(level: int = logging.INFO) -> None:
    """Configure structlog to write one JSON event per line to stderr."""
    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            redact_credentials,  # after format_exc_info: a traceback's text is redacted too
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


class LazyLogger:
    """``structlog.get_logger(name)``, made at the first use of any of its methods (``log.warning(...)``)."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attr)


def get_logger(name: str) -> Any:
    """A structlog logger for ``name`` that imports structlog only when it first logs."""
    return LazyLogger(name)
