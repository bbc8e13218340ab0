"""Our driver against recorded sensor sessions, replayed byte for byte on a pseudo-terminal:
the driver must send exactly the recorded bytes and decode exactly the recorded image."""
from __future__ import annotations

import hashlib

import pytest

from drivers.fingerprint import protocol as fp
from station.errors import DeviceError
from tests.fingerprint.replay import HERE, SCENARIOS, Replayer, Transcript, capture_session

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_driver_replays_recorded_session(name: str) -> None:
    transcript = Transcript.load(HERE / name)
    replayer = Replayer(transcript)
    try:
        image = capture_session(replayer.path)
    finally:
        replayer.close()
    assert replayer.error is None
    assert replayer.finished, f"stopped at step {replayer.position} of {len(transcript.steps)}"
    assert hashlib.sha256(image.tobytes()).hexdigest() == transcript.meta["image-sha256"]


def test_transcript_opens_with_the_public_handshake_vectors() -> None:
    steps = Transcript.load(HERE / "handshake_capture.txt").steps
    assert steps[0] == (">", bytes.fromhex("EF01FFFFFFFF0100071300000000001B"))  # VfyPwd, REFERENCE.md
    assert steps[1] == ("<", bytes.fromhex("EF01FFFFFFFF07000300000A"))  # OK ack, REFERENCE.md


def test_a_driver_that_strays_from_the_transcript_is_caught() -> None:
    transcript = Transcript.load(HERE / "handshake_capture.txt")
    direction, data = transcript.steps[2]  # ReadSysPara request: expect another instruction
    assert direction == ">"
    transcript.steps[2] = (">", fp.encode_packet(fp.PacketType.COMMAND, bytes([fp.Instruction.TEMPLATE_NUM])))
    replayer = Replayer(transcript)
    try:
        with pytest.raises(DeviceError):
            capture_session(replayer.path)
    finally:
        replayer.close()
    assert replayer.error is not None and "step 2" in replayer.error
