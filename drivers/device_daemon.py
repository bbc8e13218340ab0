"""What every device daemon shares: the device's lifecycle and one way to answer a command.

A device daemon (camera, fingerprint scanner, card printer) subclasses ``DeviceDaemon``
and fills in how to open, probe and close its device; the lifecycle policy is the
``Supervisor``'s. The daemon says ``offline`` the moment the device is lost, reopens with
back-off, and re-identifies the device on replug.

Every command that touches the device is answered through one completion path:

- ``run_job(request, job, finish)``: ``job()`` runs on the device worker thread (serial I/O
  blocks for seconds), ``finish(result)`` in the main loop returns ``(fields, payloads)``;
- ``complete(request, produce)``: the same from the main loop (a camera capture decided
  between two frames).

Whatever raises on the way (in the job, in ``finish``, in ``produce``) reaches the caller
at once as a structured error: a ``StationError`` as itself, anything else as
``internal`` with the traceback in the log. A ``DeviceError`` that means the device is
gone (not one the device answered, see ``device_answered``) also takes the device
offline, and every other request waiting on it fails at once with ``device_error``. No
caller waits out its deadline for an answer that cannot come.
"""
from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Callable, Sequence

from drivers.supervisor import Supervisor
from station.bus import Request
from station.daemon import Daemon
from station.errors import DeviceError, StationError
from station.paths import Paths

Outcome = tuple[dict[str, Any], Mapping[str, Any]]


