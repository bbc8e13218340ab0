"""Auto-capture: take the photo when the portrait has been right for N frames in a row.

Pure logic, fed ``(frame, report, now)`` by the daemon; no clock or camera of its own, so
tests drive it with any sequence of reports and times.

One passing frame is not enough: a blink or a head starting to turn passes one frame and
fails the next, so the capture waits for ``consecutive`` passing frames and then keeps
the best of that streak. If that never happens within ``timeout_s``, the best frame seen
is returned flagged ``forced`` for the operator to accept or retake.

Exception mode is for applicants who cannot meet the ICAO pose and position rules (a
disability, an eye condition, a medical device): exactly one face is still required, and
so are the photometric checks that make a portrait usable at all (face size, exposure,
clipping, sharpness); the checks in ``EXCEPTION_IGNORES`` are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from station.errors import ConfigError

from .quality import CHECKS, QualityReport

EXCEPTION_IGNORES = ("inter_eye_px", "illumination_symmetry", "background_uniformity", "centring",
                     "eye_line", "eyes_found", "roll_deg", "yaw")
MODES = ("icao", "exception")

WAIT, CAPTURE, TIMEOUT = "wait", "capture", "timeout"


@dataclass(frozen=True)
class CaptureDecision:
    """``action``: wait, capture or timeout. ``frame``/``report`` are set unless waiting."""

    action: str
    frame: Any = None
    report: QualityReport | None = None
    forced: bool = False
    streak: int = 0
    elapsed_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.action != WAIT


class AutoCapture:
    """One capture request. The clock starts at the first frame unless ``started_at`` is given."""

    def __init__(self, consecutive: int = 5, timeout_s: float = 10.0, mode: str = "icao",
                 exception_ignores: tuple[str, ...] | list[str] = EXCEPTION_IGNORES,
                 started_at: float | None = None):
        if consecutive < 1:
            raise ValueError("consecutive must be at least 1")
        if mode not in MODES:
            raise ValueError(f"capture mode must be one of {MODES}, not {mode!r}")
        bad = sorted((set(exception_ignores) - set(CHECKS)) | ({"face_count"} & set(exception_ignores)))
        if bad:
            raise ConfigError([f"capture.exception_ignores: {name!r} cannot be ignored (not a check, or "
                               "face_count, which every photo needs)" for name in bad])
        self.consecutive = consecutive
        self.timeout_s = timeout_s
        self.mode = mode
        self.ignored = frozenset(exception_ignores) if mode == "exception" else frozenset()
        self.started_at = started_at
        self._streak: list[tuple[Any, QualityReport]] = []
        self._best: tuple[tuple, Any, QualityReport] | None = None
        self._final: CaptureDecision | None = None

    def acceptable(self, report: QualityReport) -> bool:
        """Whether this report passes in this mode."""
        return report.face_count == 1 and all(
            check.passed for name, check in report.checks.items() if name not in self.ignored)

    def feed(self, frame: Any, report: QualityReport, now: float) -> CaptureDecision:
        if self._final is not None:
            return self._final
        if self.started_at is None:
            self.started_at = now
        elapsed = now - self.started_at
        ok = self.acceptable(report)
        rank = (ok, -sum(1 for n, c in report.checks.items() if not c.passed and n not in self.ignored),
                report.score)
        if self._best is None or rank > self._best[0]:
            self._best = (rank, frame, report)
        if ok:
            self._streak.append((frame, report))
        else:
            self._streak.clear()
        if len(self._streak) >= self.consecutive:
            best_frame, best_report = max(self._streak, key=lambda fr: fr[1].score)
            self._final = CaptureDecision(CAPTURE, best_frame, best_report, False, len(self._streak), elapsed)
            return self._final
        if elapsed >= self.timeout_s:
            return self._time_out(elapsed)
        return CaptureDecision(WAIT, streak=len(self._streak), elapsed_s=elapsed)

    def tick(self, now: float) -> CaptureDecision:
        """For a loop getting no frames: time out on the clock alone."""
        if self._final is not None:
            return self._final
        if self.started_at is None:
            self.started_at = now
        elapsed = now - self.started_at
        if elapsed >= self.timeout_s:
            return self._time_out(elapsed)
        return CaptureDecision(WAIT, streak=len(self._streak), elapsed_s=elapsed)

    def _time_out(self, elapsed: float) -> CaptureDecision:
        frame, report = (self._best[1], self._best[2]) if self._best else (None, None)
        self._final = CaptureDecision(TIMEOUT, frame, report, True, len(self._streak), elapsed)
        return self._final
