"""A UVC camera in MJPG mode, from the device side, on a FIFO: for tests, demos and benchmarks.

``stationctl emulate camera`` creates a FIFO (the device node) and writes a Motion-JPEG
stream into it (``mjpeg.py``: whole JPEG images back to back, as the camera sends them)
of scenes rendered by ``scene.py`` at ``--fps``. The camera daemon reads it with a
``video`` source whose ``path`` is the FIFO; so can OpenCV's FFmpeg backend or ffplay.

Like a camera, it streams only while someone reads: with no reader it waits (polling,
never blocking), and a reader that goes away (EPIPE) is simply waited for again. The
first stdout line is the FIFO's path, printed once frames can flow; it runs until
SIGTERM or SIGINT and exits 0.

Faults and scene changes at run time, for tests and the field engineer's bench:

- ``SIGUSR1`` toggles unplug / replug (``kill -USR1 PID`` from a shell);
- ``--control PATH`` binds the toolkit's control channel (``drivers/emulation.py``, as the
  other emulators do); each datagram is one command, answered (when the sender bound an
  address, as ``send_command()`` does) with ``ok <state>`` or ``error <why>; usage: ...``:

      unplug [S]      close the stream and remove the FIFO: the device node disappears;
                      with S seconds, plug back in after that long
      replug          create the FIFO again and wait for a reader
      stall           keep the stream open but send nothing (a camera that hangs)
      resume          send frames again
      scene K=V ...   change what the camera sees, e.g. ``scene faces=0 roll_deg=15``
      fps N           change the frame rate (0 = as fast as the reader takes frames)
      status          the emulator's state and counters as JSON
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import select
import signal
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import cv2
import yaml

from drivers.camera.scene import Scene
from drivers.emulation import POLL_S, WRITE_STALL_S, ControlChannel, seconds, words, write_all
from drivers.camera.source import EmulatedSource
from station.errors import ConfigError

log = logging.getLogger("camera.emulator")


UNPLUGGED, WAITING, STREAMING, STALLED = "unplugged", "waiting", "streaming", "stalled"
USAGE = "unplug [seconds] | replug | stall | resume | scene KEY=VALUE... | fps N | status"


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["faces=0", "roll_deg=15"]`` -> ``{"faces": 0, "roll_deg": 15}`` (YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. faces=0")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


@dataclass
class EmulatorStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    readers: int = 0            # readers that connected
    readers_lost: int = 0       # readers that went away (EPIPE) or hung


class CameraEmulator:
    """One FIFO, one MJPEG stream, a plug state. ``run()`` is the whole I/O loop."""

    def __init__(self, path: Path, source: EmulatedSource, fps: float = 30.0, jpeg_quality: int = 90,
                 control: Path | None = None):
        self.path = Path(path)
        self.source = source
        self.fps = float(fps)
        self.jpeg_quality = jpeg_quality
        self.state = UNPLUGGED
        self.stats = EmulatorStats()
        self._fd: int | None = None
        self._next_due = 0.0
        self._stop = False
        self._toggle = False
        self._replug_at: float | None = None
        self.control_path = Path(control) if control else None
        self._control: ControlChannel | None = None
        self._encoded: OrderedDict[tuple, bytes] = OrderedDict()  # (scene, noise phase) -> JPEG

    # -- plug state -------------------------------------------------------------------------
    def plug(self) -> None:
        self._replug_at = None
        if self.state != UNPLUGGED:
            return
        try:
            os.mkfifo(self.path, 0o660)
        except FileExistsError:
            # Two writers on one FIFO would interleave their frames into garbage.
            raise ConfigError([f"{self.path}: already exists (another emulator writing to it, or left by one "
                               "that was killed); remove it or choose another --link path"]) from None
        self.state = WAITING
        log.info("plugged in: %s", self.path)

    def unplug(self, replug_after_s: float | None = None) -> None:
        self._replug_at = None if replug_after_s is None else time.monotonic() + replug_after_s
        self._disconnect()
        if self.state == UNPLUGGED:
            return
        self.state = UNPLUGGED
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        log.info("unplugged: %s removed", self.path)

    def stall(self) -> None:
        if self.state in (WAITING, STREAMING):
            self.state = STALLED
            log.info("stalled: stream open, no frames")

    def resume(self) -> None:
        if self.state == STALLED:
            self.state = STREAMING if self._fd is not None else WAITING
            self._next_due = 0.0
            log.info("resumed")

    def set_scene(self, changes: dict[str, Any]) -> dict[str, Any]:
        return self.source.apply({"scene": changes})["scene"]

    def set_fps(self, fps: float) -> None:
        if fps < 0:
            raise ValueError("fps must be >= 0")
        self.fps = float(fps)
        self._next_due = 0.0

    def status(self) -> dict[str, Any]:
        return {"device": str(self.path), "state": self.state, "fps": self.fps,
                "scene": asdict(self.source.params), **asdict(self.stats)}

    # -- the loop ---------------------------------------------------------------------------
    def start(self) -> str:
        """Render the scene once and plug in; the returned path is ready to open."""
        self.source.open()
        self.source.read()      # the first render builds the scene: do it before anyone waits
        if self.control_path is not None:
            self._control = ControlChannel(self.control_path, self.command, USAGE, "camera-emulator")
        self.plug()
        return str(self.path)

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def request_toggle(self, *_: Any) -> None:
        self._toggle = True

    def run(self) -> None:
        while not self._stop:
            self._service()
            if self.state == WAITING:
                self._connect()
            elif self.state == STREAMING:
                self._send_frame()
            else:
                self._wait(POLL_S)

    def close(self) -> None:
        self.unplug()
        if self._control is not None:
            self._control.stop()
            self._control = None

    def _service(self) -> None:
        """Signals and control commands, between frames (and while a write waits)."""
        if self._toggle:
            self._toggle = False
            self.plug() if self.state == UNPLUGGED else self.unplug()
        if self._replug_at is not None and time.monotonic() >= self._replug_at:
            self.plug()
        if self._control is not None:
            self._control.service()

    def command(self, line: str) -> str:
        """Run one control command (``USAGE``); returns the new state, raises ValueError saying why not."""
        name, args = words(line)
        try:
            if name == "unplug" and len(args) <= 1:
                self.unplug(seconds(args[0]) if args else None)
            elif name == "replug":
                self.plug()
            elif name == "stall":
                self.stall()
            elif name == "resume":
                self.resume()
            elif name == "scene":
                return json.dumps(self.set_scene(parse_assignments(args)))
            elif name == "fps" and len(args) == 1:
                self.set_fps(float(args[0]))
            elif name == "status":
                return json.dumps(self.status())
            else:
                raise ValueError("not a command")
        except ConfigError as exc:
            raise ValueError("; ".join(exc.problems)) from None
        return self.state

    def _wait(self, timeout_s: float, writable: int | None = None) -> bool:
        """Sleep up to ``timeout_s``, waking for a control datagram; True if ``writable`` is."""
        readers = [self._control] if self._control is not None else []
        writers = [writable] if writable is not None else []
        if not readers and not writers:
            time.sleep(timeout_s)
            return False
        _, ready, _ = select.select(readers, writers, [], max(0.0, timeout_s))
        return bool(ready)

    def _connect(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.ENOENT):   # ENXIO: nobody reads yet
                log.warning("%s: cannot open for writing: %s", self.path, exc.strerror)
            self._wait(POLL_S)
            return
        self.stats.readers += 1
        self.state = STREAMING
        self._next_due = 0.0
        log.info("reader connected; streaming at %s fps", f"{self.fps:g}" if self.fps else "full")

    def _disconnect(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _send_frame(self) -> None:
        now = time.monotonic()
        if self.fps > 0 and now < self._next_due:
            self._wait(min(self._next_due - now, POLL_S))
            return
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        # A late frame moves the schedule on instead of bursting to catch up, as a sensor does.
        due = self._next_due + period
        self._next_due = due if self._next_due and due >= now else now + period
        if self._write(memoryview(self._next_jpeg())):
            self.stats.frames_sent += 1

    def _next_jpeg(self) -> bytes:
        """The next frame as JPEG. A scene renders the same image every ``NOISE_PERIOD``
        frames, so each is encoded once and sent again from a cache: a real camera encodes
        in its own hardware, and an emulator that spends a sixth of a core on it takes that
        CPU from the station it is testing."""
        key = (astuple(self.source.params), self.source.frame_index % Scene.NOISE_PERIOD)
        jpeg = self._encoded.get(key)
        frame = self.source.read(decode=jpeg is None)
        if jpeg is None:
            ok, buffer = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG frame")
            jpeg = self._encoded[key] = buffer.tobytes()
            if len(self._encoded) > Scene.NOISE_PERIOD:
                self._encoded.popitem(last=False)
        return jpeg

    def _write(self, view: memoryview) -> bool:
        """Write one whole image; False if the reader went away or a command intervened."""
        def between_writes(fd: int) -> bool:
            self._wait(POLL_S, writable=fd)
            self._service()
            return not (self._stop or self.state == UNPLUGGED)  # a stall waits for the frame

        try:
            written = write_all(self._fd, view, between_writes)
        except BrokenPipeError:
            self._reader_lost("reader went away")
            return False
        self.stats.bytes_sent += written
        if written == len(view):
            return True
        if not (self._stop or self.state == UNPLUGGED):
            self._reader_lost(f"reader took nothing for {WRITE_STALL_S:g} s")
        return False     # cut off mid-frame, as a pulled cable does

    def _reader_lost(self, why: str) -> None:
        log.info("%s; waiting for the next reader", why)
        self.stats.readers_lost += 1
        self._disconnect()
        self.state = WAITING


def main(argv: list[str] | None = None) -> int:
    """``stationctl emulate camera``: print the FIFO path first, then stream until SIGTERM
    or SIGINT. The first stdout line is the contract scripts and tests read."""
    parser = argparse.ArgumentParser(prog="stationctl emulate camera", description=__doc__.split("\n")[0])
    parser.add_argument("--fps", type=float, default=30.0, help="frames a second (0 = as fast as read; default 30)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--scene", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="what the camera sees, e.g. --scene faces=0 roll_deg=15 (drivers/camera/scene.py)")
    parser.add_argument("--link", type=Path, default=None,
                        help="create the FIFO here (default: a fresh temporary directory)")
    parser.add_argument("--control", type=Path, default=None,
                        help="bind a Unix datagram socket here for unplug/replug/stall/resume/scene/fps/status")
    parser.add_argument("--jpeg-quality", type=int, default=90, choices=range(1, 101), metavar="1..100")
    parser.add_argument("--seed", type=int, default=0, help="sensor noise and clutter seed")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.fps < 0 or args.width < 64 or args.height < 64:
        parser.error("--fps must be >= 0, --width and --height at least 64")
    try:
        scene = parse_assignments(args.scene)
        source = EmulatedSource(args.width, args.height, fps=0, scene=scene, seed=args.seed)
    except (ValueError, ConfigError) as exc:
        parser.error("; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc))

    from station import logs

    logs.setup(args.log_level)
    tmpdir = None
    if args.link is None:
        tmpdir = tempfile.mkdtemp(prefix="camemu-")
        args.link = Path(tmpdir) / "video.mjpeg"
    emulator = CameraEmulator(args.link, source, fps=args.fps, jpeg_quality=args.jpeg_quality,
                              control=args.control)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, emulator.request_stop)
    signal.signal(signal.SIGUSR1, emulator.request_toggle)
    try:
        try:
            print(emulator.start(), flush=True)
        except (ConfigError, OSError) as exc:
            message = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
            print(f"stationctl emulate camera: {message}", file=sys.stderr)
            return 1
        emulator.run()
    finally:
        emulator.close()
        if tmpdir is not None:
            os.rmdir(tmpdir)
        log.info("stopped: %s", emulator.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
