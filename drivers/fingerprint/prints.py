"""Synthetic fingerprints: one master pattern per finger, many impressions of it.

The emulator needs prints that behave like prints: two impressions of one finger must
share their ridges and minutiae (so a matcher says "same finger"), and two fingers, of one
applicant or of two, must not. So a finger is generated once, deterministically from
(applicant seed, finger position), in the SFinGe manner:

1. a pattern class drawn with roughly real frequencies for that finger position (thumbs
   whorl more, index fingers arch more), cores and deltas placed for that class;
2. an orientation field from those singularities (Sherlock-Monro zero-pole model), an arch
   term and a smooth per-finger perturbation;
3. ridges grown from random seeds by iterated oriented Gabor filtering at the finger's
   ridge period (~9 px at 500 ppi); the random seeds make the minutiae, so they differ
   from finger to finger like real ones.

An impression then moves the master (shift, rotation, a little elastic distortion) and
renders it through the contact of that moment (pressure, dryness, partial contact, sensor
noise). Masters are cached per finger; an impression costs a few milliseconds.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

from drivers.fingerprint.protocol import IMAGE_HEIGHT, IMAGE_WIDTH

# The master canvas is larger than the sensor window so that a shifted or rotated
# impression never shows the canvas edge.
CANVAS_HEIGHT = 384
CANVAS_WIDTH = 360  # a size the DFT likes
_ORIENTATION_BINS = 16
_GROWTH_ITERATIONS = 7


class PatternClass(str, Enum):
    ARCH = "arch"
    TENTED_ARCH = "tented_arch"
    LEFT_LOOP = "left_loop"
    RIGHT_LOOP = "right_loop"
    WHORL = "whorl"


# Approximate class frequencies by finger position (ANSI/NIST positions 1-10: right thumb
# .. right little, left thumb .. left little). Loops lean toward the little finger: ulnar
# loops, which are right loops on the right hand as seen on the sensor.
_CLASS_PRIORS: dict[int, dict[PatternClass, float]] = {}
for _position in range(1, 11):
    _right_hand = _position <= 5
    _digit = (_position - 1) % 5  # 0 thumb .. 4 little
    _whorl = (0.45, 0.32, 0.22, 0.38, 0.20)[_digit]
    _arch = (0.04, 0.13, 0.08, 0.03, 0.03)[_digit]
    _tented = (0.02, 0.08, 0.04, 0.02, 0.02)[_digit]
    _radial = (0.03, 0.18, 0.04, 0.02, 0.02)[_digit]
    _ulnar = 1.0 - _whorl - _arch - _tented - _radial
    _CLASS_PRIORS[_position] = {
        PatternClass.WHORL: _whorl,
        PatternClass.ARCH: _arch,
        PatternClass.TENTED_ARCH: _tented,
        PatternClass.RIGHT_LOOP if _right_hand else PatternClass.LEFT_LOOP: _ulnar,
        PatternClass.LEFT_LOOP if _right_hand else PatternClass.RIGHT_LOOP: _radial,
    }


@dataclass(frozen=True)
class FingerSpec:
    """Everything that makes one finger that finger; coordinates are canvas pixels."""

    applicant_seed: int
    finger_position: int
    pattern: PatternClass
    cores: tuple[tuple[float, float], ...]
    deltas: tuple[tuple[float, float], ...]
    ridge_period_px: float
    arch_strength: float
    pad_axes_px: tuple[float, float]  # half width, half height of the finger pad


@dataclass(frozen=True)
class Conditions:
    """How one impression was taken."""

    shift_px: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    pressure: float = 0.5  # 0 light (thin, broken ridges) .. 1 heavy (thick, merging)
    dryness: float = 0.2  # 0 moist .. 1 dry (gaps along ridges)
    contact: float = 1.0  # share of the pad touching the glass, 0.4 .. 1
    noise: float = 0.03  # sensor noise, as a share of full scale
    distortion_px: float = 2.0  # amplitude of the elastic skin distortion
    blur_px: float = 0.7  # optics and a smudging finger: Gaussian sigma of the image

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Conditions":
        return cls(
            shift_px=(float(rng.normal(0, 10)), float(rng.normal(0, 12))),
            rotation_deg=float(rng.normal(0, 7)),
            pressure=float(rng.uniform(0.3, 0.7)),
            dryness=float(rng.uniform(0.0, 0.35)),
            contact=float(rng.uniform(0.8, 1.0)),
            noise=float(rng.uniform(0.01, 0.05)),
            distortion_px=float(rng.uniform(0.5, 3.0)),
        )

    @classmethod
    def poor(cls, rng: np.random.Generator) -> "Conditions":
        """A bad placement: dry, light, smudged, half on the glass, on a noisy sensor. NFIQ 2 scores
        these well under the usual accept level of 40, as it should."""
        return cls(
            shift_px=(float(rng.normal(0, 10)), float(rng.normal(0, 12))),
            rotation_deg=float(rng.normal(0, 7)),
            pressure=float(rng.uniform(0.0, 0.15)),
            dryness=float(rng.uniform(0.9, 1.0)),
            contact=float(rng.uniform(0.45, 0.5)),
            noise=float(rng.uniform(0.1, 0.15)),
            distortion_px=float(rng.uniform(0.5, 3.0)),
            blur_px=float(rng.uniform(1.0, 1.2)),
        )


def finger_spec(applicant_seed: int, finger_position: int) -> FingerSpec:
    """The finger's identity, drawn deterministically from its seed and position."""
    if not 0 <= finger_position <= 15:
        raise ValueError(f"finger position {finger_position} is not an ANSI/NIST position 0..15")
    rng = np.random.default_rng([applicant_seed & 0xFFFFFFFF, finger_position, 0x5EED])
    priors = _CLASS_PRIORS.get(finger_position, _CLASS_PRIORS[2])
    classes = list(priors)
    pattern = classes[rng.choice(len(classes), p=np.array([priors[c] for c in classes]))]
    cx = CANVAS_WIDTH / 2 + rng.normal(0, 12)
    cy = CANVAS_HEIGHT / 2 - 10 + rng.normal(0, 14)
    cores: list[tuple[float, float]] = []
    deltas: list[tuple[float, float]] = []
    side = -1.0 if pattern == PatternClass.LEFT_LOOP else 1.0
    if pattern in (PatternClass.LEFT_LOOP, PatternClass.RIGHT_LOOP):
        cores = [(cx, cy)]
        deltas = [(cx - side * rng.uniform(60, 100), cy + rng.uniform(80, 120))]
    elif pattern == PatternClass.WHORL:
        spread = rng.uniform(10, 25)
        tilt = rng.normal(0, 6)
        cores = [(cx - tilt, cy - spread), (cx + tilt, cy + spread)]
        deltas = [
            (cx - rng.uniform(80, 115), cy + rng.uniform(85, 125)),
            (cx + rng.uniform(80, 115), cy + rng.uniform(85, 125)),
        ]
    elif pattern == PatternClass.TENTED_ARCH:
        cores = [(cx, cy)]
        deltas = [(cx + rng.normal(0, 6), cy + rng.uniform(45, 65))]
    return FingerSpec(
        applicant_seed=applicant_seed,
        finger_position=finger_position,
        pattern=pattern,
        cores=tuple(cores),
        deltas=tuple(deltas),
        ridge_period_px=float(rng.uniform(8.3, 10.0)),
        arch_strength=float(rng.uniform(0.9, 1.6) if pattern == PatternClass.ARCH else rng.uniform(0.0, 0.4)),
        pad_axes_px=(float(rng.uniform(122, 140)), float(rng.uniform(165, 185))),
    )


