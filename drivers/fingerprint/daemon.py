"""station-fingerprintd: one ZFM/R30x-family scanner, its captures and its health.

The scanner is driven from the device worker thread (serial I/O blocks for seconds during
an image upload); the main loop owns the sockets, publishes status and progress, and
answers commands. The lifecycle (``offline`` at once when the port disappears, reopening
and re-identifying with back-off) and the one completion path are ``DeviceDaemon``'s.

An idle scanner is probed with GetEcho every ``PROBE_INTERVAL_S`` so that an unplugged
sensor is reported ``offline`` within 2 s even when nobody captures.

Commands:
- ``capture {position}`` -> ``{position, nfiq2, minutiae, quality_feedback, width, height,
  encoding: gray8, step, resolution_ppi, capture_s, template_format}`` with the payloads
  ``image`` (gray8, 256 x 288) and ``template`` (ISO/IEC 19794-2:2005 minutiae); an
  image without a print is the error ``no_fingerprint`` (retryable);
- ``cancel``; ``state``/``ping`` from the runtime.

The ``capture`` event carries only ``position``, ``nfiq2`` and ``minutiae``: images and
templates are biometric data and go to the requester alone.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Sequence

import numpy as np

from station.biometrics import FingerQuality, assess, warm_up
from drivers.fingerprint.device import Scanner
from drivers.fingerprint import protocol as fp
from drivers.fingerprint.protocol import Instruction, SensorError
from drivers.device_daemon import DeviceDaemon, Outcome
from station.bus import Request
from station.daemon import main_for
from station.envelope import image_fields
from station.errors import ConfigError, DeviceError, StationError
from station.paths import Paths

PROBE_INTERVAL_S = 1.0  # GetEcho on an idle scanner: an unplug shows within 2 s
PROBE_RETRIES = 1  # a silent sensor shows within 1 + 5 x command_timeout_s; one lost reply does not
TEMPLATE_FORMAT = "ISO/IEC 19794-2:2005"
PROGRESS_EVERY_S = 0.1  # upload progress events at most this often (and the last one)


class CaptureCancelled(StationError):
    code = "cancelled"
    retryable = True


class FingerprintDaemon(DeviceDaemon):
    kind = "fingerprint"
    probe_interval_s = PROBE_INTERVAL_S

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        self._cancel = threading.Event()
        self.system_parameters: dict[str, Any] = {}
        self.captures = 0
        self.commands.register("capture", self._cmd_capture,
                               {"position": {"type": "integer", "minimum": 0, "maximum": 15}}, ("position",))
        self.commands.register("cancel", self._cmd_cancel)

    def check_config(self, config: dict[str, Any]) -> None:
        if not config["port"]:
            raise ConfigError([f"fingerprint {self.name}: no serial port configured: set 'port' in "
                               f"{self.paths.etc}/fingerprint@{self.name}.yaml (e.g. /dev/serial/by-id/usb-...)"])

    # -- the device -------------------------------------------------------------------------
    def describe(self) -> str:
        return f"scanner on {self.config['port']}"

    def _make_scanner(self, baud: int | None = None) -> Scanner:
        c = self.config
        return Scanner(c["port"], baud=baud or c["baud"], address=c["address"], password=c["password"],
                       command_timeout_s=c["command_timeout_s"], retries=c["retries"])

    def setup(self) -> None:
        warm_up()  # every capture is assessed; the model loads once, before READY
        super().setup()

    def open_device(self) -> Scanner:
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
            scanner.open()
        if c["upgrade_baud"] and scanner.baud != c["upgrade_baud"]:
            scanner.set_baud(c["upgrade_baud"])
        return scanner

    def device_opened(self, scanner: Scanner) -> None:
        params = scanner.system_parameters
        self.system_parameters = {**dataclasses.asdict(params), "packet_size": params.packet_size,
                                  "baud": scanner.baud}

    def probe_device(self, scanner: Scanner) -> None:
        scanner.echo(retries=PROBE_RETRIES)

    def device_answered(self, error: BaseException) -> bool:
        return isinstance(error, SensorError)  # an answer: the port and the sensor are there

    def job_limit_s(self) -> float:
        # A job stuck far past every timeout means the I/O loop is wedged: let systemd restart us.
        return self.config["finger_wait_s"] + 60 * self.config["command_timeout_s"] * (self.config["retries"] + 1)

    def apply_config(self, new: dict, old: dict) -> None:
        device_keys = ("port", "baud", "address", "password", "command_timeout_s", "retries")
        self.config = new
        if any(new[k] != old[k] for k in device_keys) and self.device is not None:
            self.reopen("device settings changed")

    def status_fields(self) -> dict[str, Any]:
        # ``link``: the serial line's health since the port was opened (retries, timeouts,
        # corrupt replies, bytes dropped while resynchronising): the engineer's first look at a cable.
        link = dataclasses.asdict(self.device.stats) if self.device is not None else None
        return {**super().status_fields(), "port": self.config["port"],
                "system_parameters": self.system_parameters, "captures": self.captures, "link": link}

    def shutdown(self) -> None:
        self._cancel.set()
        super().shutdown()

    # -- commands ---------------------------------------------------------------------------
    def _cmd_cancel(self, request: Request) -> dict:
        self._cancel.set()
        return {"cancelled": True}

    def _cmd_capture(self, request: Request) -> None:
        scanner: Scanner = self.require_device()
        if self.state == "busy":
            raise StationError(f"scanner {self.name} is busy with another capture", code="busy", retryable=True)
        position = request.args.get("position")
        wait_s = min(float(self.config["finger_wait_s"]), max(request.remaining_s - 1.0, 0.5))
        self._cancel.clear()

        last_progress = [0.0]

        def progress(received: int, total: int) -> None:
            # Every packet reports (hundreds a finger); a screen needs a few a second and the
            # last, and each event costs CPU here and in every subscriber while NFIQ 2 runs.
            now = time.monotonic()
            if received < total and now - last_progress[0] < PROGRESS_EVERY_S:
                return
            last_progress[0] = now
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

        def finish(result: tuple[np.ndarray, FingerQuality, float]) -> Outcome:
            image, quality, seconds = result
            self.captures += 1
            self._last_probe = time.monotonic()
            # ``feedback``: NFIQ 2's advice as codes (press harder, dry the finger) that a
            # console translates; figures and codes only, never the image.
            self.events.publish("capture", {"position": position, "nfiq2": quality.nfiq2,
                                            "minutiae": quality.minutiae, "feedback": list(quality.feedback)})
            fields = {"position": position, "nfiq2": quality.nfiq2, "minutiae": quality.minutiae,
                      "quality_feedback": list(quality.feedback), **image_fields(image, "gray8"),
                      "resolution_ppi": 500, "capture_s": round(seconds, 3),
                      "template_format": TEMPLATE_FORMAT}
            return fields, {"image": image.tobytes(), "template": quality.template}

        self.run_job(request, job, finish, detail=f"capturing position {position}")


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(FingerprintDaemon, "station-fingerprintd",
                    "Fingerprint scanner daemon (ZFM/R30x/AS608 UART protocol)", argv)
