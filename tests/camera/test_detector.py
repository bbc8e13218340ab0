"""Detector selection and behaviour that the quality checks rely on."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.camera.detector import HaarDetector, make_detector
from drivers.camera.scene import SceneParams
from station.errors import ConfigError


def test_haar_is_the_default():
    assert isinstance(make_detector({"kind": "haar", "model": ""}), HaarDetector)


def test_yunet_needs_an_existing_model(tmp_path):
    with pytest.raises(ConfigError, match="detector.model"):
        make_detector({"kind": "yunet", "model": ""})
    with pytest.raises(ConfigError, match="no such file"):
        make_detector({"kind": "yunet", "model": str(tmp_path / "face_detection_yunet.onnx")})


def test_blank_frame_has_no_face():
    assert HaarDetector().detect(np.full((720, 1280, 3), 200, np.uint8)) == []


def test_faces_largest_first(scene):
    faces = HaarDetector().detect(scene.render(SceneParams(faces=2), 0))
    assert len(faces) == 2
    assert faces[0].box[2] >= faces[1].box[2]
    assert all(f.eyes is not None and 0 < f.confidence <= 1 for f in faces)


def test_rolled_beyond_cascade_tolerance_is_still_found(scene):
    face = HaarDetector().detect(scene.render(SceneParams(roll_deg=25), 0))
    assert len(face) == 1 and face[0].eyes is not None


class FakeYuNet:
    """cv2.FaceDetectorYN's contract: rows of box, 5 landmarks (right eye first), score."""

    def __init__(self):
        self.size = None

    def setInputSize(self, size):
        self.size = size

    def detect(self, image):
        assert (image.shape[1], image.shape[0]) == self.size
        row = np.array([[100, 50, 80, 80, 150, 80, 120, 81, 135, 100, 125, 115, 145, 115, 0.93]], np.float32)
        return 1, row


def test_yunet_rows_become_faces_in_frame_coordinates(tmp_path, monkeypatch):
    model = tmp_path / "face_detection_yunet.onnx"
    model.write_bytes(b"")
    fake = FakeYuNet()
    monkeypatch.setattr("cv2.FaceDetectorYN.create", lambda *a, **k: fake)
    detector = make_detector({"kind": "yunet", "model": str(model), "detect_width": 320})
    faces = detector.detect(np.zeros((720, 1280, 3), np.uint8))
    assert fake.size == (320, 180)
    (face,) = faces
    assert face.box == (400, 200, 320, 320)           # detected at 1/4 scale
    assert face.eyes == ((480.0, 324.0), (600.0, 320.0))  # image-left eye first
    assert face.confidence == pytest.approx(0.93)
