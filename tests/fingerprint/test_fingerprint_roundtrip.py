"""Our Scanner against our emulator through a real pseudo-terminal."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import serial

from drivers.fingerprint import protocol as fp
from drivers.fingerprint.device import Scanner
from drivers.fingerprint.protocol import Confirmation, Instruction, PacketType
from station.errors import DeviceError

pytestmark = pytest.mark.timeout(20)


def test_handshake_wait_finger_and_upload(make_emulator, make_scanner):
    emulator = make_emulator()
    scanner = make_scanner(emulator.path)
    assert scanner.system_parameters == emulator.parameters
    assert scanner.system_parameters.packet_size == 128
    assert scanner.wait_finger(timeout_s=2.0)
    progress: list[tuple[int, int]] = []
    image = scanner.upload_image(progress=lambda got, total: progress.append((got, total)))
    assert image.shape == (288, 256) and image.dtype == np.uint8
    assert np.array_equal(image, emulator.image)
    assert len(progress) == 288 and progress[-1] == (36864, 36864)
    assert all(a[0] < b[0] for a, b in zip(progress, progress[1:]))
    assert scanner.echo() < 1.0
    assert scanner.stats.retries == 0


def test_each_capture_is_a_new_impression(make_emulator, make_scanner):
    emulator = make_emulator()
    scanner = make_scanner(emulator.path)
    images = []
    for _ in range(2):
        assert scanner.take_image()
        images.append(scanner.upload_image())
        assert np.array_equal(images[-1], emulator.image)
    assert not np.array_equal(images[0], images[1])


@pytest.mark.parametrize("packet_size", [32, 256])
def test_upload_with_other_packet_sizes(make_emulator, make_scanner, packet_size):
    emulator = make_emulator(packet_size=packet_size)
    scanner = make_scanner(emulator.path)
    assert scanner.system_parameters.packet_size == packet_size
    scanner.take_image()
    assert np.array_equal(scanner.upload_image(), emulator.image)


def test_no_finger_period_and_cancel(make_emulator, make_scanner):
    emulator = make_emulator(faults="nofinger=0.6")
    scanner = make_scanner(emulator.path)
    started = time.monotonic()
    assert not scanner.wait_finger(timeout_s=0.2)
    assert time.monotonic() - started < 0.2 + scanner.total_command_budget_s
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    assert not scanner.wait_finger(timeout_s=5.0, cancel=cancel)
    assert not scanner.wait_finger(timeout_s=5.0, cancel=lambda: True)
    assert scanner.wait_finger(timeout_s=2.0)  # the period ends at 0.6 s
    assert time.monotonic() - started >= 0.55
    emulator.no_finger(5.0)
    assert not scanner.take_image()


def test_upload_without_image_is_a_sensor_error(make_emulator, make_scanner):
    emulator = make_emulator()
    scanner = make_scanner(emulator.path)
    with pytest.raises(fp.SensorError) as caught:
        scanner.upload_image()
    assert caught.value.confirmation == Confirmation.UPLOAD_IMAGE_FAIL
    assert emulator.path in caught.value.message
    assert scanner.stats.retries == 0  # a definite answer is not retried


def test_wrong_password_names_the_port(make_emulator, make_scanner):
    emulator = make_emulator()
    with pytest.raises(fp.SensorError, match="wrong sensor password") as caught:
        make_scanner(emulator.path, password=0x1234)
    assert emulator.path in caught.value.message
    assert caught.value.confirmation == Confirmation.WRONG_PASSWORD


def test_emulator_commands(make_emulator, make_scanner):
    emulator = make_emulator()
    scanner = make_scanner(emulator.path)
    assert scanner.command(Instruction.TEMPLATE_NUM).fields["count"] == 0
    assert scanner.command(Instruction.GET_RANDOM_CODE).fields["random"] >= 0
    scanner.command(Instruction.AURA_LED, control=1, speed=100, color=2, cycles=0)
    scanner.take_image()
    scanner.command(Instruction.IMG2TZ, buffer_id=1)
    scanner.command(Instruction.STORE, buffer_id=1, page_id=5)
    assert scanner.command(Instruction.TEMPLATE_NUM).fields["count"] == 1
    found = scanner.command(Instruction.SEARCH, buffer_id=1, start_page=0, page_count=300)
    assert found.fields["page_id"] == 5
    with pytest.raises(fp.SensorError, match="invalid register"):
        scanner.command(Instruction.SET_SYS_PARA, parameter=9, value=1)
    with pytest.raises(fp.SensorError, match="outside the sensor's library"):
        scanner.command(Instruction.STORE, buffer_id=1, page_id=999)
    scanner.command(Instruction.SOFT_RESET)
    with pytest.raises(fp.SensorError):
        scanner.upload_image()


def test_unknown_instruction_gets_unsupported_command(make_emulator):
    emulator = make_emulator()
    with serial.Serial(emulator.path, 57600, timeout=1) as port:
        port.write(fp.encode_packet(PacketType.COMMAND, b"\x40"))
        reply = fp.PacketReader().feed(port.read(12))
    assert reply[0].payload == bytes([Confirmation.UNSUPPORTED_COMMAND])


def test_set_baud_reopens_at_the_new_rate(make_emulator, make_scanner):
    emulator = make_emulator()
    scanner = make_scanner(emulator.path)
    scanner.set_baud(115200)
    assert scanner.baud == 115200 and scanner.is_open
    assert scanner.system_parameters.baud == 115200 == emulator.parameters.baud
    with pytest.raises(ValueError, match="multiple of 9600"):
        scanner.set_baud(100000)


def test_line_rate_emulation_paces_bytes(make_emulator):
    emulator = make_emulator(baud=9600)
    with serial.Serial(emulator.path, 9600, timeout=0.05) as port:
        reader = fp.PacketReader()
        for instruction in (Instruction.GEN_IMG, Instruction.IMG2TZ):
            payload = fp.encode_command(instruction, **({"buffer_id": 1} if instruction == Instruction.IMG2TZ else {}))
            port.write(fp.encode_packet(PacketType.COMMAND, payload))
            deadline = time.monotonic() + 2
            while not reader.feed(port.read(64)) and time.monotonic() < deadline:
                pass
        started = time.monotonic()
        port.write(fp.encode_packet(PacketType.COMMAND, fp.encode_command(Instruction.UP_CHAR, buffer_id=1)))
        received = 0
        while received < 12 + 4 * (128 + 11):
            received += len(port.read(1024))
            assert time.monotonic() - started < 3
        elapsed = time.monotonic() - started
    line_time = received * 10 / 9600  # 568 bytes: 0.59 s
    assert elapsed > 0.9 * line_time  # paced at the line's rate, never faster


def test_exclusive_open_and_missing_port(make_emulator, make_scanner, tmp_path):
    emulator = make_emulator()
    make_scanner(emulator.path)
    with pytest.raises(DeviceError, match="no other program") as caught:
        make_scanner(emulator.path)
    assert emulator.path in caught.value.message
    missing = str(tmp_path / "ttyFP-missing")
    with pytest.raises(DeviceError, match="ttyFP-missing"):
        make_scanner(missing)


def test_silent_port_fails_within_the_budget(make_scanner):
    master, slave = os.openpty()
    try:
        started = time.monotonic()
        with pytest.raises(DeviceError, match="no ZFM/R30x fingerprint sensor answered") as caught:
            make_scanner(os.ttyname(slave), command_timeout_s=0.1, retries=2)
        assert time.monotonic() - started < Scanner(os.ttyname(slave), command_timeout_s=0.1, retries=2).total_command_budget_s + 0.5
        assert os.ttyname(slave) in caught.value.message
    finally:
        os.close(master)
        os.close(slave)


def test_command_after_close_is_a_clear_error(make_emulator, make_scanner):
    scanner = make_scanner(make_emulator().path)
    scanner.close()
    with pytest.raises(DeviceError, match="not open"):
        scanner.echo()


def test_stationctl_emulate_main(tmp_path):
    link = tmp_path / "fp0"
    process = subprocess.Popen(
        [sys.executable, "-m", "drivers.fingerprint.emulator", "--link", str(link), "--faults", "seed=3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline().strip()
        assert first_line == str(link)
        with Scanner(first_line, command_timeout_s=0.5) as scanner:
            assert scanner.echo() < 1
        assert Path(os.readlink(link)).as_posix().startswith("/dev/pts/")
        process.terminate()
        assert process.wait(timeout=5) == 0
        assert "sensor emulator on /dev/pts/" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_stationctl_emulate_rejects_a_bad_fault_spec():
    result = subprocess.run(
        [sys.executable, "-m", "drivers.fingerprint.emulator", "--faults", "noize=0.1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert "unknown fault 'noize'" in result.stderr
    assert result.stdout == ""
