"""One device's lifecycle: open, identify, lose, reopen; the same for every device daemon.

A camera, a scanner and a printer each get unplugged, lose power, or sit on a worn cable
that drops every few minutes. What the station does about it is policy, not I/O, and the
same for all three, so it lives here, pure (the caller passes the clock):

- an open that fails is retried after a capped, doubling delay (``BACKOFF_S``);
- a device that was working and is lost is reopened after the first step (a replug is
  usually quick), and the daemon says ``offline`` at once (the caller's job: it knows);
- a device lost ``FLAP_LOSSES`` times within ``FLAP_WINDOW_S`` is *flapping* (a loose
  cable, a failing hub): reopening then continues at the slow end of the back-off, the
  condition is logged once as a warning and shown in the status, so a field engineer sees
  "replace the cable" instead of a device that is mostly online;
- failures are logged loudly once, then quietly, and loudly again when the device is back
  (``station.logs.Flapping``), so an hour unplugged is not 3,600 warnings.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any

from station.logs import Flapping

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 5.0)
FLAP_WINDOW_S = 120.0
FLAP_LOSSES = 3


class Supervisor:
    """When to (re)open a device; the caller opens it and reports what happened."""

    def __init__(self, log: logging.Logger, *, backoff_s: tuple[float, ...] = BACKOFF_S,
                 flap_window_s: float = FLAP_WINDOW_S, flap_losses: int = FLAP_LOSSES):
        self.log = log
        self.backoff_s = backoff_s
        self.flap_window_s = flap_window_s
        self.flap_losses = flap_losses
        self.next_open = 0.0
        self.opening = False
        self.attempt = 0
        self.opens = 0
        self.losses = 0
        self._recent_losses: deque[float] = deque()
        self._flapping_reported = False
        self._failures = Flapping(log)

    def due(self, now: float) -> bool:
        """True when an open should start now (the caller holds no device)."""
        return not self.opening and now >= self.next_open

    def start(self) -> None:
        self.opening = True

    def failed(self, what: str, now: float) -> float:
        """An open failed: log it (once loudly) and return the delay before the next."""
        self.opening = False
        delay = self.backoff_s[min(self.attempt, len(self.backoff_s) - 1)]
        self.attempt += 1
        self.next_open = now + delay
        self._failures.failed(what)
        return delay

    def opened(self, what: str, now: float) -> None:
        self.opening = False
        self.opens += 1
        self.attempt = 0
        self._failures.recovered(what)
        if self._flapping_reported and not self.flapping(now):
            self._flapping_reported = False
            self.log.info("%s: the connection is steady again", what)

    def lost(self, what: str, now: float) -> None:
        """A working device went away: reopen soon, or slowly when it keeps doing this."""
        self.opening = False
        self.losses += 1
        self._recent_losses.append(now)
        if self.flapping(now):
            self.attempt = len(self.backoff_s) - 1
            if not self._flapping_reported:
                self._flapping_reported = True
                self.log.warning("%s: lost %d times in %.0f s; the connection is unstable (check the "
                                 "cable, the hub and the power supply)", what, len(self._recent_losses),
                                 self.flap_window_s)
        else:
            self.attempt = 0
        self.next_open = now + self.backoff_s[self.attempt]
        self._failures.failed(what)

    def reopen_now(self) -> None:
        """A config change or an operator asked for the device to be opened again."""
        self.next_open = 0.0
        self.attempt = 0

    def flapping(self, now: float) -> bool:
        while self._recent_losses and now - self._recent_losses[0] > self.flap_window_s:
            self._recent_losses.popleft()
        return len(self._recent_losses) >= self.flap_losses

    def status(self, now: float) -> dict[str, Any]:
        return {"opens": self.opens, "losses": self.losses, "flapping": self.flapping(now),
                "failing": self._failures.failing}
