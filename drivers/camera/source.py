"""Where frames come from: a V4L2 camera, a recording, an MJPEG stream on a FIFO, or the
emulated scene.

One small interface, ``FrameSource`` (open / read / close / apply), so the daemon's loop,
the benchmark and the tests never know which one they hold. Every failure to get a frame
is a ``DeviceError`` naming the device, so the daemon can report ``offline`` and retry
with backoff; nothing here retries or sleeps on its own except to pace emulated frames.
"""
from __future__ import annotations

import math
import os
import select
import stat
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from station.errors import ConfigError, DeviceError

from .mjpeg import MAX_IMAGE_BYTES, MjpegSplitter
from .scene import Scene, SceneParams

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray | None  # BGR uint8; None when read with decode=False
    t_acq_ns: int       # time.monotonic_ns() when the frame was acquired
    index: int          # 0, 1, 2 ... since open()


class FrameSource(ABC):
    """A camera-like thing. ``device`` names it in every error and status message."""

    device: str = ""

    @abstractmethod
    def open(self) -> None:
        """Start delivering frames; raises DeviceError when the device is absent."""

    @abstractmethod
    def read(self, decode: bool = True) -> Frame:
        """The next frame; raises DeviceError when none comes (unplugged, stalled).

        ``decode=False`` takes the frame off the camera (so the next one is fresh and the
        stream's health is known) without decoding it into pixels: most frames between
        captures are looked at by nobody, and decoding them would take CPU the scanner
        needs."""

    @abstractmethod
    def decode(self, frame: Frame) -> Frame:
        """``frame``, read with ``decode=False``, with its pixels: possible until the next
        ``read`` (a capture asked for while the frame was on its way is served with it)."""

    @abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice."""

    @abstractmethod
    def apply(self, settings: dict) -> dict:
        """Apply what can change live; return what the device actually accepted."""

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fourcc_text(code: float) -> str:
    n = int(code)
    return "".join(chr((n >> (8 * i)) & 0xFF) for i in range(4)).strip("\0") if n > 0 else ""


class V4L2Source(FrameSource):
    """A UVC/V4L2 camera through OpenCV, by ``/dev/v4l/by-id/...`` path or index.

    By-id paths survive replugging into another USB port, which is why the config names
    the camera that way. Exposure, gain and white balance are passed in the driver's own
    units (OpenCV's V4L2 backend does not rescale them): exposure in 100 µs steps
    (``exposure_absolute``), white balance in kelvin; ``None`` means automatic.

    An unplugged camera makes OpenCV's read wait out its select() timeout before failing:
    ``read_timeout_s`` is asked for through ``CAP_PROP_READ_TIMEOUT_MSEC`` where the backend
    takes it, and the service unit should also set ``OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT=1``
    (seconds; OpenCV's default is 10), so the daemon can report offline within 2 s.
    """

    SETTINGS = ("fourcc", "width", "height", "fps", "exposure", "gain", "white_balance")

    def __init__(self, device: str | int, width: int = 1280, height: int = 720, fps: float = 30,
                 fourcc: str = "MJPG", exposure: float | None = None, gain: float | None = None,
                 white_balance: float | None = None, read_timeout_s: float = 1.0,
                 capture_factory: Callable[..., cv2.VideoCapture] = cv2.VideoCapture):
        self.device = str(device)
        self.read_timeout_s = read_timeout_s
        self._settings = {"fourcc": fourcc, "width": width, "height": height, "fps": fps,
                          "exposure": exposure, "gain": gain, "white_balance": white_balance}
        self._factory = capture_factory
        self._cap = None
        self._index = 0
        self.accepted: dict = {}

    def open(self) -> None:
        self.close()
        path = f"/dev/video{self.device}" if self.device.isdigit() else self.device
        if not os.path.exists(path):
            raise DeviceError(f"{self.device}: no such camera; is it plugged in? (ls /dev/v4l/by-id/)")
        target: str | int = int(self.device) if self.device.isdigit() else os.path.realpath(path)
        cap = self._factory(target, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"{self.device}: camera present but cannot be opened (busy, or no permission "
                              "on the video group?)")
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_s * 1000)   # ignored where unsupported
        self._cap = cap
        self._index = 0
        self.accepted = self.apply(self._settings)

    def read(self, decode: bool = True) -> Frame:
        if self._cap is None:
            raise DeviceError(f"{self.device}: camera is not open")
        ok = self._cap.grab()
        t = time.monotonic_ns()
        image = None
        if ok and decode:
            ok, image = self._cap.retrieve()
            ok = ok and image is not None
        if not ok:
            raise DeviceError(f"{self.device}: no frame from the camera (unplugged or stalled)")
        frame = Frame(image, t, self._index)
        self._index += 1
        return frame

    def decode(self, frame: Frame) -> Frame:
        if frame.image is not None:
            return frame
        if self._cap is None or frame.index != self._index - 1:
            raise DeviceError(f"{self.device}: frame {frame.index} is no longer on the camera")
        ok, image = self._cap.retrieve()  # the grabbed frame, until the next grab
        if not ok or image is None:
            raise DeviceError(f"{self.device}: no frame from the camera (unplugged or stalled)")
        return replace(frame, image=image)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def apply(self, settings: dict) -> dict:
        """Format first (the driver restarts the stream for it), then the image controls.

        Keys that are not live camera settings (``kind``, ``device``, ...) are left alone,
        so the daemon can hand over the whole ``source`` section on a reload; changing the
        device itself means closing this source and opening another.
        """
        settings = {k: v for k, v in settings.items() if k in self.SETTINGS}
        self._settings.update(settings)
        cap = self._cap
        if cap is None:
            return {}
        s = self._settings
        if "fourcc" in settings and s["fourcc"]:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*s["fourcc"][:4].ljust(4)))
        if "width" in settings:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, s["width"])
        if "height" in settings:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s["height"])
        if "fps" in settings:
            cap.set(cv2.CAP_PROP_FPS, s["fps"])
        if "exposure" in settings:
            if s["exposure"] is None:
                cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 3)      # V4L2_EXPOSURE_APERTURE_PRIORITY
            else:
                cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)      # V4L2_EXPOSURE_MANUAL
                cap.set(cv2.CAP_PROP_EXPOSURE, s["exposure"])
        if "gain" in settings and s["gain"] is not None:
            cap.set(cv2.CAP_PROP_GAIN, s["gain"])
        if "white_balance" in settings:
            if s["white_balance"] is None:
                cap.set(cv2.CAP_PROP_AUTO_WB, 1)
            else:
                cap.set(cv2.CAP_PROP_AUTO_WB, 0)
                cap.set(cv2.CAP_PROP_WB_TEMPERATURE, s["white_balance"])
        manual_exposure = cap.get(cv2.CAP_PROP_AUTO_EXPOSURE) == 1
        manual_wb = cap.get(cv2.CAP_PROP_AUTO_WB) == 0
        self.accepted = {
            "fourcc": _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
            "exposure": float(cap.get(cv2.CAP_PROP_EXPOSURE)) if manual_exposure else None,
            "gain": float(cap.get(cv2.CAP_PROP_GAIN)),
            "white_balance": float(cap.get(cv2.CAP_PROP_WB_TEMPERATURE)) if manual_wb else None,
        }
        return dict(self.accepted)


class VideoSource(FrameSource):
    """A recorded video file, or a folder of still images in name order; loops by default.

    ``fps`` paces delivery like a camera would (0 = as fast as read); field engineers
    replay a recorded session through the daemon with it.
    """

    def __init__(self, path: str, loop: bool = True, fps: float = 0.0,
                 clock: Callable[[], int] = time.monotonic_ns, sleep: Callable[[float], None] = time.sleep):
        self.device = str(path)
        self.loop = loop
        self._pacer = _Pacer(fps, clock, sleep)
        self._files: list[Path] = []
        self._cap = None
        self._index = 0
        self._position = 0
        self._last: tuple[int, np.ndarray | None] = (-1, None)

    def open(self) -> None:
        self.close()
        path = Path(self.device)
        if path.is_dir():
            self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise DeviceError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        elif path.is_file():
            cap = cv2.VideoCapture(str(path))
            if not cap.isOpened():
                cap.release()
                raise DeviceError(f"{path}: not a video OpenCV can read")
            self._cap = cap
        else:
            raise DeviceError(f"{path}: no such video file, image folder or stream FIFO")
        self._index = self._position = 0
        self._pacer.restart()

    def read(self, decode: bool = True) -> Frame:
        self._pacer.wait(self._index)
        image = self._next_image()  # a file's frames are decoded either way: it stands in for a camera
        frame = Frame(image if decode else None, time.monotonic_ns(), self._index)
        self._last = (self._index, image)
        self._index += 1
        return frame

    def decode(self, frame: Frame) -> Frame:
        if frame.image is not None:
            return frame
        index, image = self._last
        if frame.index != index:
            raise DeviceError(f"{self.device}: frame {frame.index} is no longer on the camera")
        return replace(frame, image=image)

    def _next_image(self) -> np.ndarray:
        if self._files:
            if self._position >= len(self._files):
                if not self.loop:
                    raise DeviceError(f"{self.device}: end of the image folder")
                self._position = 0
            path = self._files[self._position]
            self._position += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DeviceError(f"{path}: not an image OpenCV can read")
            return image
        if self._cap is None:
            raise DeviceError(f"{self.device}: source is not open")
        ok, image = self._cap.read()
        if not ok and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        if not ok or image is None:
            raise DeviceError(f"{self.device}: no more frames in the video")
        return image

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._files = []

    def apply(self, settings: dict) -> dict:
        """Only the pace can change; size and format are the recording's."""
        if "fps" in settings:
            self._pacer.set_fps(settings["fps"])
        return {"fps": self._pacer.fps}


class StreamSource(FrameSource):
    """A Motion-JPEG byte stream on a FIFO: ``stationctl emulate camera``, or any tool that
    pipes a camera's MJPG output (``ffmpeg -f v4l2 -input_format mjpeg ... -c copy -f mjpeg``).

    Read here rather than through OpenCV's FFmpeg backend because the FIFO must never
    block the daemon: FFmpeg opens it blocking (which waits forever for a writer) and reads
    it blocking (forever, if the writer stalls). This opens the read end non-blocking and
    waits with poll(), so every call returns within ``read_timeout_s``: a FIFO with no
    writer, a writer that stopped sending, and a writer that went away (EOF) are each a
    ``DeviceError``. The newest complete image is delivered and older ones dropped, as a
    camera's driver does for a slow reader.
    """

    def __init__(self, path: str, read_timeout_s: float = 1.0, max_image_bytes: int = MAX_IMAGE_BYTES):
        self.device = str(path)
        self.read_timeout_s = read_timeout_s
        self.max_image_bytes = max_image_bytes
        self.dropped = 0            # complete images superseded before they were read
        self.undecodable = 0        # images OpenCV could not decode
        self._fd: int | None = None
        self._poll = select.poll()
        self._splitter = MjpegSplitter(max_image_bytes)
        self._index = 0
        self._size: tuple[int, int] | None = None
        self._first: np.ndarray | None = None
        self._undecoded: bytes | np.ndarray | None = None  # the last frame read, for ``decode``

    def open(self) -> None:
        self.close()
        try:
            if not stat.S_ISFIFO(os.stat(self.device).st_mode):
                raise DeviceError(f"{self.device}: not a FIFO; a video file is read by the video source")
            self._fd = os.open(self.device, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceError(f"{self.device}: no such stream; is the camera emulator running?") from None
        except OSError as exc:
            raise DeviceError(f"{self.device}: cannot open the stream: {exc.strerror}") from None
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._splitter = MjpegSplitter(self.max_image_bytes)
        self._index = 0
        try:
            # Until a writer has connected, poll() reports nothing and read() would return
            # b"" exactly as at EOF: so the first frame is awaited here, not in read().
            self._first = self._next_image(f"{self.device}: no frame within {self.read_timeout_s:g} s of "
                                           "opening (no writer on the FIFO, or it stalled)")
        except DeviceError:
            self.close()
            raise

    def read(self, decode: bool = True) -> Frame:
        if self._fd is None:
            raise DeviceError(f"{self.device}: stream is not open")
        image, self._first = self._first, None
        if image is None:
            image = self._next_image(f"{self.device}: no frame for {self.read_timeout_s:g} s (writer stalled)",
                                     decode)
        else:
            self._undecoded = image  # decoded at open(), kept for ``decode``
        frame = Frame(image if decode else None, time.monotonic_ns(), self._index)
        self._index += 1
        return frame

    def decode(self, frame: Frame) -> Frame:
        if frame.image is not None:
            return frame
        if frame.index != self._index - 1 or self._undecoded is None:
            raise DeviceError(f"{self.device}: frame {frame.index} is no longer in the stream")
        if isinstance(self._undecoded, np.ndarray):
            return replace(frame, image=self._undecoded)
        image = cv2.imdecode(np.frombuffer(self._undecoded, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            self.undecodable += 1
            raise DeviceError(f"{self.device}: frame {frame.index} is not a decodable JPEG")
        return replace(frame, image=image)

    def _next_image(self, timeout_message: str, decode: bool = True) -> np.ndarray | None:
        deadline = time.monotonic() + self.read_timeout_s
        while True:
            # poll() before every read: a FIFO that never had a writer reads as b"" (like EOF)
            # but never polls readable, so waiting this way tells "no writer yet" from "gone".
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or not self._poll.poll(max(1, math.ceil(remaining_ms))):
                raise DeviceError(timeout_message)
            jpegs = self._drain()
            self._undecoded = None
            if jpegs and not decode:
                self.dropped += len(jpegs) - 1
                self._undecoded = jpegs[-1]  # for ``decode``, until the next read
                return None
            for jpeg in reversed(jpegs):
                image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                if image is not None:
                    self.dropped += len(jpegs) - 1
                    self._size = (image.shape[1], image.shape[0])
                    return image
                self.undecodable += 1

    def _drain(self) -> list[bytes]:
        """Everything the pipe holds now, split into images; EOF is a DeviceError."""
        jpegs: list[bytes] = []
        while True:
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                return jpegs
            except OSError as exc:
                raise DeviceError(f"{self.device}: read failed: {exc.strerror}") from None
            if not data:
                if jpegs:
                    return jpegs    # deliver the last frames; EOF shows on the next read
                raise DeviceError(f"{self.device}: the stream ended (camera unplugged or emulator stopped)")
            jpegs += self._splitter.feed(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._first = None

    def apply(self, settings: dict) -> dict:
        """Nothing can be set on a stream from the reading side; report what it carries."""
        if self._size is None:
            return {}
        return {"width": self._size[0], "height": self._size[1]}


class EmulatedSource(FrameSource):
    """The emulated camera: frames rendered from ``scene.Scene``, paced to ``fps``.

    ``apply({"scene": {...}})`` changes what the camera sees between frames, which is how
    tests and the demo walk an applicant through "too far", "rolled", "ready".
    """

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30.0,
                 scene: SceneParams | dict | None = None, seed: int = 0, noise_sigma: float = 2.0,
                 clock: Callable[[], int] = time.monotonic_ns, sleep: Callable[[float], None] = time.sleep):
        self.device = "emulated"
        self.width, self.height = int(width), int(height)
        self.seed, self.noise_sigma = seed, noise_sigma
        self.params = scene if isinstance(scene, SceneParams) else SceneParams.from_config(scene or {})
        self._pacer = _Pacer(fps, clock, sleep)
        self._clock = clock
        self._scene: Scene | None = None
        self._index = 0

    def open(self) -> None:
        if self._scene is None or (self._scene.width, self._scene.height) != (self.width, self.height):
            self._scene = Scene(self.width, self.height, seed=self.seed, noise_sigma=self.noise_sigma)
        self._index = 0
        self._pacer.restart()

    def read(self, decode: bool = True) -> Frame:
        if self._scene is None:
            raise DeviceError("emulated: camera is not open")
        self._pacer.wait(self._index)
        image = self._scene.render(self.params, self._index) if decode else None
        frame = Frame(image, self._clock(), self._index)
        self._index += 1
        return frame

    def decode(self, frame: Frame) -> Frame:
        if frame.image is not None:
            return frame
        if self._scene is None or frame.index != self._index - 1:
            raise DeviceError(f"emulated: frame {frame.index} is no longer on the camera")
        return replace(frame, image=self._scene.render(self.params, frame.index))

    @property
    def frame_index(self) -> int:
        """The index of the frame the next ``read`` renders."""
        return self._index

    def close(self) -> None:
        pass  # the rendered scene is kept: reopening after a config reload stays instant

    def apply(self, settings: dict) -> dict:
        if "scene" in settings:
            self.params = SceneParams.from_config({**asdict(self.params), **settings["scene"]})
        if "fps" in settings:
            self._pacer.set_fps(settings["fps"])
        if "width" in settings or "height" in settings:
            self.width = int(settings.get("width", self.width))
            self.height = int(settings.get("height", self.height))
            if self._scene is not None:
                self.open()
        # Exposure, gain and white balance are not emulated; the scene's brightness is.
        return {"width": self.width, "height": self.height, "fps": self._pacer.fps,
                "exposure": None, "gain": None, "white_balance": None,
                "scene": asdict(self.params)}


class _Pacer:
    """Frame i is due at start + i / fps; a late reader is not made up for with a burst."""

    def __init__(self, fps: float, clock: Callable[[], int], sleep: Callable[[float], None]):
        self.fps = float(fps)
        self._clock, self._sleep = clock, sleep
        self._start = clock()
        self._offset = 0

    def restart(self) -> None:
        self._start, self._offset = self._clock(), 0

    def set_fps(self, fps: float) -> None:
        self.fps = float(fps)
        self._start, self._offset = self._clock(), None

    def wait(self, index: int) -> None:
        if self.fps <= 0:
            return
        if self._offset is None:
            self._offset = index
        period_ns = 1e9 / self.fps
        due = self._start + (index - self._offset) * period_ns
        now = self._clock()
        if now < due:
            self._sleep((due - now) / 1e9)
        elif now - due > period_ns:
            self._start, self._offset = now, index   # fell behind: restart the schedule


def make_source(cfg: dict) -> FrameSource:
    """The source the ``source`` config section describes, not yet opened."""
    kind = cfg.get("kind", "emulated")
    if kind == "emulated":
        return EmulatedSource(cfg.get("width", 1280), cfg.get("height", 720), cfg.get("fps", 30),
                              scene=cfg.get("scene"), seed=cfg.get("seed", 0),
                              noise_sigma=cfg.get("noise_sigma", 2.0))
    if kind == "v4l2":
        if cfg.get("device") in (None, ""):
            raise ConfigError(["source.device: required for a v4l2 camera (a /dev/v4l/by-id/ path or an index)"])
        return V4L2Source(cfg["device"], cfg.get("width", 1280), cfg.get("height", 720), cfg.get("fps", 30),
                          cfg.get("fourcc", "MJPG"), cfg.get("exposure"), cfg.get("gain"), cfg.get("white_balance"))
    if kind in ("video", "folder"):
        if not cfg.get("path"):
            raise ConfigError([f"source.path: required for a {kind} source"])
        if kind == "video" and _is_fifo(cfg["path"]):
            return StreamSource(cfg["path"])
        return VideoSource(cfg["path"], loop=cfg.get("loop", True), fps=cfg.get("fps", 0.0))
    raise ConfigError([f"source.kind: {kind!r} is not one of emulated, v4l2, video, folder"])


def _is_fifo(path: str) -> bool:
    """A video path that is a FIFO carries a live MJPEG stream (decided at each open: the
    FIFO may appear only once its writer starts)."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def open_source(cfg: dict) -> FrameSource:
    """``make_source`` and open it; raises DeviceError naming the device if that fails."""
    source = make_source(cfg)
    source.open()
    return source
