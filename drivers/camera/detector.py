"""Face and eye detection behind one small interface.

The quality checks need, for each face, a box and the two eye centres; where they come
from is a detail. ``HaarDetector`` uses the cascades that ship inside
opencv-python-headless 4.x, so the station works with no model download; ``YuNetDetector``
uses ``cv2.FaceDetectorYN`` with an ONNX model file the site provides, and is chosen when
``detector.model`` is set.

Eyes are reported image-left first: ``eyes[0]`` is the subject's right eye.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from station.errors import ConfigError

Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One face: ``box`` is (x, y, w, h) in image pixels; ``eyes`` None when not found."""

    box: tuple[int, int, int, int]
    eyes: tuple[Point, Point] | None
    confidence: float

    @property
    def inter_eye_px(self) -> float | None:
        if self.eyes is None:
            return None
        (lx, ly), (rx, ry) = self.eyes
        return math.hypot(rx - lx, ry - ly)

    def eyes_or_estimate(self) -> tuple[Point, Point]:
        """The eyes, or where they usually sit in a face box (for exception photos)."""
        if self.eyes is not None:
            return self.eyes
        x, y, w, h = self.box
        return (x + 0.3 * w, y + 0.38 * h), (x + 0.7 * w, y + 0.38 * h)


class FaceDetector(Protocol):
    # Whether ``detect`` needs the colour frame; when not, the analyzer hands it the grey
    # copy it makes anyway (a 1280x720 conversion saved on every frame).
    needs_colour: bool

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR or grey image, largest first."""


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise ConfigError([f"{path}: Haar cascade missing or unreadable; reinstall opencv-python-headless 4.x"])
    return cascade


class HaarDetector:
    """Viola-Jones faces on a small copy of the frame, then eyes at face scale.

    Faces are found on a ``detect_width``-wide copy (a face that is big enough for an ICAO
    portrait is still 40+ px there), which keeps detection to a few milliseconds. Eyes are
    searched in the upper part of each face box, resampled so the face is
    ``eye_search_width`` px wide, and each eye box is refined to the darkest blob inside it
    (the iris), because the cascade's box centre wanders by several pixels and roll is
    measured from these two points. Faces rolled beyond the cascade's tolerance are looked
    for again on copies rotated by ``roll_search_deg`` when nothing upright is found.
    """

    needs_colour = False

    def __init__(self, detect_width: int = 256, scale_factor: float = 1.1, min_neighbors: int = 4,
                 min_face_fraction: float = 0.12, eye_search_width: int = 100,
                 roll_search_deg: float = 22.0):
        self.detect_width = detect_width
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction
        self.eye_search_width = eye_search_width
        self.roll_search_deg = roll_search_deg
        self._faces = _cascade("haarcascade_frontalface_alt2.xml")
        self._eyes = _cascade("haarcascade_eye.xml")

    def detect(self, image: np.ndarray, near: Face | None = None) -> list[Face]:
        """Every face in the frame; with ``near``, only a face close to that one in place and
        size (a tracked face), or [] when it is not there."""
        grey = _grey(image)
        h, w = grey.shape
        k = min(1.0, self.detect_width / w)
        small = cv2.resize(grey, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        found = self._upright(small) if near is None else self._near(small, near, k)
        angle = 0.0
        if not found and near is None and self.roll_search_deg:
            for angle in (self.roll_search_deg, -self.roll_search_deg):
                found = self._rotated(small, angle)
                if found:
                    break
        faces = []
        for (x, y, fw, fh), neighbours in found:
            box = _clip((x / k, y / k, fw / k, fh / k), w, h)
            eyes = self._find_eyes(grey, box, angle)
            faces.append(Face(box, eyes, float(neighbours / (neighbours + self.min_neighbors))))
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces

    def _upright(self, small: np.ndarray) -> list[tuple[tuple[float, ...], int]]:
        side = max(12, round(self.min_face_fraction * small.shape[0]))
        boxes, neighbours = self._faces.detectMultiScale2(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side))
        return [(tuple(float(v) for v in b), int(n)) for b, n in zip(boxes, neighbours)]

    def _near(self, small: np.ndarray, face: Face, k: float) -> list[tuple[tuple[float, ...], int]]:
        """The face again, searched around its last box at 0.75-1.33 times its size: a few
        pyramid levels over a region instead of every level over the frame."""
        x, y, fw, fh = (v * k for v in face.box)
        x0, y0 = max(0, int(x - fw / 2)), max(0, int(y - fh / 2))
        x1, y1 = min(small.shape[1], int(x + 1.5 * fw) + 1), min(small.shape[0], int(y + 1.5 * fh) + 1)
        lo, hi = max(12, int(0.75 * fw)), int(1.33 * fw) + 1
        if x1 - x0 < lo or y1 - y0 < lo:
            return []
        boxes, neighbours = self._faces.detectMultiScale2(
            small[y0:y1, x0:x1], scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(lo, lo), maxSize=(hi, hi))
        return [((float(bx + x0), float(by + y0), float(bw), float(bh)), int(n))
                for (bx, by, bw, bh), n in zip(boxes, neighbours, strict=True)]

    def _rotated(self, small: np.ndarray, angle: float) -> list[tuple[tuple[float, ...], int]]:
        """Detect on a copy rotated by ``angle``; boxes come back centred on the true face."""
        h, w = small.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        turned = cv2.warpAffine(small, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        back = cv2.invertAffineTransform(m)
        found = []
        for (x, y, fw, fh), n in self._upright(turned):
            cx, cy = back @ np.array([x + fw / 2, y + fh / 2, 1.0])
            found.append(((cx - fw / 2, cy - fh / 2, fw, fh), n))
        return found

    def _find_eyes(self, grey: np.ndarray, box: tuple[int, int, int, int], angle: float) -> tuple[Point, Point] | None:
        """Eye centres in image coordinates, searched on an upright, face-sized patch."""
        x, y, fw, fh = box
        s = self.eye_search_width / fw
        size = (self.eye_search_width, round(fh * s))
        # Patch coordinates: the face box, de-rotated about its centre and scaled by s.
        m = cv2.getRotationMatrix2D((x + fw / 2, y + fh / 2), angle, s)
        m[0, 2] += size[0] / 2 - (x + fw / 2)
        m[1, 2] += size[1] / 2 - (y + fh / 2)
        patch = cv2.warpAffine(grey, m, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        pw, ph = size
        top, bottom = round(0.18 * ph), round(0.58 * ph)
        band = patch[top:bottom]
        side = max(20, round(0.18 * pw))
        hits = self._eyes.detectMultiScale(band, scaleFactor=1.15, minNeighbors=3, minSize=(side, side),
                                           maxSize=(round(0.32 * pw), round(0.32 * pw)))
        expected = {"left": (0.30 * pw, 0.37 * ph - top), "right": (0.70 * pw, 0.37 * ph - top)}
        chosen = {}
        for ex, ey, ew, eh in hits:
            cx, cy = ex + ew / 2, ey + eh / 2
            which = "left" if cx < pw / 2 else "right"
            d = math.dist((cx, cy), expected[which])
            if which not in chosen or d < chosen[which][0]:
                chosen[which] = (d, (ex, ey, ew, eh))
        if len(chosen) < 2:
            return None
        back = cv2.invertAffineTransform(m)
        eyes = []
        for which in ("left", "right"):
            px, py = _iris_centre(band, chosen[which][1])
            eyes.append(tuple(float(v) for v in back @ np.array([px, py + top, 1.0])))
        return eyes[0], eyes[1]


def _clip(box: tuple[float, ...], width: int, height: int) -> tuple[int, int, int, int]:
    """A box found on a rotated copy may poke out of the frame; keep it inside."""
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(width, round(box[0] + box[2])), min(height, round(box[1] + box[3]))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _iris_centre(band: np.ndarray, eye_box: tuple[int, int, int, int]) -> Point:
    """The darkest blob in the eye box: the iris, a steadier centre than the box itself."""
    ex, ey, ew, eh = (int(v) for v in eye_box)
    # Trim the box: its top edge usually holds the eyebrow, as dark as the iris.
    y0, y1 = ey + eh // 4, ey + eh - eh // 6
    x0, x1 = ex + ew // 8, ex + ew - ew // 8
    roi = cv2.GaussianBlur(band[y0:y1, x0:x1].astype(np.float32), (0, 0), max(1.0, ew / 12))
    # Weight the darkest tenth of the pixels by how dark they are; their centroid is the iris.
    cutoff = _tenth_percentile(roi)
    weight = np.clip(cutoff - roi, 0, None) + 1e-3 * (roi <= cutoff)
    # The centroid from row and column sums: two short dot products, no coordinate grids.
    total = float(weight.sum(dtype=np.float64))
    cx = float(weight.sum(axis=0, dtype=np.float64) @ np.arange(roi.shape[1], dtype=np.float64))
    cy = float(weight.sum(axis=1, dtype=np.float64) @ np.arange(roi.shape[0], dtype=np.float64))
    return x0 + cx / total, y0 + cy / total


def _tenth_percentile(values: np.ndarray) -> float:
    """``np.percentile(values, 10)`` (linear interpolation) by partial sort: the eye box is
    a few hundred pixels, where percentile's general machinery costs more than the sort."""
    flat = values.ravel()
    position = 0.1 * (flat.size - 1)
    lo = int(position)
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    return a + (b - a) * (position - lo)


