"""The MJPEG stream: splitting (pure), the FIFO reader's timeouts and EOF, the emulator's
control commands and plug state."""
from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np
import pytest

from drivers.camera.emulator import STALLED, UNPLUGGED, USAGE, WAITING, CameraEmulator, parse_assignments
from drivers.camera.mjpeg import MjpegSplitter
from drivers.camera.source import EmulatedSource, StreamSource, make_source
from drivers.emulation import answer
from station.errors import DeviceError


def jpeg(value: int, size=(48, 64), **params) -> bytes:
    image = np.full((*size, 3), value, np.uint8)
    image[::7, ::5] = 255 - value          # some texture: entropy data with FF bytes stuffed
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if params.get("progressive") else []
    return cv2.imencode(".jpg", image, flags)[1].tobytes()


def with_app_segment(image: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment (as EXIF would) right after SOI."""
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return image[:2] + segment + image[2:]


def test_splitter_finds_each_image_whatever_the_chunking():
    images = [jpeg(30), jpeg(90, progressive=True), with_app_segment(jpeg(150), b"thumb\xff\xd9\xff\xd8x"), jpeg(210)]
    stream = b"".join(images)
    for chunk in (1, 3, 1000, len(stream)):
        splitter = MjpegSplitter()
        out = []
        for i in range(0, len(stream), chunk):
            out += splitter.feed(stream[i:i + chunk])
        assert out == images, chunk
        assert splitter.skipped_bytes == 0


def test_splitter_resynchronises_after_joining_mid_image_and_noise():
    a, b, c = jpeg(40), jpeg(120), jpeg(200)
    splitter = MjpegSplitter()
    assert splitter.feed(a[len(a) // 2:] + b"\x00\x13line noise" + b + c) == [b, c]
    assert splitter.skipped_bytes >= len(a) // 2


def test_splitter_drops_truncated_and_endless_images():
    good = jpeg(80)
    splitter = MjpegSplitter(max_image_bytes=2000)
    assert splitter.feed(good[:len(good) // 2] + good) == [good]     # the writer cut a frame short
    endless = good[:-2] + bytes(5000)        # entropy data with no end-of-image marker yet
    assert splitter.feed(endless) == [] and splitter.oversized == 1
    assert splitter.feed(good) == [good]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "cam.mjpeg"
    os.mkfifo(path)
    return path


def writer(path) -> int:
    return os.open(path, os.O_WRONLY | os.O_NONBLOCK)


def test_video_kind_on_a_fifo_is_a_stream_source(fifo, tmp_path):
    assert isinstance(make_source({"kind": "video", "path": str(fifo)}), StreamSource)
    assert not isinstance(make_source({"kind": "video", "path": str(tmp_path / "clip.mp4")}), StreamSource)


def test_stream_without_writer_fails_open_within_the_timeout(fifo):
    source = StreamSource(str(fifo), read_timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(DeviceError, match="no frame within 0.3 s"):
        source.open()
    assert time.monotonic() - start < 0.6
    with pytest.raises(DeviceError, match="no such stream"):
        StreamSource(str(fifo.parent / "absent")).open()


def test_stream_delivers_the_newest_frame_then_reports_stall_and_eof(fifo):
    source = StreamSource(str(fifo), read_timeout_s=0.3)
    fd = None
    try:
        # The reader opens first, as the daemon does; the writer joins while open() waits.
        fd_holder = []

        def join_and_write():
            time.sleep(0.1)
            fd_holder.append(writer(fifo))
            os.write(fd_holder[0], jpeg(10))

        thread = threading.Thread(target=join_and_write)
        thread.start()
        source.open()
        thread.join()
        fd = fd_holder[0]
        assert int(source.read().image[1, 1, 0]) == pytest.approx(10, abs=3)
        os.write(fd, jpeg(60) + jpeg(110) + jpeg(160))
        frame = source.read()
        assert int(frame.image[1, 1, 0]) == pytest.approx(160, abs=3) and frame.index == 1
        assert source.dropped == 2 and source.apply({"exposure": 5}) == {"width": 64, "height": 48}
        start = time.monotonic()
        with pytest.raises(DeviceError, match="stalled"):
            source.read()
        assert 0.25 < time.monotonic() - start < 0.6
        os.write(fd, jpeg(200))
        os.close(fd)
        fd = None
        assert int(source.read().image[1, 1, 0]) == pytest.approx(200, abs=3)
        start = time.monotonic()
        with pytest.raises(DeviceError, match="stream ended"):
            source.read()
        assert time.monotonic() - start < 0.3  # at once, not after the read timeout
    finally:
        source.close()
        if fd is not None:
            os.close(fd)


def test_a_frame_taken_off_undecoded_is_decoded_until_the_next_read(fifo):
    source = StreamSource(str(fifo), read_timeout_s=0.5)
    holder = []
    thread = threading.Thread(target=lambda: (time.sleep(0.1), holder.append(writer(fifo)),
                                              os.write(holder[0], jpeg(10))))
    thread.start()
    try:
        source.open()
        thread.join()
        first = source.read(decode=False)  # the frame open() waited for (and decoded)
        assert int(source.decode(first).image[1, 1, 0]) == pytest.approx(10, abs=3)
        os.write(holder[0], jpeg(60) + jpeg(110))
        frame = source.read(decode=False)
        assert frame.image is None and source.dropped == 1
        decoded = source.decode(frame)
        assert decoded.index == frame.index and decoded.t_acq_ns == frame.t_acq_ns
        assert int(decoded.image[1, 1, 0]) == pytest.approx(110, abs=3)   # the newest, as read() gives
        os.write(holder[0], jpeg(160))
        source.read(decode=False)
        with pytest.raises(DeviceError, match="no longer in the stream"):
            source.decode(frame)
    finally:
        source.close()
        for fd in holder:
            os.close(fd)


def test_emulator_control_commands_and_plug_state(tmp_path):
    path = tmp_path / "video.mjpeg"
    emulator = CameraEmulator(path, EmulatedSource(320, 240, fps=0))

    def command(line: str) -> str:  # what the control channel answers
        return answer(emulator.command, line, USAGE)

    emulator.plug()
    assert emulator.state == WAITING and path.is_fifo()
    assert command("stall") == "ok stalled" and emulator.state == STALLED
    assert command("resume") == "ok waiting"
    assert command("scene faces=0 roll_deg=15").startswith("ok {")
    assert emulator.source.params.faces == 0 and emulator.source.params.roll_deg == 15
    assert command("scene faces=3").startswith("error 'scene faces=3': source.scene")
    assert command("scene tilt=3").startswith("error 'scene tilt=3': source.scene.tilt: not a scene parameter")
    assert command("fps 12.5") == "ok waiting" and emulator.fps == 12.5
    assert command("fps -1").startswith("error 'fps -1': fps must be >= 0; usage: unplug")
    assert command("dance").startswith("error 'dance': not a command")
    assert command("unplug") == "ok unplugged" and not path.exists() and emulator.state == UNPLUGGED
    assert command("replug") == "ok waiting" and path.is_fifo()
    assert command("unplug 0") == "ok unplugged" and not path.exists()
    emulator._service()           # the loop's next turn plugs it back in
    assert emulator.state == WAITING and path.is_fifo()
    emulator.close()
    assert not path.exists()
    assert parse_assignments(["x=0.4", "background=cluttered"]) == {"x": 0.4, "background": "cluttered"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["faces"])
