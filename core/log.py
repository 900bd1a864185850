"""structlog setup: readable in a terminal, JSON in production (ROLLBACKCTL_LOG_FORMAT=json).

Workflows log through `workflow.logger` (stdlib); the stdlib bridge renders those lines too.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_SECRET_KEYS = ("token", "password", "routing_key", "webhook", "authorization", "secret")


def _redact(_logger, _name, event_dict):
    for k in list(event_dict):
        if any(s in k.lower() for s in _SECRET_KEYS):
            event_dict[k] = "***"
    return event_dict


def configure(level: str | None = None, fmt: str | None = None) -> None:
    level = (level or os.environ.get("ROLLBACKCTL_LOG_LEVEL", "INFO")).upper()
    fmt = fmt or os.environ.get("ROLLBACKCTL_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs full URLs (webhook URLs are secrets): keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
