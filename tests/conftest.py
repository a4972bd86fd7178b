"""Fixtures for every test under tests/."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# The loggers that setup_logging (sync/log.py) configures: the package's own root logger.
_OWN_LOGGERS = ("slurm_sync",)


@pytest.fixture(autouse=True)
def _restore_own_loggers() -> Iterator[None]:
    """Put slurm-sync's own loggers back as they were after each test.

    ``setup_logging`` (sync/log.py, run by every in-process ``main()``) gives them a handler on the
    ``sys.stderr`` of that moment (pytest's capture, closed after the test) and
    ``propagate = False``. Left so, a later test's ``caplog`` sees none of their records with
    pytest 8 (the newest for Python 3.9; pytest 9 also attaches ``caplog`` to non-propagating
    loggers), and each record prints "--- Logging error ---" (a closed stream).
    """
    saved = {}
    for name in _OWN_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
