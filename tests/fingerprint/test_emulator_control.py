"""The emulator's control channel: which finger is on the glass, lifted fingers, line
faults and unplugs, commanded from outside the emulator's process."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.fingerprint import protocol as fp
from drivers.emulation import ControlChannel, send_command
from drivers.fingerprint.emulator import USAGE, Faults
from drivers.fingerprint.prints import Quality, SyntheticFinger

pytestmark = pytest.mark.timeout(60)


def apply_command(emulator, line: str) -> str:
    return emulator.command(line)


def test_commands_change_the_emulator(make_emulator):
    emulator = make_emulator()
    assert apply_command(emulator, "finger 7 3 quality=poor") == "finger applicant 7 position 3 quality poor"
    assert emulator.prints.identity == "applicant 7 finger 3" and emulator.prints.quality == Quality.POOR
    assert apply_command(emulator, "nofinger 2.5") == "no finger for 2.5 s"
    assert apply_command(emulator, "faults noise=0.1,seed=3") == "faults noise=0.1,seed=3"
    assert emulator.faults == Faults(noise=0.1, seed=3)
    apply_command(emulator, "faults none")
    assert emulator.faults == Faults()
    assert apply_command(emulator, "unplug 0.2") == "unplugged for 0.2 s"
    assert emulator.wait_plugged(3.0)


@pytest.mark.parametrize("line, reason", [
    ("", "empty command"),
    ("finger 7", "not a command"),
    ("faults seed=-1", "must be 0 or more"),
    ("faults noise=2", "a probability must be within 0..1"),
    ("finger 7 11", "not an ANSI/NIST position 1..10"),
    ("finger x 2", "invalid literal"),
    ("finger 7 2 quality=awful", "'awful' is not a valid Quality"),
    ("finger 7 2 colour=red", "unknown option"),
    ("nofinger -1", "seconds must be within"),
    ("faults noize=0.1", "unknown fault 'noize'"),
    ("faults unplug=3", "commands of their own"),
    ("reboot", "not a command"),
])
def test_bad_commands_say_why(make_emulator, line, reason):
    emulator = make_emulator()
    with pytest.raises(ValueError, match=reason):
        apply_command(emulator, line)


def test_channel_replies_to_a_sender(make_emulator, rundir):
    emulator = make_emulator()
    channel = ControlChannel(rundir / "fp.ctl", emulator.command, USAGE, "fingerprint-emulator").start()
    try:
        assert send_command(channel.path, "finger 5 8") == "ok finger applicant 5 position 8 quality good"
        reply = send_command(channel.path, "finger 5")
        assert reply.startswith("error 'finger 5': not a command; usage: finger <applicant_seed>")
        assert channel.commands == 1 and channel.refused == 1
    finally:
        channel.stop()
    assert not channel.path.exists()


def test_emulator_process_is_driven_through_its_control_socket(make_scanner, rundir):
    link, control = rundir / "fp0", rundir / "fp0.ctl"
    process = subprocess.Popen(
        [sys.executable, "-m", "drivers.fingerprint.emulator", "--link", str(link), "--control", str(control),
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2], env=dict(os.environ),
    )
    try:
        assert process.stdout.readline().strip() == str(link)
        scanner = make_scanner(str(link))

        assert send_command(control, "finger 9 4").startswith("ok")
        assert scanner.wait_finger(2.0)
        expected = fp.quantize_image(SyntheticFinger(9, 4).impression(1))  # first impression served
        assert np.array_equal(scanner.upload_image(), expected)

        assert send_command(control, "nofinger 0.6").startswith("ok")
        assert not scanner.take_image()
        time.sleep(0.7)
        assert scanner.take_image()

        assert send_command(control, "faults badsum=1.0").startswith("ok")
        with pytest.raises(Exception, match="corrupt|no valid reply"):
            scanner.echo()
        assert send_command(control, "faults none").startswith("ok")
        assert scanner.echo() < 1.0

        assert send_command(control, "unplug 0.5").startswith("ok")
        deadline = time.monotonic() + 2
        while link.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not link.exists()
        deadline = time.monotonic() + 3
        while not link.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        scanner.open()
        assert scanner.echo() < 1.0
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
    assert not control.exists()
