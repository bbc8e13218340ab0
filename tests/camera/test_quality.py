"""Face quality on the emulated camera: the right check fails with the right hint."""
from __future__ import annotations

import json

import cv2
import pytest

from drivers.camera.scene import SceneParams


def test_centred_face_passes(scene, analyzer):
    for index in range(5):
        report = analyzer.analyze(scene.render(SceneParams(), index))
        assert report.passed, report.to_dict()
        assert report.hint is None
        assert report.checks["inter_eye_px"].value >= 90
        assert abs(report.checks["roll_deg"].value) < 2
        assert report.score > 80
        assert report.eyes == report.face.eyes and report.eyes is not None


# (scene, the check that must fail, the hint the operator must see)
DEGRADED = {
    "no face": (SceneParams(faces=0), "face_count", "no face found — step in front of the camera"),
    "no face, cluttered room": (SceneParams(faces=0, background="cluttered"), "face_count",
                                "no face found — step in front of the camera"),
    "two faces": (SceneParams(faces=2), "face_count", "only one person in the picture"),
    "too small": (SceneParams(scale=0.55), "inter_eye_px", "move closer"),
    "rolled 15 degrees": (SceneParams(roll_deg=15), "roll_deg", "keep your head level"),
    "rolled -15 degrees": (SceneParams(roll_deg=-15), "roll_deg", "keep your head level"),
    "blurred": (SceneParams(blur_sigma=3), "sharpness", "hold still"),
    "dark": (SceneParams(brightness=0.35), "exposure", "too dark — add light"),
    "half-lit from the left": (SceneParams(uneven_light=-0.6), "illumination_symmetry",
                               "light is uneven — light both sides of the face"),
    "half-lit from the right": (SceneParams(uneven_light=0.8), "illumination_symmetry",
                                "light is uneven — light both sides of the face"),
    "off centre": (SceneParams(x=0.3), "centring", "move to the centre"),
    "turned away": (SceneParams(yaw_deg=-25), "yaw", "look straight at the camera"),
    "cluttered background": (SceneParams(background="cluttered"), "background_uniformity",
                             "use a plain background behind the person"),
}


@pytest.mark.parametrize("case", DEGRADED)
def test_degraded_frame_fails_on_the_right_check(scene, analyzer, case):
    params, check, hint = DEGRADED[case]
    report = analyzer.analyze(scene.render(params, 1))
    assert not report.passed
    assert not report.checks[check].passed, report.to_dict()
    assert report.hint == hint, report.to_dict()


def test_only_the_degraded_check_fails_for_single_causes(scene, analyzer):
    """A dark face is not also called blurred, a blurred one not also mis-posed."""
    for params, checks in ((SceneParams(brightness=0.35), {"exposure"}),
                           (SceneParams(blur_sigma=3), {"sharpness"}),
                           (SceneParams(roll_deg=15), {"roll_deg"}),
                           (SceneParams(scale=0.55), {"inter_eye_px", "face_size"})):
        report = analyzer.analyze(scene.render(params, 2))
        assert report.failed and set(report.failed) <= checks, (params, report.to_dict())


def test_two_faces_counted(scene, analyzer):
    report = analyzer.analyze(scene.render(SceneParams(faces=2), 0))
    assert report.checks["face_count"].value == 2
    assert report.score == 0


def test_score_orders_blur_then_darkness_series(scene, analyzer):
    series = [SceneParams(blur_sigma=b) for b in (0, 1, 2, 3, 4.5)]
    series += [SceneParams(blur_sigma=4.5, brightness=k) for k in (0.7, 0.5, 0.35, 0.25)]
    scores = []
    for params in series:
        per_frame = [analyzer.analyze(scene.render(params, i)).score for i in range(3)]
        scores.append(sum(per_frame) / len(per_frame))
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[0] > 80 and scores[-1] < 50


def test_report_is_json(scene, analyzer):
    report = analyzer.analyze(scene.render(SceneParams(roll_deg=8), 0))
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d) == {"passed", "score", "hint", "hint_code", "checks", "face"}
    assert d["checks"]["roll_deg"] == {"value": pytest.approx(8, abs=1.5), "passed": False, "max": 5.0}
    assert d["checks"]["exposure"]["min"] == 90 and d["checks"]["exposure"]["max"] == 235
    assert len(d["face"]["box"]) == 4 and len(d["face"]["eyes"]) == 2
    nobody = json.loads(json.dumps(analyzer.analyze(scene.render(SceneParams(faces=0), 0)).to_dict()))
    assert nobody["face"] is None and nobody["passed"] is False


def test_grey_frames_are_analysed(scene, analyzer):
    grey = cv2.cvtColor(scene.render(SceneParams(), 0), cv2.COLOR_BGR2GRAY)
    report = analyzer.analyze(grey)
    assert report.passed and report.checks["yaw"].value is None
