"""ICAO portrait quality of one frame: measured values, verdicts, a score and one hint.

Every check is a measured value plus a verdict against thresholds from the ``quality``
section of ``config/camera.yaml``, keyed by check name (``{min: .., max: ..}``), so a
field engineer tuning the station reads the same names in the config, in
``stationctl face check`` output and in the preview stream.

Geometry follows the ICAO / ISO/IEC 19794-5 vocabulary: eye centres, inter-eye distance
(ICAO asks for about 90 px at least), roll from the eye line, a frontal (yaw) estimate,
the eye line's height and the face's place in the frame; the photometric checks are
sharpness, exposure, clipping, illumination symmetry between face halves and a plain
background. None of these is OFIQ (ISO/IEC 29794-5); that needs model downloads.

The hint names the first failing check in the order an operator fixes things: who is in
the picture, then distance, then the room (evenness of light before its level: a half-lit
face clips on one side and is dark on the other, and only evening the light fixes both;
then the background, whose clutter also confuses the yaw estimate), then stillness, then
position, then pose. That order is causal — a dark or blurred face loses
its eyes, and then roll and yaw fail too, but "too dark" is the fix — so the first
failure in it is the worst one to report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from station.errors import ConfigError

from .detector import Face, FaceDetector

# Check name -> (threshold keys it takes, what the verdict compares).
# "abs": the signed value's magnitude is compared with max.
CHECKS: dict[str, tuple[str, ...]] = {
    "face_count": (),
    "face_size": ("min", "max"),
    "inter_eye_px": ("min",),
    "illumination_symmetry": ("min",),
    "exposure": ("min", "max"),
    "clipping": ("max",),
    "background_uniformity": ("max",),
    "sharpness": ("min",),
    "centring": ("max",),
    "eye_line": ("min", "max"),
    "eyes_found": (),
    "roll_deg": ("max",),
    "yaw": ("max",),
}
SIGNED = {"centring", "roll_deg", "yaw"}

DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "face_size": {"min": 0.2, "max": 0.65},
    "inter_eye_px": {"min": 90},
    "exposure": {"min": 90, "max": 235},
    "clipping": {"max": 0.02},
    "illumination_symmetry": {"min": 0.8},
    "sharpness": {"min": 18},
    "centring": {"max": 0.1},
    "eye_line": {"min": 0.3, "max": 0.55},
    "roll_deg": {"max": 5.0},
    "yaw": {"max": 0.15},
    "background_uniformity": {"max": 15},
}

# Score weights: what makes a portrait unusable for matching weighs most.
_WEIGHTS = {"sharpness": 2.0, "exposure": 2.0, "inter_eye_px": 1.5}

# Hint code -> what the operator reads in English. The code is what travels (preview stream,
# capture result), so a console says the hint in the applicant's language by looking it up
# (station/console/i18n/messages.*.yaml, key ``hint.<code>``), never by parsing the text.
HINTS: dict[str, str] = {
    "no_face": "no face found — step in front of the camera",
    "one_person": "only one person in the picture",
    "move_closer": "move closer",
    "move_back": "move back",
    "too_dark": "too dark — add light",
    "too_bright": "too bright — reduce the light",
    "uneven_light": "light is uneven — light both sides of the face",
    "hold_still": "hold still",
    "move_to_centre": "move to the centre",
    "raise_camera": "raise the camera",
    "lower_camera": "lower the camera",
    "open_eyes": "look at the camera with both eyes open",
    "head_level": "keep your head level",
    "look_straight": "look straight at the camera",
    "plain_background": "use a plain background behind the person",
}
# (check, the side it failed on) -> hint code; a failure not listed asks for open eyes.
FAILURE_HINTS: dict[tuple[str, str], str] = {
    ("face_count", "none"): "no_face",
    ("face_count", "many"): "one_person",
    ("face_size", "low"): "move_closer",
    ("face_size", "high"): "move_back",
    ("inter_eye_px", "low"): "move_closer",
    ("exposure", "low"): "too_dark",
    ("exposure", "high"): "too_bright",
    ("clipping", "dark"): "too_dark",
    ("clipping", "bright"): "too_bright",
    ("illumination_symmetry", "low"): "uneven_light",
    ("sharpness", "low"): "hold_still",
    ("centring", "high"): "move_to_centre",
    ("eye_line", "low"): "raise_camera",
    ("eye_line", "high"): "lower_camera",
    ("eyes_found", "low"): "open_eyes",
    ("roll_deg", "high"): "head_level",
    ("yaw", "high"): "look_straight",
    ("background_uniformity", "high"): "plain_background",
}


@dataclass(frozen=True)
class Check:
    """One measured value and its verdict; ``value`` None means it could not be measured."""

    value: float | int | bool | None
    passed: bool
    min: float | None = None
    max: float | None = None
    side: str = ""       # which way it failed: low / high / many / dark / bright
    grade: float = 1.0   # 0..1 share of the score, 0.5 exactly at the threshold

    def to_dict(self) -> dict:
        out: dict = {"value": self.value, "passed": self.passed}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


@dataclass(frozen=True)
class QualityReport:
    passed: bool
    score: float
    hint_code: str | None  # a key of HINTS; None when the frame passed
    checks: dict[str, Check]
    face: Face | None
    face_count: int = 0
    failed: tuple[str, ...] = field(default=())

    @property
    def hint(self) -> str | None:
        """The hint in English, for logs and ``stationctl face check``."""
        return HINTS[self.hint_code] if self.hint_code is not None else None

    @property
    def eyes(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Eye centres of the analysed face (image-left first), None if not found."""
        return self.face.eyes if self.face is not None else None

    def to_dict(self) -> dict:
        face = None
        if self.face is not None:
            face = {"box": list(self.face.box),
                    "eyes": [list(map(_round, e)) for e in self.face.eyes] if self.face.eyes else None}
        return {"passed": self.passed, "score": self.score, "hint": self.hint, "hint_code": self.hint_code,
                "checks": {name: c.to_dict() for name, c in self.checks.items()}, "face": face}


