"""Injected faults end in a clean retry or a clear error within the timeout budget, and
never in a wrong image."""
from __future__ import annotations

import time

import numpy as np
import pytest

from drivers.fingerprint.emulator import Faults
from station.errors import DeviceError, ProtocolError, StationError

pytestmark = pytest.mark.timeout(30)


def test_fault_spec_syntax():
    faults = Faults.parse("noise=0.01, drop=0.001,badsum=0.02,slow=0.5,nofinger=2.0,unplug=30,seed=7")
    assert faults == Faults(noise=0.01, drop=0.001, badsum=0.02, slow=0.5, nofinger=2.0, unplug=30, seed=7)
    assert Faults.parse("") == Faults() and Faults.parse(None) == Faults()
    for spec, message in [
        ("noize=0.1", "unknown fault 'noize'; known: badsum, drop"),
        ("noise", "must be key=value"),
        ("noise=lots", "'lots' is not a number"),
        ("badsum=1.5", "probability must be within 0..1"),
        ("slow=-1", "seconds must be within"),
        ("seed=0.5", "is not a whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            Faults.parse(spec)


def capture_all(scanner, emulator, count: int) -> tuple[int, int]:
    """Capture ``count`` images; every returned image must be the sensor's current one."""
    good = errors = 0
    for _ in range(count):
        try:
            assert scanner.wait_finger(timeout_s=2.0)
            image = scanner.upload_image()
        except (DeviceError, ProtocolError) as exc:
            assert scanner.port in exc.message
            errors += 1
            continue
        assert np.array_equal(image, emulator.image), "a wrong image was accepted"
        good += 1
    return good, errors


def test_line_noise_between_packets_is_skipped(make_emulator, make_scanner):
    emulator = make_emulator(faults="noise=0.3,seed=1")
    scanner = make_scanner(emulator.path)
    assert capture_all(scanner, emulator, 3) == (3, 0)
    assert scanner.stats.dropped_bytes > 0


@pytest.mark.parametrize("spec", ["badsum=0.002,seed=3", "drop=0.002,seed=4"])
def test_corrupt_transfers_are_retried_never_accepted(make_emulator, make_scanner, spec):
    emulator = make_emulator(faults=spec)
    scanner = make_scanner(emulator.path, command_timeout_s=0.2)
    good, errors = capture_all(scanner, emulator, 4)
    assert good >= 3
    assert scanner.stats.retries >= 1 and scanner.stats.corrupt_replies + scanner.stats.timeouts >= 1


def test_heavy_corruption_ends_in_a_clear_error_within_budget(make_emulator, make_scanner):
    emulator = make_emulator(faults="badsum=0.5,seed=5")
    scanner = make_scanner(emulator.path, open=False, command_timeout_s=0.05, retries=2)
    started = time.monotonic()
    try:
        scanner.open()
        good, errors = capture_all(scanner, emulator, 1)
        assert errors == 1 and good == 0
    except StationError as exc:
        assert scanner.port in exc.message
    assert time.monotonic() - started < 10


def test_slow_replies_are_retried_without_taking_a_stale_answer(make_emulator, make_scanner):
    emulator = make_emulator(faults="slow=0.15")
    scanner = make_scanner(emulator.path, command_timeout_s=0.1, retries=3)
    assert capture_all(scanner, emulator, 2) == (2, 0)
    assert scanner.stats.timeouts >= 1


def test_replies_slower_than_the_budget_fail_in_time(make_emulator, make_scanner):
    emulator = make_emulator(faults="slow=3")
    scanner = make_scanner(emulator.path, open=False, command_timeout_s=0.05, retries=2)
    started = time.monotonic()
    with pytest.raises(DeviceError, match="no ZFM/R30x fingerprint sensor answered"):
        scanner.open()
    assert time.monotonic() - started < scanner.total_command_budget_s + 0.3


def test_corrupt_command_from_the_host_gets_packet_receive_error(make_emulator):
    import serial

    from drivers.fingerprint import protocol as fp

    emulator = make_emulator()
    frame = bytearray(fp.encode_packet(fp.PacketType.COMMAND, fp.encode_command(fp.Instruction.GEN_IMG)))
    frame[-1] ^= 0xFF
    with serial.Serial(emulator.path, 57600, timeout=1) as port:
        port.write(bytes(frame))
        reply = fp.PacketReader().feed(port.read(12))
    assert reply[0].payload == b"\x01"


def test_unplug_and_replug_via_the_link(make_emulator, make_scanner, tmp_path):
    link = tmp_path / "fingerprint0"
    emulator = make_emulator(link=link)
    scanner = make_scanner(str(link))
    first_pts = emulator.pts
    emulator.unplug(0.5)
    deadline = time.monotonic() + 2
    while link.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not link.exists()  # like udev removing /dev/serial/by-id/...
    started = time.monotonic()
    with pytest.raises(DeviceError, match="fingerprint0") as caught:
        scanner.echo()
    assert time.monotonic() - started < 1.0
    assert "open() again" in caught.value.message
    assert not scanner.is_open
    with pytest.raises(DeviceError, match="cannot open"):
        scanner.open()
    assert emulator.wait_plugged(3.0)
    scanner.open()
    assert scanner.wait_finger(2.0)
    assert np.array_equal(scanner.upload_image(), emulator.image)
    assert emulator.port_stats.unplugs == 1 and link.is_symlink()
    assert emulator.pts is not None and first_pts is not None


def test_unplug_during_upload_fails_clearly(make_emulator, make_scanner, tmp_path):
    link = tmp_path / "fingerprint1"
    emulator = make_emulator(link=link, baud=115200)  # paced: the upload takes ~3.4 s
    scanner = make_scanner(str(link))
    assert scanner.wait_finger(2.0)
    progress: list[int] = []

    def on_progress(received: int, total: int) -> None:
        progress.append(received)
        if received >= 4096 and emulator.plugged:
            emulator.unplug(0.3)

    started = time.monotonic()
    with pytest.raises(DeviceError, match="fingerprint1"):
        scanner.upload_image(progress=on_progress)
    assert time.monotonic() - started < 2.0
    assert progress and progress[-1] < 36864


def test_scheduled_unplug_from_the_spec(make_emulator, make_scanner, tmp_path):
    link = tmp_path / "fingerprint2"
    emulator = make_emulator(link=link, faults="unplug=0.3,replug=0.3")
    scanner = make_scanner(str(link))
    time.sleep(0.45)
    with pytest.raises(DeviceError):
        scanner.echo()
    assert emulator.wait_plugged(2.0)
    scanner.open()
    assert scanner.echo() < 1