def orientation_field(spec: FingerSpec, rng: np.random.Generator) -> np.ndarray:
    """Ridge direction (radians, mod pi) at every canvas pixel."""
    y, x = np.mgrid[0:CANVAS_HEIGHT, 0:CANVAS_WIDTH].astype(np.float32)
    # Image rows grow downward; work in a y-up frame so the zero-pole model reads as usual.
    z = x - 1j * y
    theta = np.zeros(z.shape, dtype=np.float32)
    for dx, dy in spec.deltas:
        theta += 0.5 * np.angle(z - (dx - 1j * dy)).astype(np.float32)
    for cx, cy in spec.cores:
        theta -= 0.5 * np.angle(z - (cx - 1j * cy)).astype(np.float32)
    # Arch term: ridges bow upward over the middle of the pad, fading toward the crease.
    mx = CANVAS_WIDTH / 2
    my = CANVAS_HEIGHT / 2 + 20
    width = 0.32 * CANVAS_WIDTH
    bump = np.exp(-((x - mx) ** 2) / (2 * width**2))
    slope = spec.arch_strength * (x - mx) / width * bump * np.clip(1.2 - (y - my) / 220, 0.0, 1.5)
    theta += np.arctan(slope).astype(np.float32)
    # Smooth per-finger perturbation, weaker near singularities where it would tear them.
    yy, xx = y / CANVAS_HEIGHT, x / CANVAS_WIDTH
    wobble = np.zeros_like(theta)
    for _ in range(4):
        fx, fy = rng.uniform(0.5, 2.0, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        wobble += rng.normal(0, 0.07) * np.cos(2 * np.pi * (fx * xx + fy * yy) + phase)
    theta += wobble
    return np.mod(theta, np.pi)


@functools.lru_cache(maxsize=8)
def _gabor_spectra(period: float, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The Gabor bank as DFT spectra of the canvas size: one forward transform per pass
    and a cheap product per orientation replace a spatial filter per orientation (about
    10x faster; the canvas wraps around, which only touches its unseen margin)."""
    sigma = 0.5 * period
    size = int(2 * round(2.2 * sigma) + 1)
    half = size // 2
    spectra = []
    for k in range(_ORIENTATION_BINS):
        # cv2's theta is the direction of the normal to the stripes; ridges run along theta.
        theta = np.pi * k / _ORIENTATION_BINS + np.pi / 2
        kernel = cv2.getGaborKernel((size, size), sigma, theta, period, 1.0, 0, ktype=cv2.CV_32F)
        kernel -= kernel.mean()
        kernel /= np.abs(kernel).sum()
        padded = np.zeros(shape, dtype=np.float32)
        padded[:size, :size] = kernel
        spectra.append(cv2.dft(np.roll(padded, (-half, -half), axis=(0, 1))))
    return tuple(spectra)


def grow_ridges(orientation: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """A ridge field in [-1, 1] (negative = ridge) following ``orientation``.

    Each pass filters with the Gabor kernel of every orientation bin and keeps, per pixel,
    the blend of the two bins nearest the local orientation; clipping between passes makes
    the pattern settle into ridges of near-constant width.
    """
    spectra = _gabor_spectra(round(period, 1), orientation.shape)
    position = orientation / np.pi * _ORIENTATION_BINS
    lower = (np.floor(position).astype(np.intp) % _ORIENTATION_BINS)[None]
    upper = (lower + 1) % _ORIENTATION_BINS
    weight = (position - np.floor(position)).astype(np.float32)
    field = cv2.GaussianBlur(rng.normal(0, 1, orientation.shape).astype(np.float32), (0, 0), 1.0)
    responses = np.empty((_ORIENTATION_BINS, *orientation.shape), dtype=np.float32)
    for _ in range(_GROWTH_ITERATIONS):
        spectrum = cv2.dft(field)
        for k, kernel in enumerate(spectra):
            responses[k] = cv2.idft(
                cv2.mulSpectrums(spectrum, kernel, 0), flags=cv2.DFT_SCALE | cv2.DFT_REAL_OUTPUT
            )
        out = np.take_along_axis(responses, lower, 0)[0] * (1 - weight)
        out += np.take_along_axis(responses, upper, 0)[0] * weight
        field = np.clip(out * 8.0, -1.0, 1.0)
    return field


@functools.lru_cache(maxsize=32)
def _master(applicant_seed: int, finger_position: int) -> tuple[FingerSpec, np.ndarray]:
    spec = finger_spec(applicant_seed, finger_position)
    rng = np.random.default_rng([applicant_seed & 0xFFFFFFFF, finger_position, 0x41D6E])
    ridges = grow_ridges(orientation_field(spec, rng), spec.ridge_period_px, rng)
    ridges.setflags(write=False)
    return spec, ridges


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean noise with features about ``scale`` pixels across, unit std."""
    small = rng.normal(0, 1, (max(2, int(shape[0] / scale)), max(2, int(shape[1] / scale))))
    big = cv2.resize(small.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return big / (big.std() + 1e-6)


class Quality(str, Enum):
    """How impressions are taken when no explicit ``Conditions`` are given."""

    GOOD = "good"  # ``Conditions.random``: ordinary placements, NFIQ 2 mostly 40-65
    POOR = "poor"  # ``Conditions.poor``: NFIQ 2 well under 40


class SyntheticFinger:
    """One finger of one applicant; ``next_impression()`` is the emulator's print source."""

    def __init__(self, applicant_seed: int = 0, finger_position: int = 2, quality: Quality | str = Quality.GOOD):
        self.spec, self._ridges = _master(applicant_seed, finger_position)
        self.quality = Quality(quality)
        self._impressions = 0

    @property
    def identity(self) -> str:
        return f"applicant {self.spec.applicant_seed} finger {self.spec.finger_position}"

    @property
    def master(self) -> np.ndarray:
        """The ridge field on the master canvas, [-1, 1], negative on ridges."""
        return self._ridges

    def next_impression(self) -> np.ndarray:
        self._impressions += 1
        return self.impression(self._impressions)

    def impression(self, index: int = 0, conditions: Conditions | None = None) -> np.ndarray:
        """Impression ``index`` of this finger (deterministic), 288 x 256 uint8, dark ridges."""
        spec = self.spec
        rng = np.random.default_rng(
            [spec.applicant_seed & 0xFFFFFFFF, spec.finger_position, 0x1A9, index]
        )
        if conditions is None:
            conditions = Conditions.poor(rng) if self.quality == Quality.POOR else Conditions.random(rng)
        return _render(self._ridges, spec, conditions, rng)


def _render(ridges: np.ndarray, spec: FingerSpec, c: Conditions, rng: np.random.Generator) -> np.ndarray:
    h, w = IMAGE_HEIGHT, IMAGE_WIDTH
    # Sensor pixel -> canvas pixel: rotate about the window centre, then shift.
    centre = (w / 2, h / 2)
    matrix = cv2.getRotationMatrix2D(centre, c.rotation_deg, 1.0)
    matrix[0, 2] += (CANVAS_WIDTH - w) / 2 + c.shift_px[0]
    matrix[1, 2] += (CANVAS_HEIGHT - h) / 2 + c.shift_px[1]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    map_y = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    if c.distortion_px:
        map_x += c.distortion_px * _smooth_noise(rng, (h, w), 80.0)
        map_y += c.distortion_px * _smooth_noise(rng, (h, w), 80.0)
    map_x, map_y = map_x.astype(np.float32), map_y.astype(np.float32)
    field = cv2.remap(ridges, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    # Contact: the pad ellipse (in canvas coordinates, so it moves with the finger), shrunk
    # by light pressure and partial placement, with a soft edge.
    pcx, pcy = CANVAS_WIDTH / 2, CANVAS_HEIGHT / 2 + 15
    ax, ay = spec.pad_axes_px
    squeeze = 0.78 + 0.22 * c.pressure
    radius = np.sqrt(((map_x - pcx) / (ax * squeeze)) ** 2 + ((map_y - pcy) / (ay * squeeze)) ** 2)
    contact = np.clip((1.0 - radius) * 8.0, 0.0, 1.0)
    if c.contact < 1.0:
        # Part of the pad lifted: a straight cut at a random angle through the ellipse.
        angle = rng.uniform(0, 2 * np.pi)
        along = ((map_x - pcx) / ax) * np.cos(angle) + ((map_y - pcy) / ay) * np.sin(angle)
        cut = 1.0 - 2.0 * (1.0 - c.contact)
        contact *= np.clip((cut - along) * 6.0, 0.0, 1.0)

    # Pressure thickens ridges; dryness breaks them; both vary across the pad.
    bias = 0.5 * (c.pressure - 0.5) + 0.15 * _smooth_noise(rng, (h, w), 40.0)
    ink = np.clip((bias - field) * 1.6 + 0.5, 0.0, 1.0)
    if c.dryness > 0:
        pores = _smooth_noise(rng, (h, w), 3.0)
        ink *= np.clip(1.0 - c.dryness * np.clip(pores + 0.3, 0.0, None), 0.0, 1.0)
    darkness = 0.82 * ink * contact
    image = 1.0 - darkness
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), c.blur_px)
    image += rng.normal(0, c.noise, image.shape).astype(np.float32)
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)