def _round(v: float) -> float:
    return round(float(v), 2)


def _logistic(margin: float) -> float:
    """Grade from a margin in threshold units: 0.5 at the threshold, smooth both ways."""
    return 1.0 / (1.0 + math.exp(-3.0 * max(-10.0, min(10.0, margin))))


def _judge(name: str, value: float | None, limits: dict[str, float]) -> Check:
    """Verdict and grade; the margin is measured in units of the threshold itself."""
    lo, hi = limits.get("min"), limits.get("max")
    if value is None:
        return Check(None, False, lo, hi, side="unmeasured", grade=0.25)
    v = abs(value) if name in SIGNED else value
    if lo is not None and hi is not None:
        margin = min(v - lo, hi - v) / ((hi - lo) / 2)
    elif lo is not None:
        margin = (v - lo) / (abs(lo) or 1.0)
    else:
        margin = (hi - v) / (abs(hi) or 1.0)
    side = "low" if lo is not None and v < lo else "high" if hi is not None and v > hi else ""
    return Check(_round(value), not side, lo, hi, side=side, grade=_logistic(margin))


class FaceAnalyzer:
    """Runs every check on one frame. Thresholds are read once, here."""

    def __init__(self, cfg_quality: dict, detector: FaceDetector):
        unknown = sorted(set(cfg_quality) - set(DEFAULT_THRESHOLDS))
        if unknown:
            raise ConfigError([f"quality.{name}: not a check; known: {', '.join(sorted(DEFAULT_THRESHOLDS))}"
                               for name in unknown])
        self.thresholds = {name: {**limits, **cfg_quality.get(name, {})}
                           for name, limits in DEFAULT_THRESHOLDS.items()}
        self.detector = detector

    def analyze(self, image: np.ndarray) -> QualityReport:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        faces = self.detector.detect(image if getattr(self.detector, "needs_colour", True) else grey)
        if not faces:
            return self._verdict({"face_count": Check(0, False, side="none", grade=0.0)}, None, 0)
        face = faces[0]
        checks = {"face_count": Check(len(faces), len(faces) == 1, side="" if len(faces) == 1 else "many",
                                      grade=1.0 if len(faces) == 1 else 0.0)}
        checks.update(self._measure(image, grey, face))
        return self._verdict(checks, face, len(faces))

    def _measure(self, image: np.ndarray, grey: np.ndarray, face: Face) -> dict[str, Check]:
        t = self.thresholds
        height, width = grey.shape
        x, y, w, h = face.box
        if face.eyes is not None:
            (lx, ly), (rx, ry) = face.eyes
            mid = ((lx + rx) / 2, (ly + ry) / 2)
            inter_eye = math.hypot(rx - lx, ry - ly)
            roll = math.degrees(math.atan2(ly - ry, rx - lx))
        else:
            mid = (x + w / 2, y + 0.38 * h)   # where the eyes sit in a Haar face box
            inter_eye = roll = None
        # The inner face: skin from brows to mouth, no hair and no background.
        x0, y0 = max(0, round(x + 0.2 * w)), max(0, round(y + 0.25 * h))
        inner = grey[y0:max(y0 + 2, round(y + 0.85 * h)), x0:max(x0 + 2, round(x + 0.8 * w))]
        split = min(max(1, round(mid[0]) - x0), inner.shape[1] - 1)
        left, right = float(inner[:, :split].mean()), float(inner[:, split:].mean())
        mean = float(inner.mean())
        dark = float(np.count_nonzero(inner <= 5)) / inner.size
        bright = float(np.count_nonzero(inner >= 250)) / inner.size
        checks = {
            "face_size": _judge("face_size", h / height, t["face_size"]),
            "inter_eye_px": _judge("inter_eye_px", inter_eye, t["inter_eye_px"]),
            "exposure": _judge("exposure", mean, t["exposure"]),
            "clipping": _judge("clipping", dark + bright, t["clipping"]),
            "illumination_symmetry": _judge("illumination_symmetry",
                                            min(left, right) / max(left, right, 1e-6), t["illumination_symmetry"]),
            "sharpness": _judge("sharpness", _sharpness(inner), t["sharpness"]),
            "centring": _judge("centring", (mid[0] - width / 2) / width, t["centring"]),
            "eye_line": _judge("eye_line", mid[1] / height, t["eye_line"]),
            "eyes_found": Check(face.eyes is not None, face.eyes is not None,
                                side="" if face.eyes is not None else "low",
                                grade=1.0 if face.eyes is not None else 0.1),
            "roll_deg": _judge("roll_deg", roll, t["roll_deg"]),
            "yaw": self._yaw(image, face, mid, inter_eye),
            "background_uniformity": self._background(grey, face),
        }
        if checks["clipping"].side:
            checks["clipping"] = replace(checks["clipping"], side="dark" if dark > bright else "bright")
        return checks

    def _yaw(self, image: np.ndarray, face: Face, mid: tuple[float, float], inter_eye: float | None) -> Check:
        """Eyes off the centre of the cheek contour, as a fraction of half the face width.

        A Haar box follows the features, so it turns with the head and cannot show yaw;
        the skin contour between eyes and mouth stays with the skull, so the eyes' offset
        from its centre grows with the turn (about 0.014 per degree on the emulated head).
        Unmeasurable (grey frame, skin not found) counts as passing: it is a pose hint, and
        the other checks still guard the portrait.
        """
        limits = self.thresholds["yaw"]
        if image.ndim == 2 or inter_eye is None:
            return Check(None, True, max=limits["max"], grade=1.0)
        offset = _contour_offset(image, face.box, mid, inter_eye)
        if offset is None:
            return Check(None, True, max=limits["max"], grade=1.0)
        return _judge("yaw", offset, limits)

    def _background(self, grey: np.ndarray, face: Face) -> Check:
        """Grey-level spread beside and above the head, where the portrait's background is."""
        limits = self.thresholds["background_uniformity"]
        height, width = grey.shape
        x, y, w, h = face.box
        strips = []
        for a, b, c, d in ((-0.95, -0.2, -0.5, 0.6), (1.5, -0.2, 1.95, 0.6), (0.0, -0.95, 1.0, -0.75)):
            x0, x1 = max(0, round(x + a * w)), min(width, round(x + c * w))
            y0, y1 = max(0, round(y + b * h)), min(height, round(y + d * h))
            if x1 - x0 >= 4 and y1 - y0 >= 4:
                strips.append(grey[y0:y1:2, x0:x1:2].ravel())
        if not strips:
            return Check(None, True, max=limits["max"], grade=1.0)
        return _judge("background_uniformity", float(np.concatenate(strips).std()), limits)

    def _verdict(self, checks: dict[str, Check], face: Face | None, face_count: int) -> QualityReport:
        failed = tuple(name for name in CHECKS if name in checks and not checks[name].passed)
        if face is None:
            score = 0.0
        elif not checks["face_count"].passed:
            score = 0.0
        else:
            weights = {name: _WEIGHTS.get(name, 1.0) for name in checks if name != "face_count"}
            total = sum(weights.values())
            score = 100.0 * math.exp(sum(weights[n] * math.log(max(checks[n].grade, 1e-6)) for n in weights) / total)
        hint_code = None
        if failed:
            # An unmeasured check failed because something earlier did (eyes not found).
            first = next((n for n in failed if checks[n].side != "unmeasured"), failed[0])
            hint_code = FAILURE_HINTS.get((first, checks[first].side), "open_eyes")
        return QualityReport(passed=not failed, score=round(score, 1), hint_code=hint_code, checks=checks,
                             face=face, face_count=face_count, failed=failed)


