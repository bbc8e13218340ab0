"""The emulated scene: deterministic, fast, and its ground truth matches what is drawn."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from drivers.camera.detector import HaarDetector
from drivers.camera.scene import Scene, SceneParams


def test_deterministic_for_a_seed(scene):
    again = Scene(1280, 720, seed=0)
    params = SceneParams(background="cluttered", roll_deg=4)
    assert np.array_equal(scene.render(params, 7), again.render(params, 7))
    assert not np.array_equal(scene.render(params, 7), scene.render(params, 8))


def test_render_under_10ms(scene):
    params = SceneParams(x=0.47, roll_deg=3)
    scene.render(params, 0)
    start = time.perf_counter()
    for i in range(30):
        frame = scene.render(params, i)
    per_frame = (time.perf_counter() - start) / 30
    assert frame.shape == (720, 1280, 3) and frame.dtype == np.uint8
    assert per_frame < 0.010, f"{per_frame * 1e3:.1f} ms"


def test_configurable_size():
    small = Scene(640, 480, seed=1)
    assert small.render(SceneParams(scale=0.6), 0).shape == (480, 640, 3)


@pytest.mark.parametrize("params", [SceneParams(), SceneParams(roll_deg=12), SceneParams(scale=0.7, x=0.35),
                                    SceneParams(scale=1.4, y=0.45)])
def test_eye_truth_matches_detected_eyes(scene, params):
    face = HaarDetector().detect(scene.render(params, 0))[0]
    for truth, seen in zip(scene.eye_centres(params), face.eyes):
        assert math.dist(truth, seen) < 6
    (lx, ly), (rx, ry) = face.eyes
    assert math.degrees(math.atan2(ly - ry, rx - lx)) == pytest.approx(params.roll_deg, abs=1.5)


def test_bad_params_refused():
    with pytest.raises(ValueError):
        SceneParams(background="beach")
    with pytest.raises(ValueError):
        SceneParams(faces=3)
