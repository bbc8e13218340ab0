"""Frame sources: image folders, emulated pacing, V4L2 errors and settings read-back."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from drivers.camera.source import EmulatedSource, V4L2Source, VideoSource, make_source, open_source
from station.errors import ConfigError, DeviceError


def test_folder_source_loops_in_name_order(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((48, 64, 3), 40 * (i + 1), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source({"kind": "folder", "path": str(tmp_path), "fps": 0})
    frames = [source.read() for _ in range(5)]
    source.close()
    assert [int(f.image[0, 0, 0]) for f in frames] == [40, 80, 120, 40, 80]
    assert [f.index for f in frames] == list(range(5))
    assert all(b.t_acq_ns >= a.t_acq_ns for a, b in zip(frames, frames[1:]))
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (48, 64, 3)


def test_folder_source_without_loop_ends_with_device_error(tmp_path):
    cv2.imwrite(str(tmp_path / "only.jpg"), np.zeros((8, 8, 3), np.uint8))
    with VideoSource(str(tmp_path), loop=False) as source:
        source.read()
        with pytest.raises(DeviceError, match=str(tmp_path)):
            source.read()


def test_empty_or_missing_folder_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="no images"):
        VideoSource(str(tmp_path)).open()
    with pytest.raises(DeviceError, match="no such"):
        VideoSource(str(tmp_path / "gone")).open()


def test_emulated_source_paces_to_fps():
    source = EmulatedSource(640, 360, fps=40)
    source.open()
    source.read()
    start = time.monotonic()
    frames = [source.read() for _ in range(12)]
    elapsed = time.monotonic() - start
    assert elapsed >= 12 / 40 * 0.9, elapsed   # never faster than the frame rate
    gaps = np.diff([f.t_acq_ns for f in frames]) / 1e6
    assert abs(float(np.median(gaps)) - 25.0) < 5, gaps
    assert frames[0].image.shape == (360, 640, 3)
    assert not np.array_equal(frames[0].image, frames[1].image)   # sensor noise


def test_every_source_decodes_a_frame_read_undecoded_until_the_next_read(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((48, 64, 3), 40 * (i + 1), np.uint8))
    emulated, twin = EmulatedSource(320, 240, fps=0), EmulatedSource(320, 240, fps=0)
    fakes = []
    by_id = tmp_path / "usb-Acme_Cam-video-index0"
    by_id.write_text("")
    v4l2 = V4L2Source(str(by_id), width=64, height=48, capture_factory=lambda *a: fakes.append(FakeCapture(*a))
                      or fakes[-1])
    folder = VideoSource(str(tmp_path), fps=0)
    for source in (emulated, twin, v4l2, folder):
        source.open()
    frame = emulated.read(decode=False)
    assert frame.image is None
    # The same pixels a decoding read would have given (the emulated scene is deterministic).
    assert np.array_equal(emulated.decode(frame).image, twin.read().image)
    assert folder.decode(folder.read(decode=False)).image[0, 0, 0] == 40
    assert v4l2.decode(v4l2.read(decode=False)).image.shape == (48, 64, 3)
    for source in (emulated, folder, v4l2):
        stale = source.read(decode=False)
        source.read(decode=False)
        with pytest.raises(DeviceError, match="no longer"):
            source.decode(stale)
        decoded = source.read()
        assert source.decode(decoded) is decoded   # a decoded frame is returned as it is


def test_emulated_source_scene_changes_live():
    source = EmulatedSource(640, 360, fps=0)
    source.open()
    accepted = source.apply({"scene": {"faces": 0}, "fps": 25})
    assert accepted["scene"]["faces"] == 0 and accepted["fps"] == 25 and accepted["exposure"] is None
    assert source.params.faces == 0
    with pytest.raises(ConfigError, match="source.scene.tilt"):
        source.apply({"scene": {"tilt": 3}})
    with pytest.raises(ConfigError, match="source.scene"):
        source.apply({"scene": {"faces": 5}})


def test_v4l2_missing_device_names_the_path():
    path = "/dev/v4l/by-id/usb-no-such-camera-video-index0"
    with pytest.raises(DeviceError, match=path):
        open_source({"kind": "v4l2", "device": path})


class FakeCapture:
    """Stands in for cv2.VideoCapture: clamps like a real UVC camera, then can be unplugged."""

    def __init__(self, target, api):
        self.target, self.api = target, api
        self.props = {cv2.CAP_PROP_AUTO_EXPOSURE: 3, cv2.CAP_PROP_AUTO_WB: 1}
        self.plugged = True

    def isOpened(self):
        return True

    def set(self, prop, value):
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            value = min(value, 1920)
        if prop == cv2.CAP_PROP_FPS:
            value = min(value, 30)
        self.props[prop] = value
        return True

    def get(self, prop):
        return float(self.props.get(prop, 0))

    def grab(self):
        self.grabbed = self.plugged
        return self.plugged

    def retrieve(self):
        if not self.grabbed:
            return False, None
        return True, np.zeros((int(self.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(self.get(cv2.CAP_PROP_FRAME_WIDTH)), 3),
                              np.uint8)

    def release(self):
        pass


def test_v4l2_missing_index_names_it():
    with pytest.raises(DeviceError, match="^97: no such camera"):
        V4L2Source("97").open()


def test_v4l2_reports_what_the_device_accepted(tmp_path):
    by_id = tmp_path / "usb-Acme_Cam-video-index0"
    by_id.write_text("")        # stands in for the device node the by-id link points at
    fakes = []
    source = V4L2Source(str(by_id), width=4000, height=1080, fps=60, fourcc="MJPG", exposure=150, gain=8,
                        white_balance=None, capture_factory=lambda *a: fakes.append(FakeCapture(*a)) or fakes[-1])
    source.open()
    assert fakes[0].target == str(by_id.resolve()) and fakes[0].api == cv2.CAP_V4L2
    assert source.accepted == {"fourcc": "MJPG", "width": 1920, "height": 1080, "fps": 30.0,
                               "exposure": 150.0, "gain": 8.0, "white_balance": None}
    assert source.read().image.shape == (1080, 1920, 3)
    accepted = source.apply({"exposure": None, "white_balance": 5000})
    assert accepted["exposure"] is None and accepted["white_balance"] == 5000.0
    fakes[0].plugged = False
    with pytest.raises(DeviceError, match=f"^{by_id}: no frame"):
        source.read()
    # The whole source section may be handed over; only live settings are applied.
    assert source.apply({"kind": "v4l2", "device": str(by_id), "gain": 4})["gain"] == 4.0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="source.device"):
        make_source({"kind": "v4l2", "device": ""})
    with pytest.raises(ConfigError, match="source.kind"):
        make_source({"kind": "gige"})


def test_defaults_make_an_emulated_source(defaults):
    source = open_source(defaults["source"])
    try:
        frame = source.read()
        assert frame.image.shape == (defaults["source"]["height"], defaults["source"]["width"], 3)
    finally:
        source.close()
