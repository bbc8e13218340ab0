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


def _scene_frames(params_list):
    from drivers.camera.scene import Scene
    scene = Scene()
    return [scene.render(p, i) for i, p in enumerate(params_list)]


def test_tracking_finds_the_same_face_and_eyes_as_a_full_search():
    from drivers.camera.detector import HaarDetector, TrackingDetector
    from drivers.camera.scene import SceneParams
    frames = _scene_frames([SceneParams(x=0.5 + 0.004 * i, y=0.42 - 0.002 * i, scale=1.0 + 0.01 * i)
                            for i in range(12)])  # an applicant settling in front of the camera
    full, tracking = HaarDetector(), TrackingDetector(HaarDetector(), full_every=3)
    for frame in frames:
        expected, got = full.detect(frame), tracking.detect(frame)
        assert len(expected) == len(got) == 1
        for (ex, ey), (gx, gy) in zip(expected[0].eyes, got[0].eyes, strict=True):
            assert abs(ex - gx) <= 2.5 and abs(ey - gy) <= 2.5
    assert tracking.full_searches == 4  # frames 0, 3, 6, 9: two of every three were tracked


def test_a_second_person_is_seen_by_the_next_full_search():
    from drivers.camera.detector import HaarDetector, TrackingDetector
    from drivers.camera.scene import SceneParams
    frames = _scene_frames([SceneParams()] * 2 + [SceneParams(faces=2)] * 4)
    tracking = TrackingDetector(HaarDetector(), full_every=3)
    counts = [len(tracking.detect(frame)) for frame in frames]
    assert counts[:2] == [1, 1]
    assert 2 in counts[2:5], f"two faces must show within full_every frames: {counts}"
    assert counts[-1] == 2  # once seen, no face is tracked: every frame is a full search


def test_the_live_stream_tracks_but_a_still_image_never_does():
    from drivers.camera.detector import HaarDetector, TrackingDetector, make_detector
    cfg = {"kind": "haar", "full_search_every": 3}
    assert isinstance(make_detector(cfg), HaarDetector)
    stream = make_detector(cfg, stream_window=5)
    assert isinstance(stream, TrackingDetector) and stream.full_every == 3
    assert make_detector(cfg, stream_window=2).full_every == 2  # never longer than the capture streak
    assert isinstance(make_detector({**cfg, "full_search_every": 1}, stream_window=5), HaarDetector)
