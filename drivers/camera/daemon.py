"""station-camerad: one camera, face quality on every frame, auto-capture of the portrait.

Frames are read in the main loop (the source's read paces it to the camera's frame rate),
analysed, and published on the frame stream ``<name>.frames`` (a small HWM: a slow viewer
loses frames, never memory): a downscaled JPEG ``preview`` at the preview rate, each with
its quality report, and full-resolution ``frame`` messages when configured. Status and
captures go on the event stream ``<name>.pub``.

Every source's read returns within about a second even when the camera hangs (V4L2 select
timeout, the stream source's poll), so reading in the main loop delays a command by at
most that, and only while the camera is failing; a grab thread would buy nothing more.
A read that fails reports ``offline`` at once and reopens with back-off (``DeviceDaemon``).

Commands: ``capture {mode: icao|exception, timeout_s}`` -> token portrait (payloads
``portrait.jpg``, the record JPEG, and ``portrait-chip.jp2``, the chip encoding) and its quality report, once every check held for N frames, or
the best frame flagged ``forced`` at the timeout; ``frame`` -> the next full-resolution
bgr8 frame; ``state``/``ping`` from the runtime.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Sequence

import cv2

from drivers.camera.capture import AutoCapture
from drivers.camera.detector import make_detector
from drivers.camera.quality import FaceAnalyzer
from drivers.camera.source import FrameSource, make_source
from drivers.camera.portrait import prepare_jpeg2000, token_portrait
from drivers.device_daemon import DeviceDaemon, Outcome
from station.bus import Request
from station.daemon import main_for
from station.envelope import image_fields
from station.errors import DeviceError, StationError
from station.paths import Paths

# Source settings a running camera takes without being reopened; any other change of the
# source section (device, path, kind, format) reopens it.
LIVE_SOURCE_KEYS = ("exposure", "gain", "white_balance", "scene")
FILE_SUFFIX = {"jpeg2000": "jp2", "jpeg": "jpg"}    # chip image format -> record file name suffix


@dataclass
class PendingCapture:
    request: Request
    auto: AutoCapture


class CameraDaemon(DeviceDaemon):
    kind = "camera"
    open_in_worker = False  # opening a V4L2 device or a stream is quick, and frames are read here

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        self.frames = self.add_publisher(paths.frames(name), hwm=self.config["publish"]["frame_hwm"],
                                         heartbeat_event="frames.heartbeat", watch_subscribers=True)
        self.analyzer = self._analyzer(self.config)
        self._next_preview = 0.0
        self.pending: PendingCapture | None = None
        self.frame_requests: list[Request] = []
        self.frames_read = 0
        self.frames_analysed = 0
        self.accepted: dict[str, Any] = {}
        self.commands.register("capture", self._cmd_capture, {
            "mode": {"enum": ["icao", "exception"]}, "timeout_s": {"type": "number", "minimum": 0.5, "maximum": 600}})
        self.commands.register("frame", self._cmd_frame)
        self.commands.register("cancel", self._cmd_cancel)

    @staticmethod
    def _analyzer(config: dict) -> FaceAnalyzer:
        detector = make_detector(config["detector"], stream_window=config["capture"]["consecutive_frames"])
        return FaceAnalyzer(config["quality"], detector)

    @property
    def source(self) -> FrameSource | None:
        return self.device

    # -- the device -------------------------------------------------------------------------
    def describe(self) -> str:
        source = self.config["source"]
        where = source.get("path") if source["kind"] in ("video", "folder") else source.get("device")
        return f"{source['kind']} camera {where or ''}".strip()

    def open_device(self) -> FrameSource:
        source = make_source(self.config["source"])
        source.open()
        try:
            self.accepted = source.apply({k: self.config["source"][k] for k in LIVE_SOURCE_KEYS
                                          if k in self.config["source"]})
        except DeviceError:
            source.close()
            raise
        return source

    def device_lost(self, error: StationError) -> None:
        self.pending = None  # failed with every other waiting request
        self.frame_requests.clear()

    def heartbeat_s(self) -> float:
        return float(self.config["publish"]["heartbeat_s"])

    def poll_timeout_ms(self) -> int:
        return 0 if self.source is not None else 50

    def apply_config(self, new: dict, old: dict) -> None:
        self.config = new
        self.analyzer = self._analyzer(new)
        live_only = {k: v for k, v in new["source"].items() if k not in LIVE_SOURCE_KEYS} == \
                    {k: v for k, v in old["source"].items() if k not in LIVE_SOURCE_KEYS}
        if self.source is not None and live_only:
            self.accepted = self.source.apply({k: new["source"][k] for k in LIVE_SOURCE_KEYS})
            self.log.info("camera settings applied live; device accepted %s", self.accepted)
        elif self.source is not None:
            self.reopen("camera source changed")

    def status_fields(self) -> dict[str, Any]:
        return {**super().status_fields(), "source": self.describe(), "accepted": self.accepted,
                "frames_read": self.frames_read, "frames_analysed": self.frames_analysed,
                "opens": self.supervisor.opens}

    # -- the frame loop ---------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.source is None:
            self.supervise(now)
            return
        # Between captures a frame is analysed only at the preview rate and only while
        # someone watches the preview; one nobody needs is taken off the camera undecoded.
        # The CPU is the scanner's too (NFIQ 2 runs while the officer takes fingers).
        full_frames = self.config["publish"]["full_frames"] and self.frames.subscribed("frame")
        needed = bool(self.frame_requests) or full_frames or self.pending is not None
        source = self.source
        try:
            frame = source.read(decode=needed)
        except DeviceError as exc:
            self.lose(exc)
            return
        # Whether this frame is a preview is decided by its own time, once it is here: the
        # tick's start comes after the last frame's analysis and before the read, a frame
        # early, and gave previews one and three frames apart instead of two.
        preview_due = self.frames.subscribed("preview") and self._preview_due(frame.t_acq_ns / 1e9)
        if not needed:
            # A capture asked for while this frame was on its way starts with it: waiting
            # for the next would cost the officer a frame time.
            if self.serve_waiting_commands() and self.source is not source:
                return  # a command closed or replaced the camera meanwhile
            if self.pending is not None or preview_due:
                try:
                    frame, needed = source.decode(frame), True
                except DeviceError as exc:  # a corrupt frame: the next one serves
                    self.log.debug("frame %d not decoded: %s", frame.index, exc.message)
        self.frames_read += 1
        if not needed:
            return
        if self.frame_requests:
            self._reply_frame(frame)
        if full_frames:
            self.frames.publish("frame", {**image_fields(frame.image, "bgr8"), "index": frame.index},
                                {"image": frame.image}, t_acq_ns=frame.t_acq_ns)
        if self.pending is None and not preview_due:
            return
        report = self.analyzer.analyze(frame.image)
        self.frames_analysed += 1
        if preview_due:
            self._publish_preview(frame, report)
        if self.pending is not None:
            self._feed_capture(frame, report, now)

    def _preview_due(self, acquired: float) -> bool:
        """Whether the frame acquired at ``acquired`` (monotonic seconds) is the next
        preview, keeping the preview rate on schedule: a frame a little early for its slot
        takes it (a 30 fps camera gives exactly 15 fps, not 10 from frames 1 ms short of 1/15 s)."""
        period = 1.0 / self.config["preview"]["fps"]
        if acquired < self._next_preview - 0.25 * period:
            return False
        self._next_preview += period
        if self._next_preview < acquired:
            self._next_preview = acquired + period     # fell behind: no burst to catch up
        return True

    def _publish_preview(self, frame: Any, report: Any) -> None:
        preview = self.config["preview"]
        height, width = frame.image.shape[:2]
        scale = min(1.0, preview["width"] / width)
        small = cv2.resize(frame.image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, preview["jpeg_quality"]])
        if not ok:
            return
        # The quality report's geometry is in the camera frame's pixels: ``frame_width`` lets a
        # viewer scale the face box onto the preview.
        self.frames.publish("preview", {"width": small.shape[1], "height": small.shape[0], "encoding": "jpeg",
                                        "frame_width": width, "frame_height": height,
                                        "index": frame.index, "quality": report.to_dict()},
                            {"jpeg": jpeg.tobytes()}, t_acq_ns=frame.t_acq_ns)

    # -- commands ---------------------------------------------------------------------------
    def _cmd_capture(self, request: Request) -> None:
        self.require_device()
        if self.pending is not None and not self.pending.request.done:
            raise StationError(f"camera {self.name} is already capturing", code="busy", retryable=True)
        mode = request.args.get("mode", "icao")
        timeout = float(request.args.get("timeout_s", self.config["capture"]["timeout_s"]))
        timeout = min(timeout, max(request.remaining_s - 1.0, 0.5))
        capture = self.config["capture"]
        self.pending = PendingCapture(request, AutoCapture(capture["consecutive_frames"], timeout, mode=mode,
                                                           exception_ignores=capture["exception_ignores"]))
        self.begin(request, f"capturing ({mode})")

    def _cmd_cancel(self, request: Request) -> dict:
        """Stop a capture in progress (the officer aborted it, or its caller gave up)."""
        pending, self.pending = self.pending, None
        if pending is None or pending.request.done:
            return {"cancelled": False}
        self.fail(pending.request, StationError("capture cancelled", code="cancelled", retryable=True))
        return {"cancelled": True}

    def _feed_capture(self, frame: Any, report: Any, now: float) -> None:
        pending = self.pending
        if pending.request.done:  # expired at its deadline
            self.pending = None
            self.fail(pending.request, StationError("capture expired", code="deadline_exceeded"))
            return
        decision = pending.auto.feed(frame, report, now)
        if not decision.done:
            return
        self.pending = None
        self.complete(pending.request, lambda: self._portrait(decision, pending.auto.mode))

    def _portrait(self, decision: Any, mode: str) -> Outcome:
        """The capture's answer: the token portrait of the chosen frame, or why there is none."""
        if decision.frame is None:
            raise StationError(f"no face seen within the capture time: {decision.report.hint}",
                               code="no_face", retryable=True)
        chosen = decision.report
        if chosen.face is None:
            raise StationError(f"no face in the best frame: {chosen.hint}", code="no_face", retryable=True)
        # An exception photo (eyes closed, covered) may lack located eyes: the detector's
        # estimate from the face box still places the token crop sensibly.
        eyes = chosen.eyes or chosen.face.eyes_or_estimate()
        token = token_portrait(decision.frame.image, eyes, self.config["token"])
        result = {
            "passed": chosen.passed, "score": chosen.score, "hint": chosen.hint, "hint_code": chosen.hint_code,
            "forced": decision.forced, "mode": mode, "streak": decision.streak,
            "elapsed_s": round(decision.elapsed_s, 3),
            "quality": chosen.to_dict(), "token": token.geometry(),
        }
        self.events.publish("capture", {k: result[k] for k in ("passed", "score", "forced", "mode")},
                            t_acq_ns=decision.frame.t_acq_ns)
        return result, {"portrait.jpg": token.record_jpeg,
                        f"portrait-chip.{FILE_SUFFIX[token.chip_format]}": token.chip_image}

    def _cmd_frame(self, request: Request) -> None:
        """Answered with the next frame read, so the picture is never older than the request."""
        self.require_device()
        self.frame_requests.append(request)
        self.begin(request, "")

    def _reply_frame(self, frame: Any) -> None:
        fields = {**image_fields(frame.image, "bgr8"), "index": frame.index, "t_acq_ns": frame.t_acq_ns}
        requests, self.frame_requests = self.frame_requests, []
        for request in requests:
            self.complete(request, lambda: (fields, {"image": frame.image}))


def keep_frame_memory() -> bool:
    """Keep freed frame buffers in the process for the next frame (glibc only).

    By default glibc hands a freed multi-megabyte block back to the kernel (munmap, or a
    trim of the heap top), so every decoded 720p frame page-faults its 2.7 MB in afresh:
    about 2 ms a frame on the station's CPU, a sixth of the per-frame budget. Fixed
    thresholds keep the blocks for reuse; the cost is that the daemon's resident memory
    stays at its peak (a few frames' worth) instead of shrinking between frames.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def main(argv: Sequence[str] | None = None) -> int:
    keep_frame_memory()
    prepare_jpeg2000()
    return main_for(CameraDaemon, "station-camerad", "Camera daemon: face quality, auto-capture, token portrait",
                    argv)