def _sharpness(inner: np.ndarray) -> float:
    """Laplacian contrast of the inner face, resampled to 96x96 so distance does not matter.

    A light pre-blur keeps sensor noise out of the measure and dividing by the mean keeps
    exposure out of it, so a dim but focused face is not told to "hold still".
    """
    small = cv2.resize(inner, (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32)
    lap = cv2.Laplacian(cv2.GaussianBlur(small, (0, 0), 1.0), cv2.CV_32F)
    return float(lap.std() / max(float(small.mean()), 1.0) * 1000.0)


def _contour_offset(image: np.ndarray, box: tuple[int, int, int, int], mid: tuple[float, float],
                    inter_eye: float) -> float | None:
    x, y, w, h = box
    height, width = image.shape[:2]
    # Cheeks of a frontal face reach the box edges; a turned one spills a little past one.
    # Looking further would let skin-coloured clutter pass for a cheek.
    x0, x1 = max(0, round(x - 0.15 * w)), min(width, round(x + 1.15 * w))
    y0, y1 = max(0, round(mid[1] + 0.25 * inter_eye)), min(height, round(mid[1] + 0.9 * inter_eye))
    if x1 - x0 < 8 or y1 - y0 < 4:
        return None
    k = 100.0 / w
    band = cv2.resize(image[y0:y1, x0:x1], None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    # The classic YCrCb skin range; wide enough for most skin tones under white light.
    skin = cv2.inRange(cv2.cvtColor(band, cv2.COLOR_BGR2YCrCb), (0, 133, 77), (255, 173, 127))
    column = np.count_nonzero(skin, axis=0) / skin.shape[0] > 0.5
    c = min(max(0, round((mid[0] - x0) * k)), column.size - 1)
    if not column[c]:
        return None
    off = np.flatnonzero(~column)
    left = off[off < c].max() + 1 if np.any(off < c) else 0
    right = off[off > c].min() - 1 if np.any(off > c) else column.size - 1
    half = (right - left) / 2
    if half < 0.4 * inter_eye * k:
        return None
    return float((c - (left + right) / 2) / half)
