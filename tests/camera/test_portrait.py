"""Token portrait: ISO/IEC 19794-5 token geometry, JFIF record copy, chip copy in budget."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from drivers.camera.scene import SceneParams
from drivers.camera.portrait import token_geometry, token_portrait
from station.errors import ConfigError


def _marked(scene, params):
    """A frame with a small red dot painted at each true eye centre."""
    image = scene.render(params, 0).copy()
    eyes = scene.eye_centres(params)
    for x, y in eyes:
        cv2.circle(image, (round(x), round(y)), 3, (0, 0, 255), -1, lineType=cv2.LINE_AA)
    return image, eyes


def _red_blobs(image):
    b, g, r = cv2.split(image.astype(np.int16))
    mask = ((r - np.maximum(b, g)) > 120).astype(np.uint8)
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    blobs = [tuple(c) for c, s in zip(centroids[1:], stats[1:]) if s[cv2.CC_STAT_AREA] >= 4]
    return sorted(blobs)


def test_geometry_for_480():
    assert token_geometry(480) == (640, (179.0, 288.0), (299.0, 288.0))


@pytest.mark.parametrize("params", [SceneParams(), SceneParams(roll_deg=9, x=0.45, scale=1.3),
                                    SceneParams(roll_deg=-6, scale=0.8, y=0.38), SceneParams(scale=2.2)])
def test_eyes_land_within_2px_of_iso_geometry(scene, params):
    image, eyes = _marked(scene, params)
    token = token_portrait(image, eyes, {"width": 480})
    height, first, second = token_geometry(480)
    assert token.image.shape == (height, 480, 3)
    # Where the dots actually ended up in the pixels, not only what the transform claims.
    found = _red_blobs(token.image)
    assert len(found) == 2, found
    for got, want in zip(found, (first, second)):
        assert math.dist(got, want) <= 2.0, (found, first, second)
    for got, want in zip(token.eyes, (first, second)):
        assert math.dist(got, want) <= 0.01


def test_encodings(scene):
    params = SceneParams()
    token = token_portrait(scene.render(params, 0), scene.eye_centres(params),
                           {"width": 480, "chip_budget_bytes": 18000})
    assert token.record_jpeg[:2] == b"\xff\xd8" and token.record_jpeg[6:11] == b"JFIF\x00"
    assert 15000 <= len(token.chip_image) <= 18000 and token.chip_format == "jpeg2000"
    decoded = cv2.imdecode(np.frombuffer(token.chip_image, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == token.image.shape
    assert cv2.PSNR(decoded, token.image) > 30
    assert token.geometry() == {"width": 480, "height": 640, "eyes": [[179.0, 288.0], [299.0, 288.0]],
                                "padded": False, "record_bytes": len(token.record_jpeg),
                                "chip_format": "jpeg2000", "chip_bytes": len(token.chip_image)}
    jpeg_chip = token_portrait(token.image, token.eyes, {"chip_format": "jpeg", "chip_budget_bytes": 18000})
    assert jpeg_chip.chip_format == "jpeg" and len(jpeg_chip.chip_image) <= 18000


def test_padding_is_reported(scene):
    params = SceneParams(y=0.2)
    token = token_portrait(scene.render(params, 0), scene.eye_centres(params))
    assert token.padded


def test_config_section_is_accepted_and_checked(scene, defaults):
    image, eyes = scene.render(SceneParams(), 0), scene.eye_centres(SceneParams())
    assert token_portrait(image, eyes, defaults["token"]).width == defaults["token"]["width"]
    with pytest.raises(ConfigError, match="token.width"):
        token_portrait(image, eyes, {"width": 200})
    with pytest.raises(ConfigError, match="token.quality"):
        token_portrait(image, eyes, {"quality": 90})
