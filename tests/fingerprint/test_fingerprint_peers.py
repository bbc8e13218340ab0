"""Independent host-side clients against our emulator: if they and our driver both agree
with it, the emulator speaks the protocol and not just our reading of it."""
from __future__ import annotations

import numpy as np
import pytest
import serial
from PIL import Image

from drivers.fingerprint import protocol as fp

pytestmark = pytest.mark.timeout(30)


def test_pyfingerprint(make_emulator, tmp_path):
    from pyfingerprint.pyfingerprint import PyFingerprint

    emulator = make_emulator()
    sensor = PyFingerprint(emulator.path, 57600, 0xFFFFFFFF, 0x00000000)
    try:
        assert sensor.verifyPassword() is True
        assert sensor.getSystemParameters() == (0, 9, 300, 3, 0xFFFFFFFF, 2, 6)
        assert sensor.readImage() is True
        destination = tmp_path / "finger.bmp"
        sensor.downloadImage(str(destination))  # UpImage on the wire
        assert np.array_equal(np.asarray(Image.open(destination)), emulator.image)
        assert sensor.getTemplateCount() == 0
        emulator.no_finger(10)
        assert sensor.readImage() is False
    finally:
        del sensor  # its destructor closes the port


def test_pyfingerprint_wrong_password(make_emulator):
    from pyfingerprint.pyfingerprint import PyFingerprint

    emulator = make_emulator(password=0x1234)
    sensor = PyFingerprint(emulator.path, 57600, 0xFFFFFFFF, 0x00000000)
    assert sensor.verifyPassword() is False
    del sensor


def test_adafruit_fingerprint(make_emulator):
    import adafruit_fingerprint

    emulator = make_emulator()
    with serial.Serial(emulator.path, 57600, timeout=1) as uart:
        sensor = adafruit_fingerprint.Adafruit_Fingerprint(uart)  # VfyPwd + ReadSysPara
        assert (sensor.library_size, sensor.data_packet_size, sensor.baudrate) == (300, 2, 6)
        assert sensor.check_module() is True
        assert sensor.get_image() == adafruit_fingerprint.OK
        data = sensor.get_fpdata("image")
        assert len(data) == fp.IMAGE_BYTES
        assert np.array_equal(fp.unpack_image(bytes(data)), emulator.image)
        assert sensor.image_2_tz(1) == adafruit_fingerprint.OK
        assert sensor.store_model(3, 1) == adafruit_fingerprint.OK
        assert sensor.count_templates() == adafruit_fingerprint.OK and sensor.template_count == 1
        assert sensor.read_templates() == adafruit_fingerprint.OK and sensor.templates == [3]
        assert sensor.finger_search() == adafruit_fingerprint.OK and sensor.finger_id == 3
        assert sensor.set_led(color=2, mode=1) == adafruit_fingerprint.OK
