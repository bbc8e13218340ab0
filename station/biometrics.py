"""Fingerprint biometrics, pure (image in, numbers and bytes out): NFIQ 2 quality,
minutiae and ISO/IEC 19794-2:2005 templates, Bozorth3 comparison, WSQ compression.

Every algorithm is a library's (``nbis-py`` for NBIS mindtct/Bozorth3 and NFIQ 2, ``wsq``
for NIST WSQ); this module owns only the domain decisions around them:

- "no fingerprint" is an answer, not a crash: NFIQ 2 raises on a blank image, so an image
  that NFIQ 2 itself would call uniform or empty is refused before it gets there, and an
  image NFIQ 2 scores low is looked at again with the extractor's SIVV fingerprint check;
  either way the caller gets ``NoFingerprint`` (code ``no_fingerprint``, retryable: place
  the finger again);
- NFIQ 2's actionable feedback is turned into short codes an operator screen can map to a
  hint ("press harder", "clean the glass");
- an impression reaches the library as a file in memory (``_image_file``), never on a disk.

Costs measured on one core of the development machine (288 x 256 at 500 ppi): extractor
creation about 0.2 s (done once, cached), ``assess`` about 80 ms (95 ms for a low NFIQ 2
score, checked again with SIVV), ``compare`` 1-30 ms.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import cv2
import nbis
import numpy as np
import wsq  # noqa: F401  (registers the WSQ codec with Pillow)
from PIL import Image, UnidentifiedImageError

from station.errors import StationError

NFIQ2_PPI = 500  # NFIQ 2 is defined for 500 ppi images only

# NFIQ 2's own actionable-feedback thresholds (NFIQ2 interfacedefinitions: a uniform image
# has grey-level sigma < 1, an empty one mean > 250; fewer than 5 minutiae is no print).
UNIFORM_SIGMA_BELOW = 1.0
EMPTY_MEAN_ABOVE = 250.0
MIN_MINUTIAE = 5
# NFIQ 2 flags fewer than 50,000 foreground pixels, which assumes a larger capture than a
# 288 x 256 R30x window (73,728 pixels: a full, well-placed finger shows ~45,000). We
# flag a foreground below half the window instead.
MIN_FOREGROUND_SHARE = 0.5
# The extractor's SIVV check ("is this a fingerprint at all?") costs about 13 ms a finger
# (95 ms an assessment with it, 82 without). An image NFIQ 2 scores at the usual accept
# level or above is a fingerprint by NFIQ 2's own judgement; below it, the image is
# extracted again with SIVV on, which turns a non-fingerprint into zero minutiae.
SIVV_BELOW_NFIQ2 = 40


class NoFingerprint(StationError):
    """The image holds no fingerprint (empty glass, uniform or featureless image)."""

    code = "no_fingerprint"
    retryable = True


class BiometricsError(StationError):
    """The biometric library failed on input that looked valid (a bug or a corrupt template)."""

    code = "biometrics_failed"


@dataclass(frozen=True)
class FingerQuality:
    """One assessed impression: what the policy decides on and what is stored."""

    nfiq2: int  # 0..100, ISO/IEC 29794-4
    minutiae: int
    template: bytes = field(repr=False)  # ISO/IEC 19794-2:2005 finger minutiae record
    feedback: tuple[str, ...]  # short codes, see ``_feedback``; empty when nothing to say
    actionable: dict[str, float]  # NFIQ 2 actionable-feedback values by NFIQ 2 identifier
    seconds: float  # time spent assessing


@functools.lru_cache(maxsize=4)
def _extractor(ppi: int, sivv: bool) -> nbis.NbisExtractor:
    """Built once per resolution and check: creation loads the NFIQ 2 model (~0.2 s)."""
    settings = nbis.NbisExtractorSettings(
        min_quality=0.0, get_center=False, check_fingerprint=sivv, compute_nfiq2=True, ppi=float(ppi)
    )
    return nbis.new_nbis_extractor(settings)


def warm_up(ppi: int = NFIQ2_PPI, *, assessing: bool = True) -> None:
    """Load the NFIQ 2 model now (at start-up), not during the first applicant's finger;
    ``assessing``: also the extractor with SIVV that a low score needs (a process that
    only compares templates does without)."""
    _extractor(ppi, False)
    if assessing:
        _extractor(ppi, True)


@contextlib.contextmanager
def _image_file(image: np.ndarray) -> Iterator[str]:
    """The impression as a BMP file in memory (a memfd, never on a disk), by its path.

    The extractor takes an encoded image as bytes or as a file. Its binding copies a bytes
    argument into the library one byte at a time, in Python: ~10 ms for a 60 kB PNG, an
    eighth of an assessment. A path costs nothing to pass, and an uncompressed BMP nothing
    to encode or decode. The file is gone when closed.
    """
    ok, bmp = cv2.imencode(".bmp", image)
    if not ok:
        raise BiometricsError(f"could not encode a {image.shape} image for the extractor")
    fd = os.memfd_create("impression", os.MFD_CLOEXEC)
    try:
        view = memoryview(bmp)
        while view:
            view = view[os.write(fd, view):]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _extract(image_file: str, ppi: int, sivv: bool) -> tuple[Any, int, bytes]:
    """NFIQ 2 result, minutiae count and ISO template of one impression's image file."""
    minutiae = _extractor(ppi, sivv).extract_minutiae_from_image_file(image_file)
    return minutiae.quality(), len(minutiae.get()), bytes(minutiae.to_iso_19794_2_2005())


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(
            f"a fingerprint image must be a 2-D uint8 array (grey, 8 bit), not "
            f"{getattr(image, 'dtype', type(image).__name__)} of shape {getattr(image, 'shape', '?')}"
        )


