"""Emulated camera scenes built from a real portrait, for tests and the demo.

A face quality pipeline tested on drawn ellipses proves nothing, so the scene composes a
real photograph, ``skimage.data.astronaut()`` (Eileen Collins, public domain, bundled with
scikit-image), cropped to head and shoulders, into a camera-sized frame. Every degradation
an applicant or a room can cause is a field of :class:`SceneParams`, so a test can say
"the same portrait, rolled 15 degrees" and know the ground truth.

``skimage.data.lfw_subset()`` also works offline, but its faces are 25x25 grey thumbnails:
scaled to camera size they would be a blur no detector finds, so it is not used.

Speed: the person is cut out once (GrabCut seeded from a hand-drawn mask), each distinct
parameter set is composed once and cached, and a frame costs one saturating add of a
window of a pre-drawn noise field, so ``render`` stays far below 10 ms at 1280x720.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import astuple, dataclass, replace

import cv2
import numpy as np

from station.errors import ConfigError

# Where the portrait sits in astronaut(): the crop (x0, y0, x1, y1) and the iris centres
# (image-left eye, image-right eye), measured by hand on a 10x zoom.
_CROP = (100, 0, 350, 340)
_EYES = ((203.5, 100.0), (246.5, 102.5))
# Eye distance in the frame at scale 1.0: comfortably above the ICAO minimum of ~90 px.
EYE_DISTANCE_PX = 110.0

BACKGROUNDS = ("plain", "cluttered")
OCCLUSIONS = ("none", "eyes", "lower_face")


@dataclass(frozen=True)
class SceneParams:
    """What the emulated camera sees. Positions are fractions of the frame size.

    ``x``, ``y``: eye midpoint. ``scale``: 1.0 puts ``EYE_DISTANCE_PX`` between the eyes.
    ``roll_deg``: counter-clockwise head tilt as seen on screen. ``yaw_deg``: head turn,
    emulated by wrapping the face round a cylinder (positive turns the face to the image
    right). ``uneven_light``: -1..1, side light strength, positive lights the image-right
    half of the face and darkens the left. ``brightness``: exposure gain on the frame.
    ``faces``: 0, 1 or 2 people in the picture.
    """

    x: float = 0.5
    y: float = 0.42
    scale: float = 1.0
    roll_deg: float = 0.0
    yaw_deg: float = 0.0
    blur_sigma: float = 0.0
    brightness: float = 1.0
    uneven_light: float = 0.0
    background: str = "plain"
    occlusion: str = "none"
    faces: int = 1

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"scene background must be one of {BACKGROUNDS}, not {self.background!r}")
        if self.occlusion not in OCCLUSIONS:
            raise ValueError(f"scene occlusion must be one of {OCCLUSIONS}, not {self.occlusion!r}")
        if self.faces not in (0, 1, 2):
            raise ValueError(f"scene faces must be 0, 1 or 2, not {self.faces!r}")
        if self.scale <= 0 or self.brightness < 0 or self.blur_sigma < 0:
            raise ValueError("scene scale must be > 0, brightness and blur_sigma >= 0")

    @classmethod
    def from_config(cls, section: dict) -> "SceneParams":
        """From the ``source.scene`` config section; a bad key or value is a ConfigError."""
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError([f"source.scene.{k}: not a scene parameter" for k in unknown])
        try:
            return cls(**section)
        except ValueError as e:
            raise ConfigError([f"source.scene: {e}"]) from None


@dataclass(frozen=True)
class _Portrait:
    image: np.ndarray          # BGR crop
    alpha: np.ndarray          # float32 0..1, person = 1
    eyes: tuple                # ((x, y), (x, y)) in crop coordinates, image-left first


def _cut_out_portrait() -> _Portrait:
    """Cut the person out of astronaut() once; GrabCut refines a rough hand-drawn mask."""
    from skimage import data

    x0, y0, x1, y1 = _CROP
    crop = np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1, ::-1])
    rough = np.zeros(crop.shape[:2], np.uint8)
    cv2.ellipse(rough, (127, 76), (76, 66), 0, 0, 360, 255, -1)        # hair
    cv2.ellipse(rough, (125, 130), (44, 58), 0, 0, 360, 255, -1)       # face and chin
    shoulders = [(60, 160), (120, 145), (195, 160), (215, 195), (250, 245),
                 (250, 340), (0, 340), (0, 205), (25, 175)]
    cv2.fillPoly(rough, [np.array(shoulders, np.int32)], 255)
    sure = np.zeros_like(rough)
    cv2.ellipse(sure, (127, 95), (45, 60), 0, 0, 360, 255, -1)
    cv2.rectangle(sure, (30, 262), (225, 339), 255, -1)
    labels = np.full(rough.shape, cv2.GC_BGD, np.uint8)
    labels[rough > 0] = cv2.GC_PR_FGD
    labels[sure > 0] = cv2.GC_FGD
    cv2.setRNGSeed(0)  # GrabCut's k-means start: the same cut-out on every run
    cv2.grabCut(crop, labels, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
    person = np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 1.0, 0.0).astype(np.float32)
    alpha = cv2.GaussianBlur(person, (0, 0), 1.2)
    # The photograph ends at the chest; carry the suit on down so the person reaches the
    # bottom of any frame instead of floating.
    crop = cv2.copyMakeBorder(crop, 0, 300, 0, 0, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(alpha, 0, 300, 0, 0, cv2.BORDER_REPLICATE)
    eyes = tuple((ex - x0, ey - y0) for ex, ey in _EYES)
    return _Portrait(crop, alpha, eyes)


def _mirror(p: _Portrait) -> _Portrait:
    w = p.image.shape[1]
    (lx, ly), (rx, ry) = p.eyes
    return _Portrait(p.image[:, ::-1].copy(), p.alpha[:, ::-1].copy(),
                     ((w - 1 - rx, ry), (w - 1 - lx, ly)))


class Scene:
    """Renders frames of one emulated camera; deterministic for a given seed."""

    def __init__(self, width: int = 1280, height: int = 720, seed: int = 0,
                 noise_sigma: float = 2.0, cache_size: int = 8):
        self.width, self.height = int(width), int(height)
        self.seed = seed
        self._portrait = _cut_out_portrait()
        self._mirrored = _mirror(self._portrait)
        rng = np.random.default_rng(seed)
        self._noise_pad = 16
        shape = (self.height + self._noise_pad, self.width + self._noise_pad, 3)
        self._noise = np.rint(rng.normal(0.0, noise_sigma, shape)).astype(np.int16)
        self._backgrounds = {"plain": np.full((self.height, self.width, 3), (205, 208, 210), np.uint8),
                             "cluttered": self._cluttered(rng)}
        self._clean: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    # Frame ``index`` and ``index + NOISE_PERIOD`` of the same params are the same image:
    # the noise window below repeats with that period (a 16-pixel pad, see render).
    NOISE_PERIOD = 256

    def render(self, params: SceneParams, index: int = 0) -> np.ndarray:
        """One BGR frame; frames of the same params differ only by sensor noise."""
        clean = self.clean_frame(params)
        pad = self._noise_pad
        dy, dx = (index * 7) % pad, (index * 11 + index // pad) % pad
        window = self._noise[dy:dy + self.height, dx:dx + self.width]
        return cv2.add(clean, window, dtype=cv2.CV_8U)

    def clean_frame(self, params: SceneParams) -> np.ndarray:
        """The noiseless frame, composed once per distinct params (read-only, shared)."""
        key = astuple(params)
        frame = self._clean.get(key)
        if frame is None:
            frame = self._compose(params)
            frame.setflags(write=False)
            self._clean[key] = frame
            if len(self._clean) > self._cache_size:
                self._clean.popitem(last=False)
        else:
            self._clean.move_to_end(key)
        return frame

    def eye_centres(self, params: SceneParams) -> tuple[tuple[float, float], tuple[float, float]]:
        """Ground truth: where the first face's eye centres land (image-left eye first)."""
        m = self._affine(self._portrait, params.x, params.y, params)
        eyes = []
        for ex, ey in self._portrait.eyes:
            ex = self._yaw_forward(ex, self._portrait, params.yaw_deg)
            eyes.append(tuple(float(v) for v in m @ np.array([ex, ey, 1.0])))
        return eyes[0], eyes[1]

    def _cluttered(self, rng: np.random.Generator) -> np.ndarray:
        """A busy room: shelves, posters and lamps as random coloured shapes and texture."""
        bg = np.empty((self.height, self.width, 3), np.uint8)
        bg[:] = (120, 135, 150)
        for _ in range(60):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, self.width)), int(rng.integers(0, self.height))
            w, h = int(rng.integers(20, self.width // 4)), int(rng.integers(20, self.height // 3))
            if rng.random() < 0.6:
                cv2.rectangle(bg, (x, y), (x + w, y + h), colour, -1)
            else:
                cv2.ellipse(bg, (x, y), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, colour, -1)
        texture = rng.normal(0, 12, (self.height // 8, self.width // 8, 1)).astype(np.float32)
        texture = cv2.resize(texture, (self.width, self.height))[..., None]
        return np.clip(bg.astype(np.float32) + texture, 0, 255).astype(np.uint8)

    def _compose(self, params: SceneParams) -> np.ndarray:
        frame = self._backgrounds[params.background].copy()
        if params.faces >= 1:
            self._paste(frame, self._portrait, params.x, params.y, params)
        if params.faces == 2:
            # A second person beside the first, a little further from the camera.
            second_x = params.x + 0.3 if params.x <= 0.5 else params.x - 0.3
            second = replace(params, scale=params.scale * 0.9, roll_deg=-params.roll_deg)
            self._paste(frame, self._mirrored, second_x, params.y + 0.03, second)
        if params.brightness != 1.0:
            lut = np.clip(np.arange(256) * params.brightness, 0, 255).astype(np.uint8)
            frame = cv2.LUT(frame, lut)
        if params.blur_sigma > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), params.blur_sigma)
        return frame

    def _affine(self, portrait: _Portrait, fx: float, fy: float, params: SceneParams) -> np.ndarray:
        """Crop -> frame: eye midpoint to (fx, fy), eyes levelled, then scaled and rolled."""
        (lx, ly), (rx, ry) = portrait.eyes
        native_roll = math.degrees(math.atan2(ry - ly, rx - lx))
        s = EYE_DISTANCE_PX * params.scale / math.hypot(rx - lx, ry - ly)
        m = cv2.getRotationMatrix2D(((lx + rx) / 2, (ly + ry) / 2), native_roll + params.roll_deg, s)
        m[0, 2] += fx * self.width - (lx + rx) / 2
        m[1, 2] += fy * self.height - (ly + ry) / 2
        return m

    @staticmethod
    def _head_cylinder(portrait: _Portrait) -> tuple[float, float]:
        (lx, _), (rx, _) = portrait.eyes
        return (lx + rx) / 2, 1.2 * abs(rx - lx)

    def _yaw_forward(self, x: float, portrait: _Portrait, yaw_deg: float) -> float:
        cx, r = self._head_cylinder(portrait)
        theta = math.asin(max(-1.0, min(1.0, (x - cx) / r))) + math.radians(yaw_deg)
        return cx + r * math.sin(theta)

    def _turned(self, portrait: _Portrait, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """The crop with the head turned: features slide along a cylinder, the rest stays."""
        if yaw_deg == 0:
            return portrait.image, portrait.alpha
        h, w = portrait.alpha.shape
        cx, r = self._head_cylinder(portrait)
        xs = np.arange(w, dtype=np.float32)
        u = np.clip((xs - cx) / r, -1.0, 1.0)
        theta = np.arcsin(u) - math.radians(yaw_deg)
        src = np.where(np.abs(xs - cx) < r, cx + r * np.sin(np.clip(theta, -math.pi / 2, math.pi / 2)), xs)
        map_x = np.broadcast_to(src.astype(np.float32), (h, w)).copy()
        map_y = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)).copy()
        image = cv2.remap(portrait.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.remap(portrait.alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return image, alpha

    def _paste(self, frame: np.ndarray, portrait: _Portrait, fx: float, fy: float,
               params: SceneParams) -> None:
        image, alpha = self._turned(portrait, params.yaw_deg)
        image = self._occlude(image.copy(), portrait, params.occlusion)
        m = self._affine(portrait, fx, fy, params)
        h, w = alpha.shape
        corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ m.T
        x0 = max(int(np.floor(corners[:, 0].min())), 0)
        y0 = max(int(np.floor(corners[:, 1].min())), 0)
        x1 = min(int(np.ceil(corners[:, 0].max())), self.width)
        y1 = min(int(np.ceil(corners[:, 1].max())), self.height)
        if x1 <= x0 or y1 <= y0:
            return
        m_roi = m.copy()
        m_roi[0, 2] -= x0
        m_roi[1, 2] -= y0
        size = (x1 - x0, y1 - y0)
        person = cv2.warpAffine(image, m_roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(alpha, m_roi, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
        if params.uneven_light:
            # A side light: gain ramps across the face, centred on the eye midpoint.
            half = EYE_DISTANCE_PX * params.scale * 1.2
            xs = np.arange(x0, x1, dtype=np.float32) - fx * self.width
            gain = 1.0 + params.uneven_light * np.clip(xs / half, -1.0, 1.0)
            gain_map = cv2.merge([np.broadcast_to(gain, a.shape).astype(np.float32)] * 3)
            person = cv2.multiply(person, gain_map, dtype=cv2.CV_8U)
        roi = frame[y0:y1, x0:x1]
        roi[:] = cv2.blendLinear(person, roi, a, 1.0 - a)

    @staticmethod
    def _occlude(image: np.ndarray, portrait: _Portrait, occlusion: str) -> np.ndarray:
        """Sunglasses over the eyes, or a mask over mouth and chin, in crop coordinates."""
        if occlusion == "none":
            return image
        (lx, ly), (rx, ry) = portrait.eyes
        d = rx - lx
        cx, cy = (lx + rx) / 2, (ly + ry) / 2
        if occlusion == "eyes":
            box = (cx - 0.95 * d, cy - 0.3 * d, cx + 0.95 * d, cy + 0.3 * d)
            colour = (25, 25, 25)
        else:
            box = (cx - 0.9 * d, cy + 0.75 * d, cx + 0.9 * d, cy + 1.9 * d)
            colour = (200, 170, 120)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, -1)
        return image
