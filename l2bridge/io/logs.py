"""Logs that fit journald and grep: one line per event, priorities, repeats counted.

``setup(site, level)`` configures the ``l2bridge`` logger for the process:

  * on a terminal or into a file: ``2026-12-07 14:36:08,123 l2bridge[london] WARNING: ...``;
  * under journald (``$JOURNAL_STREAM`` names our stderr, as systemd sets it for a
    unit's output): no timestamp of our own - journald stamps every line - and
    a syslog priority prefix (``<4>peer berlin is down ...``) so ``journalctl
    -p warning`` and the colours work;
  * a warning or error repeated word for word within ``REPEAT_WINDOW_S`` is
    printed once; the repeats are counted and said in one line (``... repeated
    57 times in 10 s``) when the window ends, another message comes, or the
    site stops.  Info and debug lines are never held back.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

REPEAT_WINDOW_S = 10.0
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}


def under_journald(stream: TextIO) -> bool:
    """True when ``$JOURNAL_STREAM`` ("DEV:INODE") is the file ``stream`` writes to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """``<priority>message``: journald adds the time, the unit and the pid."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " ")
        return f"<{PRIORITY.get(record.levelno, 6)}>{text}"


class RepeatLimiter(logging.Filter):
    """Holds back warnings repeated word for word within a window; counts them.

    A filter on the handler: it says what to print.  The count of what it held
    back is printed through ``emit`` (the handler's own), as a line of its own.
    """

    def __init__(self, emit: logging.Handler, window_s: float = REPEAT_WINDOW_S,
                 clock=time.monotonic) -> None:
        super().__init__()
        self.handler = emit
        self.window_s = window_s
        self.clock = clock
        self._last: tuple[int, str] | None = None
        self._since = 0.0
        self._held = 0
        self._reporting = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self._reporting:
            return True
        key = (record.levelno, record.getMessage())
        now = self.clock()
        if record.levelno < logging.WARNING:
            return True
        if key == self._last and now - self._since < self.window_s:
            self._held += 1
            return False
        self.flush_held(now)
        self._last = key
        self._since = now
        return True

    def flush_held(self, now: float | None = None) -> None:
        """Say how often the last warning was held back, if it was."""
        if not self._held or self._last is None:
            return
        held, (level, text) = self._held, self._last
        self._held = 0
        elapsed = (self.clock() if now is None else now) - self._since
        record = logging.LogRecord("l2bridge", level, __file__, 0,
                                   "the last message repeated %d more times in %.0f s: %s",
                                   (held, elapsed, text), None)
        self._reporting = True
        try:
            self.handler.handle(record)
        finally:
            self._reporting = False


def setup(site: str, level: str, *, worker: int | None = None,
          stream: TextIO | None = None) -> logging.Handler:
    """Configure the ``l2bridge`` logger (module docstring); returns its handler."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    label = site if worker is None else f"{site}/{worker}"
    if under_journald(stream):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s l2bridge[{label}] %(levelname)s: %(message)s"))
    handler.addFilter(RepeatLimiter(handler))
    logger = logging.getLogger("l2bridge")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


def flush(handler: logging.Handler) -> None:
    """Say what the repeat limiter still holds (at shutdown)."""
    for item in handler.filters:
        if isinstance(item, RepeatLimiter):
            item.flush_held()