def _feedback(actionable: dict[str, float], image_pixels: int) -> tuple[str, ...]:
    """NFIQ 2's actionable values, judged by its thresholds, as operator-facing codes."""
    codes = []
    if actionable.get("UniformImage", UNIFORM_SIGMA_BELOW) < UNIFORM_SIGMA_BELOW:
        codes.append("uniform_image")
    if actionable.get("EmptyImageOrContrastTooLow", 0.0) > EMPTY_MEAN_ABOVE:
        codes.append("empty_or_low_contrast")
    if actionable.get("FingerprintImageWithMinutiae", MIN_MINUTIAE) < MIN_MINUTIAE:
        codes.append("too_few_minutiae")
    foreground = actionable.get("SufficientFingerprintForeground")
    if foreground is not None and foreground < MIN_FOREGROUND_SHARE * image_pixels:
        codes.append("small_contact_area")
    return tuple(codes)


def assess(image: np.ndarray, ppi: int = NFIQ2_PPI) -> FingerQuality:
    """NFIQ 2, minutiae and the ISO template of one impression.

    Raises ``NoFingerprint`` for an image without a print (retry the capture) and
    ``ValueError`` for an array that is not an 8-bit grey image.
    """
    _check_image(image)
    started = time.perf_counter()
    sigma, mean = float(image.std()), float(image.mean())
    if sigma < UNIFORM_SIGMA_BELOW or mean > EMPTY_MEAN_ABOVE:
        raise NoFingerprint(
            f"no fingerprint in the image (grey mean {mean:.0f}, sigma {sigma:.1f}): "
            "place the finger flat on the glass"
        )
    try:
        with _image_file(image) as image_file:
            result, points, template = _extract(image_file, ppi, sivv=False)
            if result.score < SIVV_BELOW_NFIQ2:
                result, points, template = _extract(image_file, ppi, sivv=True)
    except nbis.NbisError.Nfiq2ComputeFailed as exc:
        raise NoFingerprint(f"NFIQ 2 found no fingerprint to assess ({exc!r}): place the finger again") from exc
    except nbis.NbisError as exc:
        raise BiometricsError(f"minutiae extraction failed: {exc!r}") from exc
    actionable = {value.name: float(value.value) for value in result.actionable}
    if points < MIN_MINUTIAE:
        raise NoFingerprint(
            f"no fingerprint in the image ({points} minutiae, NFIQ 2 {result.score}): "
            "place the finger flat on the glass"
        )
    return FingerQuality(
        nfiq2=int(result.score),
        minutiae=points,
        template=template,
        feedback=_feedback(actionable, image.size),
        actionable=actionable,
        seconds=time.perf_counter() - started,
    )


def compare(template_a: bytes, template_b: bytes) -> int:
    """Bozorth3 similarity of two ISO/IEC 19794-2:2005 templates: the same finger scores
    in the hundreds, different fingers mostly under 40. Not symmetric in general."""
    extractor = _extractor(NFIQ2_PPI, False)
    loaded = []
    for name, template in (("first", template_a), ("second", template_b)):
        try:
            loaded.append(extractor.load_iso_19794_2_2005(bytes(template)))
        except nbis.NbisError as exc:
            raise BiometricsError(
                f"the {name} template is not an ISO/IEC 19794-2:2005 record ({len(template)} bytes): {exc!r}",
                code="bad_template",
            ) from exc
    return int(loaded[0].compare(loaded[1]))


def wsq_encode(image: np.ndarray) -> bytes:
    """NIST WSQ of an 8-bit grey image at 500 ppi.

    The ``wsq`` package's encoder has a fixed bit rate of 0.75 bit/pixel (NIST's setting
    for about 15:1 on full prints; 10-15:1 on a small sensor window) and writes 500 ppi;
    the "ratio" argument of its Pillow plugin is accepted but ignored by its C extension,
    so neither is offered here.
    """
    _check_image(image)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, "WSQ")
    return buffer.getvalue()


def wsq_decode(data: bytes) -> np.ndarray:
    """The grey image of a WSQ file; ValueError when ``data`` is not WSQ."""
    try:
        with Image.open(io.BytesIO(data), formats=["WSQ"]) as image:
            image.load()
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, IndexError) as exc:
        raise ValueError(f"not a decodable WSQ image ({len(data)} bytes): {exc}") from exc
