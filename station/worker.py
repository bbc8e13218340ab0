"""A single background thread for blocking device or peer I/O, answered in the main loop.

ZeroMQ sockets belong to the main loop's thread; slow work (a finger upload, a capture
request to another daemon) runs here, and its outcome is handed back through a queue that
the main loop drains each iteration, so replies and events are always sent from the thread
that owns the sockets. Each outcome also writes to an eventfd (``wake_fd``) that the main
loop polls beside its sockets, so a finished job is answered at once rather than at the
loop's next timeout.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

log = logging.getLogger("station.worker")

Done = Callable[[Any, BaseException | None], None]


class Worker:
    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.busy_since: float | None = None
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any], done: Done | None = None) -> None:
        """Run ``job()`` in the worker; ``done(result, error)`` is called from ``drain()``."""
        self._jobs.put((job, done))

    def post(self, callback: Callable[[], None]) -> None:
        """From the worker: run ``callback`` in the main loop (progress events)."""
        self._results.put((lambda _r, _e: callback(), None, None))
        self._wake()

    def _wake(self) -> None:
        if self._stop.is_set():  # the fd is closed (its number may already be reused)
            return
        try:
            os.eventfd_write(self.wake_fd, 1)
        except OSError:  # closed at stop
            pass

    def drain(self) -> int:
        """Deliver finished jobs' outcomes in the calling (main) thread."""
        try:
            os.eventfd_read(self.wake_fd)
        except (BlockingIOError, OSError):
            pass
        count = 0
        while True:
            try:
                done, result, error = self._results.get_nowait()
            except queue.Empty:
                return count
            count += 1
            if done is None:
                continue
            try:
                done(result, error)
            except Exception:  # a bug in one callback must not stop the main loop
                log.exception("%s: completion callback failed", self.name)

    @property
    def idle(self) -> bool:
        return self.busy_since is None and self._jobs.empty()

    def stuck_for(self, now: float | None = None) -> float:
        """Seconds the current job has been running (0 when idle): the watchdog's measure."""
        started = self.busy_since
        return 0.0 if started is None else (time.monotonic() if now is None else now) - started

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        self._jobs.put(None)
        self._thread.join(timeout_s)
        os.close(self.wake_fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._jobs.get()
            if item is None:
                return
            job, done = item
            self.busy_since = time.monotonic()
            try:
                result, error = job(), None
            except Exception as exc:  # handed to the main loop, which decides what it means
                result, error = None, exc
            finally:
                self.busy_since = None
            self._results.put((done, result, error))
            self._wake()