class DeviceDaemon(Daemon, ABC):
    #: open on the worker thread (a serial handshake blocks); a camera opens in the main loop
    open_in_worker = True
    #: probe an idle device this often, so an unplug shows within 2 s; None: never
    probe_interval_s: float | None = None

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        self.device: Any = None
        self.supervisor = Supervisor(self.log)
        self.worker = self.add_worker(f"{self.kind}-{name}")
        self.in_flight: list[Request] = []
        self._probing = False
        self._last_probe = 0.0

    # -- hooks ------------------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """The device in a few words for status and logs, e.g. ``scanner on /dev/ttyUSB0``."""

    @abstractmethod
    def open_device(self) -> Any:
        """Open and identify the device; raise ``DeviceError`` saying why it is not there."""

    def close_device(self, device: Any) -> None:
        device.close()

    def probe_device(self, device: Any) -> Any:
        """A cheap question to an idle device (worker thread); raise ``DeviceError`` if gone."""

    def device_probed(self, answer: Any) -> None:
        """Main loop: what the probe learned (a printer's sensors)."""

    def device_opened(self, device: Any) -> None:
        """Main loop, after a successful open: keep what the status should show."""

    def device_lost(self, error: StationError) -> None:
        """Main loop, after the device went away and waiting requests were failed."""

    def device_answered(self, error: BaseException) -> bool:
        """True when ``error`` is the device's own answer (it is still there), not a loss."""
        return False

    # -- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        if self.open_in_worker:  # the open takes a while: say so meanwhile
            self.set_state("offline", f"opening {self.describe()}")
        self.supervise(time.monotonic())  # an open in the main loop ends ready, or offline saying why

    def tick(self, now: float) -> None:
        self.supervise(now)

    def supervise(self, now: float) -> None:
        if self.device is None:
            if self.supervisor.due(now):
                self._open()
        elif (self.probe_interval_s is not None and self.state == "ready" and not self._probing
              and not self.in_flight and self.worker.idle and now - self._last_probe >= self.probe_interval_s):
            self._probing = True
            self._last_probe = now
            self.worker.submit(functools.partial(self.probe_device, self.device),
                               functools.partial(self._probed, self.device))

    def _open(self) -> None:
        self.supervisor.start()
        if self.open_in_worker:
            self.worker.submit(self.open_device, self._opened)
            return
        try:
            device, error = self.open_device(), None
        except DeviceError as exc:
            device, error = None, exc
        self._opened(device, error)

    def _opened(self, device: Any, error: BaseException | None) -> None:
        now = time.monotonic()
        if error is not None:
            reason = error.message if isinstance(error, StationError) else str(error)
            self.supervisor.failed(f"{self.describe()} not available: {reason}", now)
            self.set_state("offline", f"{self.describe()}: {reason}")
            return
        self.device = device
        self._last_probe = now
        self.supervisor.opened(f"{self.describe()} identified", now)
        self.device_opened(device)
        self.set_state("ready", self.describe())

    def _probed(self, device: Any, result: Any, error: BaseException | None) -> None:
        self._probing = False
        if device is not self.device:
            return
        if error is None:
            self.device_probed(result)
            return
        if isinstance(error, StationError) and not self.device_answered(error):
            self.lose(error)  # the port went away, or the device stopped answering sensibly
        else:  # the device answered, or a bug: the traceback says which
            self.log.warning("probe of %s failed: %s", self.describe(), error,
                             exc_info=error if not isinstance(error, StationError) else None)

    def lose(self, error: StationError) -> None:
        """The device failed mid-use: say ``offline`` now, fail whoever waits, reopen."""
        self._release()
        self.supervisor.lost(f"{self.describe()} lost: {error.message}", time.monotonic())
        waiting, self.in_flight = self.in_flight, []
        for request in waiting:
            request.fail(DeviceError(f"{self.kind} {self.name} went offline: {error.message}"))
        self.device_lost(error)
        self.set_state("offline", f"{self.describe()}: {error.message}")

    def reopen(self, reason: str) -> None:
        """Close the device and open it again now (its settings changed)."""
        self.log.info("%s: reopening %s", reason, self.describe())
        self._release()
        self.supervisor.reopen_now()
        self.set_state("offline", f"reopening {self.describe()}")

    def _release(self) -> None:
        device, self.device = self.device, None
        if device is None:
            return
        if self.open_in_worker:  # the worker may be mid-command on it: close after that
            self.worker.submit(functools.partial(self._close_quietly, device))
        else:
            self._close_quietly(device)

    def _close_quietly(self, device: Any) -> None:
        try:
            self.close_device(device)
        except Exception as exc:  # closing a dead device may fail; it is gone either way
            self.log.debug("closing %s: %s", self.describe(), exc)

    def healthy(self) -> bool:
        return self.worker.stuck_for() < self.job_limit_s()

    def job_limit_s(self) -> float:
        """A worker job running longer than this means the I/O is wedged (systemd restarts us)."""
        return 300.0

    def shutdown(self) -> None:
        self._release()
        self.worker.stop(timeout_s=1.5)

    def status_fields(self) -> dict[str, Any]:
        return {"device": self.supervisor.status(time.monotonic())}

    # -- the completion path ----------------------------------------------------------------
    def begin(self, request: Request, detail: str) -> None:
        """The request is now the device's: it is answered by ``complete`` or failed on loss."""
        self.in_flight.append(request)
        if detail:
            self.set_state("busy", detail)

    def run_job(self, request: Request, job: Callable[[], Any], finish: Callable[[Any], Outcome],
                detail: str = "") -> None:
        """``job()`` on the worker, then ``finish(result)`` here; either's failure answers."""
        self.begin(request, detail)

        def done(result: Any, error: BaseException | None) -> None:
            def produce() -> Outcome:
                if error is not None:
                    raise error
                return finish(result)
            self.complete(request, produce)

        self.worker.submit(job, done)

    def complete(self, request: Request, produce: Callable[[], Outcome]) -> None:
        """Answer ``request`` with ``produce()``'s fields and named payloads, or its error."""
        try:
            fields, payloads = produce()
        except Exception as exc:
            self.fail(request, exc)
        else:
            self._settle(request)
            request.reply(fields, payloads)
        self._ready_when_idle()

    def fail(self, request: Request, error: BaseException) -> None:
        self._settle(request)
        if isinstance(error, StationError) and self.device_answered(error):
            self.log.warning("%s: %s", request.cmd, error.message)  # a jam, an open cover: for the log
            self._last_probe = 0.0  # and read the device's state again soon, not a period later
        if isinstance(error, StationError):
            request.fail(error)
        else:
            self.log.error("%s failed", request.cmd, exc_info=error)
            request.fail(StationError(f"{self.kind} {self.name}: '{request.cmd}' failed: {error}; this is a "
                                      "bug, see the daemon's log", code="internal"))
        if isinstance(error, DeviceError) and self.device is not None and not self.device_answered(error):
            self.lose(error)
        self._ready_when_idle()

    def _settle(self, request: Request) -> None:
        if request in self.in_flight:
            self.in_flight.remove(request)

    def _ready_when_idle(self) -> None:
        if self.device is not None and not self.in_flight and self.state == "busy":
            self.set_state("ready", self.describe())

    def require_device(self) -> Any:
        """The device for a command, or the ``device_error`` the caller should get."""
        if self.device is None:
            raise DeviceError(f"{self.kind} {self.name} is offline ({self.detail})")
        return self.device
