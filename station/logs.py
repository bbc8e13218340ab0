"""Logging to stderr in a form journald understands.

Under systemd (``JOURNAL_STREAM`` names our stderr) each line starts with a syslog priority
prefix ``<N>`` and carries no timestamp, since the journal adds its own. By hand, lines are
timestamped for a human. Nothing biometric is ever logged: log ids and counts, not data.
"""
from __future__ import annotations

import logging
import os
import sys
import time

PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_journal(stream=None) -> bool:
    """True when stderr is connected to the journal (systemd sets ``JOURNAL_STREAM=dev:ino``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    stream = stream or sys.stderr
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    dev, _, ino = value.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup(level: str = "INFO", journal: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if journal if journal is not None else under_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Flapping:
    """Report a recurring failure loudly once, then quietly, then loudly when it recovers.

    A scanner unplugged for an hour must not write 3,600 identical warnings.
    """

    def __init__(self, logger: logging.Logger, quiet_interval_s: float = 60.0):
        self.logger = logger
        self.quiet_interval_s = quiet_interval_s
        self.failing: str | None = None
        self.count = 0
        self._last_loud = 0.0

    def failed(self, message: str) -> None:
        now = time.monotonic()
        self.count += 1
        if self.failing != message or now - self._last_loud >= self.quiet_interval_s:
            suffix = f" (failed {self.count} times so far)" if self.count > 1 else ""
            self.logger.warning("%s%s", message, suffix)
            self._last_loud = now
        else:
            self.logger.debug("%s", message)
        self.failing = message

    def recovered(self, message: str) -> None:
        if self.failing is not None:
            self.logger.info("%s (after %d failures)", message, self.count)
        self.failing, self.count = None, 0