class TrackingDetector:
    """A Haar detector for a video stream: a full-frame search every ``full_every`` frames,
    and in between only around the one face found last, at about its size.

    An applicant in the booth barely moves between frames, and the full search (every
    pyramid level over the whole frame) is most of a frame's analysis time. A second person
    stepping in, or a face lost, is seen at the next full search, at most ``full_every - 1``
    frames later; with ``full_every`` no larger than the auto-capture streak, every captured
    streak includes a full search. Anything other than exactly one face found near the last
    one falls back to a full search of the same frame.
    """

    needs_colour = False

    def __init__(self, detector: HaarDetector, full_every: int = 3):
        self.detector = detector
        self.full_every = full_every
        self._last: Face | None = None
        self._since_full = 0
        self.full_searches = 0

    def detect(self, image: np.ndarray) -> list[Face]:
        if self._last is not None and self._since_full + 1 < self.full_every:
            faces = self.detector.detect(image, near=self._last)
            if len(faces) == 1:
                self._since_full += 1
                self._last = faces[0]
                return faces
        faces = self.detector.detect(image)
        self.full_searches += 1
        self._since_full = 0
        self._last = faces[0] if len(faces) == 1 else None
        return faces


class YuNetDetector:
    """``cv2.FaceDetectorYN`` with a site-provided ONNX model; five landmarks per face."""

    needs_colour = True

    def __init__(self, model: str, score_threshold: float = 0.8, nms_threshold: float = 0.3,
                 detect_width: int = 320):
        if not os.path.isfile(model):
            raise ConfigError([f"detector.model: {model}: no such file; point it at a YuNet .onnx "
                               "model or leave it empty for the built-in Haar detector"])
        self.detect_width = detect_width
        self._net = cv2.FaceDetectorYN.create(model, "", (detect_width, detect_width),
                                              score_threshold, nms_threshold)

    def detect(self, image: np.ndarray) -> list[Face]:
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
        h, w = bgr.shape[:2]
        k = min(1.0, self.detect_width / w)
        small = cv2.resize(bgr, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._net.detect(small)
        faces = []
        for row in rows if rows is not None else []:
            x, y, fw, fh = (float(v) / k for v in row[:4])
            # Landmarks: subject's right eye (image left), left eye, nose, mouth corners.
            eyes = ((row[4] / k, row[5] / k), (row[6] / k, row[7] / k))
            eyes = tuple(sorted((tuple(map(float, e)) for e in eyes), key=lambda p: p[0]))
            faces.append(Face((round(x), round(y), round(fw), round(fh)), eyes, float(row[14])))
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces


def make_detector(cfg: dict, stream_window: int = 0) -> FaceDetector:
    """The detector named by the ``detector`` config section. For a video stream, pass the
    auto-capture streak length as ``stream_window``: Haar then tracks the face between full
    searches, at least one full search per window."""
    kind = cfg.get("kind", "haar")
    if kind == "yunet":
        if not cfg.get("model"):
            raise ConfigError(["detector.model: required when detector.kind is 'yunet'"])
        return YuNetDetector(cfg["model"], score_threshold=cfg.get("score_threshold", 0.8),
                             detect_width=cfg.get("detect_width", 320))
    if kind == "haar":
        haar = HaarDetector(detect_width=cfg.get("detect_width", 256), min_neighbors=cfg.get("min_neighbors", 4))
        full_every = min(cfg.get("full_search_every", 1), stream_window) if stream_window else 1
        return TrackingDetector(haar, full_every) if full_every > 1 else haar
    raise ConfigError([f"detector.kind: {kind!r} is not one of 'haar', 'yunet'"])
