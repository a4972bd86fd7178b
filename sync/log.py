"""Logging to stderr, as text or JSON lines, with stable keys.

    setup_logging(verbosity=1, fmt="json")
    log.info("applied", extra={"fields": {"connector": "events", "job-key": key}})

``-q`` shows warnings and errors only, the default adds each cycle's summary, ``-v`` each action,
``-vv`` each Slurm call. Never log secrets: connectors log keys and outcomes, not payloads.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "setup_logging"]

LEVELS = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}) or {})
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{record.levelname} {record.name}: {record.getMessage()}" + (
            f" {tail}" if tail else ""
        )


def setup_logging(verbosity: int, fmt: str = "text") -> None:
    """Configure the ``slurm_sync`` loggers (the core and the built-in connectors) for one
    process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    level = LEVELS.get(max(-1, min(verbosity, 2)), logging.WARNING)
    for name in ("slurm_sync",):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
