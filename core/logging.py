"""structlog set-up: one JSON event per line; :func:`get_logger` for modules on a caller's path.

structlog (and the rich console it loads when installed) costs ~0.1 s to import: a fresh process that only loads a
service by name and calls it must not pay that, so client-side modules take a logger that imports structlog at its
first event.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["LazyLogger", "configure_logging", "get_logger"]


def configure_logging(level: int = logging.INFO) -> None:
    """Configure structlog to write one JSON event per line to stderr."""
    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
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
