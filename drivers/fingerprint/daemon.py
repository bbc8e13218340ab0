"""station-fingerprintd: one ZFM/R30x-family scanner, its captures and its health.

The scanner is driven from one worker thread (serial I/O blocks for seconds during an
image upload); the main loop owns the sockets, publishes status and progress, and answers
commands. When the port disappears the daemon says ``offline`` at once and keeps trying to
reopen and re-identify the sensor with a doubling back-off.

An idle scanner is probed with GetEcho every ``PROBE_INTERVAL_S`` so that an unplugged
sensor is reported ``offline`` within 2 s even when nobody captures.

Commands:
- ``capture {position}`` -> ``{position, nfiq2, minutiae, quality_feedback, width, height,
  encoding: gray8, step, resolution_ppi, capture_s, template_format}`` with payload 0 the
  gray8 image (256 x 288) and payload 1 its ISO/IEC 19794-2:2005 minutiae template; an
  image without a print is the error ``no_fingerprint`` (retryable);
- ``cancel``; ``state``/``ping`` from the runtime.

The ``capture`` event carries only ``position``, ``nfiq2`` and ``minutiae``: images and
templates are biometric data and go to the requester alone.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
import time
from typing import Any, Sequence

import numpy as np

from station.biometrics import FingerQuality, assess, warm_up
from drivers.fingerprint.device import Scanner
from drivers.fingerprint import protocol as fp
from drivers.fingerprint.protocol import Instruction, SensorError
from station.bus import Request
from station.daemon import Daemon, main_for
from station.envelope import image_fields
from station.errors import ConfigError, DeviceError, StationError
from station.logs import Flapping
from station.paths import Paths

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 5.0)
PROBE_INTERVAL_S = 1.0  # GetEcho on an idle scanner: an unplug shows within 2 s
PROBE_RETRIES = 1  # a silent sensor shows within 1 + 5 x command_timeout_s; one lost reply does not
TEMPLATE_FORMAT = "ISO/IEC 19794-2:2005"


class CaptureCancelled(StationError):
    code = "cancelled"
    retryable = True


class FingerprintDaemon(Daemon):
    kind = "fingerprint"

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        if not self.config["port"]:
            raise ConfigError([f"fingerprint {name}: no serial port configured: set 'port' in "
                               f"{paths.etc}/fingerprint@{name}.yaml (e.g. /dev/serial/by-id/usb-...)"])
        self.scanner: Scanner | None = None
        self.worker = self.add_worker(f"fingerprint-{name}")
        self.reopen = Flapping(self.log)
        self._next_open = 0.0
        self._attempt = 0
        self._opening = False
        self._probing = False
        self._last_probe = 0.0
        self._cancel = threading.Event()
        self.system_parameters: dict[str, Any] = {}
        self.captures = 0
        self.commands.register("capture", self._cmd_capture,
                               {"position": {"type": "integer", "minimum": 0, "maximum": 15}}, ("position",))
        self.commands.register("cancel", self._cmd_cancel)

    # -- device lifecycle -------------------------------------------------------------------
    def _make_scanner(self, baud: int | None = None) -> Scanner:
        c = self.config
        return Scanner(c["port"], baud=baud or c["baud"], address=c["address"], password=c["password"],
                       command_timeout_s=c["command_timeout_s"], retries=c["retries"])

    def setup(self) -> None:
        warm_up()  # every capture is assessed; the model loads once, before READY
        self.set_state("offline", f"opening {self.config['port']}")

    def tick(self, now: float) -> None:
        self.worker.drain()
        if self.scanner is None and not self._opening and now >= self._next_open:
            self._opening = True
            self.worker.submit(self._open_job, self._opened)
        elif (self.scanner is not None and self.state == "ready" and not self._probing
              and self.worker.idle and now - self._last_probe >= PROBE_INTERVAL_S):
            self._probing = True
            self._last_probe = now
            self.worker.submit(functools.partial(self.scanner.echo, retries=PROBE_RETRIES),
                               functools.partial(self._probed, self.scanner))

    def _probed(self, scanner: Scanner, result: Any, error: BaseException | None) -> None:
        self._probing = False
        if error is None or scanner is not self.scanner:
            return
        if isinstance(error, StationError) and not isinstance(error, SensorError):
            self._lost(error)  # the port went away or the sensor stopped answering
        else:
            self.log.warning("GetEcho probe of %s failed: %s", self.config["port"], error)

    def _open_job(self) -> tuple[Scanner, fp.SystemParameters]:
        """Identify the sensor, then bring it to the configured packet size and speed.

        A baud upgrade is stored in the sensor's flash, so after a restart the sensor may
        already run at ``upgrade_baud``: if the configured baud gets no answer, try that.
        """
        c = self.config
        scanner = self._make_scanner()
        try:
            params = scanner.open()
        except DeviceError:
            if not c["upgrade_baud"] or c["upgrade_baud"] == c["baud"]:
                raise
            scanner = self._make_scanner(baud=c["upgrade_baud"])
            params = scanner.open()
        if params.packet_size != c["packet_size"]:
            scanner.command(Instruction.SET_SYS_PARA, parameter=fp.SystemParameter.PACKET_SIZE_CODE,
                            value=fp.packet_size_code(c["packet_size"]))
            scanner.close()
            params = scanner.open()
        if c["upgrade_baud"] and scanner.baud != c["upgrade_baud"]:
            scanner.set_baud(c["upgrade_baud"])
            params = scanner.system_parameters
        return scanner, params

    def _opened(self, result: Any, error: BaseException | None) -> None:
        self._opening = False
        if error is not None:
            delay = BACKOFF_S[min(self._attempt, len(BACKOFF_S) - 1)]
            self._attempt += 1
            self._next_open = time.monotonic() + delay
            self.reopen.failed(f"scanner on {self.config['port']} not available: {error}")
            self.set_state("offline", f"{self.config['port']}: {error}")
            return
        self.scanner, params = result
        self._last_probe = time.monotonic()
        self.system_parameters = {**dataclasses.asdict(params), "packet_size": params.packet_size,
                                  "baud": self.scanner.baud}
        self._attempt = 0
        self.reopen.recovered(f"scanner on {self.config['port']} identified")
        self.set_state("ready", f"scanner on {self.config['port']}")

    def _lost(self, error: BaseException) -> None:
        """The port failed mid-use: report offline now and start reopening."""
        if self.scanner is not None:
            try:
                self.scanner.close()
            except Exception as exc:  # closing a dead port may fail; it is gone either way
                self.log.debug("closing the lost port: %s", exc)
            self.scanner = None
        self._next_open = time.monotonic() + BACKOFF_S[0]
        self.set_state("offline", f"{self.config['port']}: {error}")

    def healthy(self) -> bool:
        # A job stuck far past every timeout means the I/O loop is wedged: let systemd restart us.
        limit = self.config["finger_wait_s"] + 60 * self.config["command_timeout_s"] * (self.config["retries"] + 1)
        return self.worker.stuck_for() < limit

    def apply_config(self, new: dict, old: dict) -> None:
        device_keys = ("port", "baud", "address", "password", "command_timeout_s", "retries")
        self.config = new
        if any(new[k] != old[k] for k in device_keys) and self.scanner is not None:
            self.log.info("device settings changed: reopening %s", new["port"])
            scanner, self.scanner = self.scanner, None
            self.worker.submit(scanner.close)
            self._next_open = 0.0
            self.set_state("offline", f"reopening {new['port']}")

    def status_fields(self) -> dict[str, Any]:
        return {"port": self.config["port"], "system_parameters": self.system_parameters,
                "captures": self.captures}

    def shutdown(self) -> None:
        self._cancel.set()
        if self.scanner is not None:
            self.worker.submit(self.scanner.close)
        self.worker.stop(timeout_s=1.5)

    # -- commands ---------------------------------------------------------------------------
    def _cmd_cancel(self, request: Request) -> dict:
        self._cancel.set()
        return {"cancelled": True}

    def _cmd_capture(self, request: Request) -> None:
        if self.scanner is None:
            raise DeviceError(f"scanner {self.name} is offline ({self.detail})")
        if self.state == "busy":
            raise StationError(f"scanner {self.name} is busy with another capture", code="busy", retryable=True)
        position = request.args.get("position")
        scanner = self.scanner
        wait_s = min(float(self.config["finger_wait_s"]), max(request.remaining_s - 1.0, 0.5))
        self._cancel.clear()
        self.set_state("busy", f"capturing position {position}")

        def progress(received: int, total: int) -> None:
            self.worker.post(lambda: self.events.publish(
                "progress", {"position": position, "received": received, "total": total}))

        def job() -> tuple[np.ndarray, FingerQuality, float]:
            started = time.monotonic()
            self.worker.post(lambda: self.events.publish("place_finger", {"position": position}))
            if not scanner.wait_finger(wait_s, cancel=self._cancel.is_set):
                if self._cancel.is_set():
                    raise CaptureCancelled("capture cancelled by the operator")
                raise StationError(f"no finger on the scanner within {wait_s:.0f} s", code="no_finger",
                                   retryable=True)
            image = scanner.upload_image(progress=progress)
            return image, assess(image), time.monotonic() - started

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                if isinstance(error, DeviceError) and not isinstance(error, SensorError):
                    self._lost(error)  # the port went silent or away; a SensorError is an answer
                else:
                    self.set_state("ready", f"scanner on {self.config['port']}")
                request.fail(error if isinstance(error, StationError) else
                             StationError(f"capture failed: {error}", code="internal"))
                return
            image, quality, seconds = result
            self.captures += 1
            self._last_probe = time.monotonic()
            self.set_state("ready", f"scanner on {self.config['port']}")
            self.events.publish("capture", {"position": position, "nfiq2": quality.nfiq2,
                                            "minutiae": quality.minutiae})
            fields = {"position": position, "nfiq2": quality.nfiq2, "minutiae": quality.minutiae,
                      "quality_feedback": list(quality.feedback), **image_fields(image, "gray8"),
                      "resolution_ppi": 500, "capture_s": round(seconds, 3),
                      "template_format": TEMPLATE_FORMAT}
            request.reply(fields, [image.tobytes(), quality.template])

        self.worker.submit(job, done)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(FingerprintDaemon, "station-fingerprintd",
                    "Fingerprint scanner daemon (ZFM/R30x/AS608 UART protocol)", argv)
