"""Recorded serial transcripts: record a driver session through a pty proxy, replay it as
the device side, gpsd-style, so the driver's bytes on the wire are a regression test.

Transcript format, one direction change per line, hex bytes::

    # comment / metadata lines (``# key: value``)
    > EF01FFFFFFFF0100071300000000001B      host -> sensor
    < EF01FFFFFFFF07000300000A              sensor -> host

Run ``python tests/fingerprint/replay.py`` to record the transcripts anew from the emulator.
"""
from __future__ import annotations

import hashlib
import os
import select
import sys
import threading
import tty
from dataclasses import dataclass, field
from pathlib import Path

import serial

HERE = Path(__file__).parent / "transcripts"


@dataclass
class Transcript:
    meta: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, bytes]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Transcript":
        t = cls()
        for line in path.read_text().splitlines():
            if line.startswith("# ") and ": " in line:
                key, value = line[2:].split(": ", 1)
                t.meta[key] = value
            elif line[:2] in ("> ", "< "):
                t.steps.append((line[0], bytes.fromhex(line[2:])))
        return t

    def save(self, path: Path, header: str) -> None:
        lines = [f"# {header}"] + [f"# {k}: {v}" for k, v in self.meta.items()]
        lines += [f"{d} {data.hex().upper()}" for d, data in self.steps]
        path.write_text("\n".join(lines) + "\n")

    def add(self, direction: str, data: bytes) -> None:
        if self.steps and self.steps[-1][0] == direction:
            self.steps[-1] = (direction, self.steps[-1][1] + data)
        else:
            self.steps.append((direction, data))


def _raw_pty() -> tuple[int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    return master, os.ttyname(slave)


class Replayer:
    """The device side of a transcript on a pty: checks every host byte, sends the replies."""

    def __init__(self, transcript: Transcript):
        self.transcript = transcript
        self.master, self.path = _raw_pty()
        self.error: str | None = None
        self.position = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        steps = self.transcript.steps
        while not self._stop.is_set() and self.position < len(steps):
            direction, data = steps[self.position]
            if direction == "<":
                os.write(self.master, data)
                self.position += 1
                continue
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                pending += os.read(self.master, 65536)
            except OSError:
                return
            if pending != data[: len(pending)]:
                self.error = (f"step {self.position}: host sent {pending[:32].hex()}…, "
                              f"transcript expects {data[:32].hex()}…")
                return
            if len(pending) >= len(data):
                pending = pending[len(data):]
                self.position += 1

    @property
    def finished(self) -> bool:
        return self.position == len(self.transcript.steps)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        os.close(self.master)


class Recorder:
    """A pty proxy between the driver and a sensor that logs every byte each way."""

    def __init__(self, device_path: str):
        self.device = serial.Serial(device_path, 57600, timeout=0)
        self.master, self.path = _raw_pty()
        self.transcript = Transcript()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        device_fd = self.device.fileno()
        while not self._stop.is_set():
            ready = select.select([self.master, device_fd], [], [], 0.05)[0]
            if self.master in ready:
                data = os.read(self.master, 65536)
                self.transcript.add(">", data)
                self.device.write(data)
            if device_fd in ready:
                data = os.read(device_fd, 65536)
                self.transcript.add("<", data)
                os.write(self.master, data)

    def close(self) -> Transcript:
        self._stop.set()
        self._thread.join(1)
        os.close(self.master)
        self.device.close()
        return self.transcript


def capture_session(port: str):
    """The session every transcript records: handshake, wait for a finger, upload."""
    from drivers.fingerprint.device import Scanner

    scanner = Scanner(port, command_timeout_s=0.5)
    scanner.open()
    assert scanner.wait_finger(5.0)
    image = scanner.upload_image()
    scanner.close()
    return image


SCENARIOS = {
    "handshake_capture.txt": ("handshake, 'no finger' polls, then a finger and an image upload",
                              "nofinger=0.15"),
    "capture_with_bad_checksums.txt": ("an upload during which the sensor sends corrupt packets; "
                                       "the driver resynchronises and re-requests", "badsum=0.004,seed=11"),
}


def record_all() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from drivers.fingerprint.emulator import SensorEmulator
    from drivers.fingerprint.prints import SyntheticFinger

    HERE.mkdir(exist_ok=True)
    for name, (what, faults) in SCENARIOS.items():
        emulator = SensorEmulator(prints=SyntheticFinger(7, 2), faults=faults)
        recorder = Recorder(emulator.start())
        image = capture_session(recorder.path)
        transcript = recorder.close()
        emulator.stop()
        transcript.meta["image-sha256"] = hashlib.sha256(image.tobytes()).hexdigest()
        transcript.meta["faults"] = faults
        transcript.save(HERE / name, f"{what}; recorded from the emulator by tests/fingerprint/replay.py")
        print(f"{name}: {len(transcript.steps)} steps")


if __name__ == "__main__":
    record_all()
