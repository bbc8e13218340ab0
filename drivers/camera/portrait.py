"""Token portrait: the captured face cropped to the ISO/IEC 19794-5 token geometry.

ISO/IEC 19794-5:2005, Token Face Image Type, fixes the whole geometry by the image width W
(coordinates from the top-left pixel, x to the right, y down):

    image height                        W / 0.75          (so W:H = 3:4)
    y of both eye centres               0.6 * W           (= 0.45 H from the top)
    x of the first eye (image left,
      the subject's right eye)          0.375 * W - 1
    x of the second eye                 0.625 * W - 1
    eye to eye                          0.25 * W
    minimum width                       240 px            (60 px between the eyes)

The constants below are those of the standard's table for the token type (recalled, not
re-read: no copy of the standard was reachable from here, so check them against your copy
before certification). Everything else in this module is derived from them.

The record keeps a JPEG (JFIF) of the token; the chip's DG2 gets a second, smaller
encoding within a byte budget (ICAO's usual 15-20 KB): JPEG 2000 (Pillow's OpenJPEG, the
irreversible 9/7 wavelet) whose rate control is given the budget itself, so one encoding
normally fills it; or, where that codec is missing or configured away, baseline JPEG at
the highest quality that fits.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, features

from station.errors import ConfigError

Point = tuple[float, float]

TOKEN_HEIGHT_PER_WIDTH = 1 / 0.75
EYE_Y_PER_WIDTH = 0.6
FIRST_EYE_X_PER_WIDTH = 0.375
SECOND_EYE_X_PER_WIDTH = 0.625
MIN_TOKEN_WIDTH = 240


def token_geometry(width: int) -> tuple[int, Point, Point]:
    """(height, first eye, second eye) of a token image ``width`` pixels wide."""
    height = round(width * TOKEN_HEIGHT_PER_WIDTH)
    y = EYE_Y_PER_WIDTH * width
    return height, (FIRST_EYE_X_PER_WIDTH * width - 1, y), (SECOND_EYE_X_PER_WIDTH * width - 1, y)


@dataclass(frozen=True)
class TokenPortrait:
    image: np.ndarray            # BGR, width x width*4/3
    eyes: tuple[Point, Point]    # where the eye centres are in ``image`` (image-left first)
    record_jpeg: bytes           # JFIF, for the enrolment record
    chip_image: bytes            # DG2 image encoding, within the chip budget
    chip_format: str             # "jpeg2000" or "jpeg"
    padded: bool                 # part of the token lay outside the camera frame (edges repeated)

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def height(self) -> int:
        return self.image.shape[0]

    def geometry(self) -> dict:
        """JSON-able facts about the token for a capture reply or a record."""
        return {"width": self.width, "height": self.height,
                "eyes": [[round(x, 2), round(y, 2)] for x, y in self.eyes],
                "padded": self.padded, "record_bytes": len(self.record_jpeg),
                "chip_format": self.chip_format, "chip_bytes": len(self.chip_image)}


TOKEN_DEFAULTS = {"width": 480, "jpeg_quality": 92, "chip_budget_bytes": 18000, "chip_format": "jpeg2000"}


def token_portrait(image: np.ndarray, eyes: tuple[Point, Point], cfg: dict | None = None) -> TokenPortrait:
    """Level the eye line, scale to 0.25 W between the eyes and crop to the token frame.

    ``cfg`` is the ``token`` config section (width, jpeg_quality, chip_budget_bytes,
    chip_format); missing keys take ``TOKEN_DEFAULTS``.
    """
    unknown = sorted(set(cfg or {}) - set(TOKEN_DEFAULTS))
    if unknown:
        raise ConfigError([f"token.{k}: not a token option" for k in unknown])
    opts = {**TOKEN_DEFAULTS, **(cfg or {})}
    width = int(opts["width"])
    if width < MIN_TOKEN_WIDTH:
        raise ConfigError([f"token.width: {width} px is below the ISO/IEC 19794-5 minimum of {MIN_TOKEN_WIDTH}"])
    (lx, ly), (rx, ry) = sorted(eyes, key=lambda p: p[0])
    height, first, second = token_geometry(width)
    scale = (second[0] - first[0]) / math.hypot(rx - lx, ry - ly)
    source = image
    if scale < 0.66:
        # Shrinking a lot in one warp aliases hair and skin texture: area-average first.
        source = cv2.resize(image, None, fx=scale * 1.5, fy=scale * 1.5, interpolation=cv2.INTER_AREA)
        lx, ly, rx, ry = (v * scale * 1.5 for v in (lx, ly, rx, ry))
        scale = 1 / 1.5
    angle = math.degrees(math.atan2(ry - ly, rx - lx))   # rotating by this levels the eyes
    m = cv2.getRotationMatrix2D(((lx + rx) / 2, (ly + ry) / 2), angle, scale)
    m[0, 2] += (first[0] + second[0]) / 2 - (lx + rx) / 2
    m[1, 2] += first[1] - (ly + ry) / 2
    token = cv2.warpAffine(source, m, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    placed = tuple(tuple(float(v) for v in m @ np.array([x, y, 1.0])) for x, y in ((lx, ly), (rx, ry)))
    ok, jpeg = cv2.imencode(".jpg", token, [cv2.IMWRITE_JPEG_QUALITY, int(opts["jpeg_quality"])])
    if not ok:
        raise RuntimeError("OpenCV could not encode the token portrait as JPEG")
    chip, fmt = encode_for_chip(token, int(opts["chip_budget_bytes"]), opts["chip_format"])
    return TokenPortrait(token, placed, jpeg.tobytes(), chip, fmt, _outside(m, source.shape, width, height))


def _outside(m: np.ndarray, shape: tuple[int, ...], width: int, height: int) -> bool:
    """Whether any token corner maps back outside the source frame (edge pixels repeated)."""
    back = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], float)
    src = corners @ back.T
    h, w = shape[:2]
    return bool((src[:, 0] < 0).any() or (src[:, 1] < 0).any() or (src[:, 0] > w - 1).any() or (src[:, 1] > h - 1).any())


def encode_for_chip(image: np.ndarray, budget_bytes: int, preferred: str = "jpeg2000") -> tuple[bytes, str]:
    """The best-quality encoding of ``image`` (BGR) that fits ``budget_bytes``, and its format."""
    if preferred == "jpeg2000" and features.check("jpg_2000"):
        data = _jpeg2000_within(image, budget_bytes)
        if data is not None:
            return data, "jpeg2000"
    data = _search(lambda q: _encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, q]), 5, 95, budget_bytes)
    if data is not None:
        return data, "jpeg"
    raise ConfigError([f"token.chip_budget_bytes: the token portrait does not fit {budget_bytes} bytes even at "
                       "the lowest quality; raise the budget or lower token.width"])


# The JP2 boxes around the codestream (signature, file type, header, colour) take about
# 90 bytes; OpenJPEG's rate control sizes the codestream alone, and lands within a few
# bytes of its target.
JP2_HEADROOM_BYTES = 128
JP2_ATTEMPTS = 3


def _jpeg2000_within(image: np.ndarray, budget: int) -> bytes | None:
    """A JP2 file filling ``budget``: the compression ratio (raw bytes over the target) is
    OpenJPEG's own quality layer, so the first encoding almost always fits; one that does
    not is redone with the target lowered by the overshoot."""
    rgb = Image.fromarray(np.ascontiguousarray(image[..., ::-1]))
    target = budget - JP2_HEADROOM_BYTES
    for _ in range(JP2_ATTEMPTS):
        if target <= 0:
            return None
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG2000", quality_mode="rates", quality_layers=[image.nbytes / target],
                 irreversible=True)
        data = buffer.getvalue()
        if len(data) <= budget:
            return data
        target -= len(data) - budget + JP2_HEADROOM_BYTES
    return None


def prepare_jpeg2000() -> None:
    """At a camera daemon's start: let OpenJPEG encode on every core this process may use
    (it reads ``OPJ_NUM_THREADS`` when a codec is created; a value already set is kept),
    since the chip portrait is encoded while the officer waits and two cores halve it; and
    load the codec now, which makes the first encoding about 70 ms slower, not during the
    first applicant's portrait."""
    os.environ.setdefault("OPJ_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    if features.check("jpg_2000"):
        _jpeg2000_within(np.full((64, 48, 3), 128, np.uint8), 2000)


def _encode(image: np.ndarray, ext: str, params: list[int]) -> bytes | None:
    try:
        ok, buf = cv2.imencode(ext, image, params)
    except cv2.error:
        return None          # this OpenCV build lacks the codec
    return buf.tobytes() if ok else None


def _search(encode, lo: int, hi: int, budget: int) -> bytes | None:
    """The highest quality setting in [lo, hi] whose encoding fits the budget (size grows
    with the setting, so a binary search)."""
    first = encode(lo)
    if first is None or len(first) > budget:
        return None
    best = first
    while lo < hi:
        mid = (lo + hi + 1) // 2
        data = encode(mid)
        if data is not None and len(data) <= budget:
            best, lo = data, mid
        else:
            hi = mid - 1
    return best
