"""One log format for every step, wherever it runs.

Steps log through ``logging.getLogger(__name__)`` (the ``llmops_tasks`` tree). The CLI calls
:func:`setup`, which writes those lines to stderr with the format below: a pod's or a subprocess's
stderr is the Airflow task log. Inside an Airflow task (``run_step``) Airflow's own handlers take
them through the root logger instead, so nothing is set up there. ``$LLMOPS_LOG_LEVEL`` sets the
level (default INFO).
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGGER = "llmops_tasks"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (a test, or a caller, may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup(level: str | None = None) -> logging.Logger:
    """Send the ``llmops_tasks`` loggers' lines to stderr, once per process."""
    logger = logging.getLogger(LOGGER)
    name = (level or os.environ.get("LLMOPS_LOG_LEVEL") or "INFO").upper()
    logger.setLevel(getattr(logging, name, logging.INFO))
    if not any(getattr(h, "_llmops", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._llmops = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # the root logger may have a handler of its own (a library's): no double lines
    return logger
