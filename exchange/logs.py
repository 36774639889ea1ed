"""structlog set up once at each entry point (structlog's performance guide)."""

from __future__ import annotations

import logging
import sys

import msgspec
import structlog

__all__ = ["configure"]


def _dumps(obj: object, **_: object) -> str:
    return msgspec.json.encode(obj, enc_hook=str).decode()


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """JSON lines on stderr (a console renderer when stderr is a terminal and json is None)."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps) if json
        else structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
