"""The emulator's control channel: a demo or a test says what happens at the glass.

``stationctl emulate fingerprint --control PATH`` binds a Unix datagram socket at PATH;
each datagram is one text command (UTF-8, one line):

    finger <applicant_seed> <position> [quality=good|poor]
                            from now on GenImg images this finger (ANSI/NIST position
                            1..10); ``poor`` gives dry, light, partial placements that
                            NFIQ 2 scores under 40
    nofinger <seconds>      GenImg answers "no finger" for that long (finger lifted)
    faults <spec>           replace the line faults (emulator.py: noise=P,drop=P,badsum=P,
                            slow=S,seed=N; ``faults none`` clears them)
    unplug <seconds>        close the pty now, plug a fresh one in after that long

A sender that bound its own address gets one datagram back: ``ok <what changed>`` or
``error <why>; usage: ...``. ``send_command()`` is such a sender, e.g.

    python -c 'from drivers.fingerprint.emulator_control import send_command as s; print(s("/tmp/fp.ctl", "finger 7 3"))'

or without Python: ``socat - UNIX-SENDTO:/tmp/fp.ctl <<< "nofinger 3"`` (no reply).
"""
from __future__ import annotations

import logging
import os
import secrets
import select
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.fingerprint.emulator import SensorEmulator

log = logging.getLogger("fingerprint.emulator.control")

USAGE = ("finger <applicant_seed> <position> [quality=good|poor] | nofinger <seconds> | "
         "faults <spec> | unplug <seconds>")
_MAX_DATAGRAM = 4096
_POLL_S = 0.1


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 86400:
        raise ValueError(f"seconds must be within 0..86400, not {text}")
    return value


def apply_command(emulator: "SensorEmulator", line: str) -> str:
    """Carry out one control command; returns what changed, raises ValueError with the reason."""
    from drivers.fingerprint.emulator import Faults
    from drivers.fingerprint.prints import Quality, SyntheticFinger

    words = line.split()
    if not words:
        raise ValueError("empty command")
    verb, args = words[0].lower(), words[1:]
    try:
        if verb == "finger" and len(args) in (2, 3):
            seed, position = int(args[0]), int(args[1])
            quality = Quality.GOOD
            if len(args) == 3:
                key, _, value = args[2].partition("=")
                if key != "quality":
                    raise ValueError(f"unknown option {args[2]!r}")
                quality = Quality(value)
            if not 1 <= position <= 10:
                raise ValueError(f"finger position {position} is not an ANSI/NIST position 1..10")
            emulator.place_finger(SyntheticFinger(seed, position, quality))
            return f"finger applicant {seed} position {position} quality {quality.value}"
        if verb == "nofinger" and len(args) == 1:
            seconds = _seconds(args[0])
            emulator.no_finger(seconds)
            return f"no finger for {seconds:g} s"
        if verb == "faults" and args:
            spec = " ".join(args)
            faults = Faults.parse("" if spec.lower() == "none" else spec)
            if faults.nofinger or faults.unplug:
                raise ValueError("nofinger and unplug are commands of their own here")
            emulator.set_faults(faults)
            return f"faults {emulator.faults}"
        if verb == "unplug" and len(args) == 1:
            seconds = _seconds(args[0])
            emulator.unplug(seconds)
            return f"unplugged for {seconds:g} s"
    except ValueError as exc:
        raise ValueError(f"{line.strip()!r}: {exc}") from None
    raise ValueError(f"{line.strip()!r}: not a command")


class ControlChannel:
    """A Unix datagram socket at ``path`` whose commands drive ``emulator``, served in a thread."""

    def __init__(self, emulator: "SensorEmulator", path: Path | str):
        self.emulator = emulator
        self.path = Path(path)
        self.commands = 0
        self.refused = 0
        self._stop = threading.Event()
        self.path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        self._thread = threading.Thread(target=self._serve, name="fingerprint-emulator-control", daemon=True)

    def start(self) -> "ControlChannel":
        self._thread.start()
        log.info("control channel on %s", self.path)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._socket.close()
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._socket], [], [], _POLL_S)
            if not ready:
                continue
            try:
                data, sender = self._socket.recvfrom(_MAX_DATAGRAM)
            except OSError as exc:
                log.warning("control channel %s: receive failed: %s", self.path, exc)
                continue
            line = data.decode("utf-8", errors="replace")
            try:
                reply = "ok " + apply_command(self.emulator, line)
                self.commands += 1
                log.info("control: %s", reply)
            except ValueError as exc:
                self.refused += 1
                reply = f"error {exc}; usage: {USAGE}"
                log.warning("control: %s", reply)
            except Exception as exc:  # a bug in a command must not end the channel
                self.refused += 1
                reply = f"error {line.strip()!r} failed: {exc}"
                log.exception("control command %r failed", line.strip())
            if sender:
                try:
                    self._socket.sendto(reply.encode(), sender)
                except OSError as exc:  # the sender left without waiting for its answer
                    log.debug("control reply to %r not sent: %s", sender, exc)


def send_command(path: Path | str, line: str, timeout_s: float = 2.0) -> str:
    """Send one command to a control channel and return its reply (``ok ...``/``error ...``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        # An abstract address (Linux): a reply address without a file to clean up.
        client.bind(f"\0station-fp-control-{os.getpid()}-{secrets.token_hex(4)}")
        client.settimeout(timeout_s)
        client.sendto(line.encode(), str(path))
        try:
            return client.recv(_MAX_DATAGRAM).decode()
        except socket.timeout:
            raise TimeoutError(f"no reply from the emulator control channel {path} within {timeout_s:g} s") from None
