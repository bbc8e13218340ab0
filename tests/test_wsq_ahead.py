"""The controller's background WSQ encodings: the same bytes as encoding at finish, used
only for the very same pixels, and gone with the session."""
import threading

import numpy as np
import pytest

from station import biometrics
from station.wsq_ahead import WsqAhead


@pytest.fixture
def finger() -> np.ndarray:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:288, 0:256]
    ridges = 128 + 90 * np.sin((x * np.cos(0.6) + y * np.sin(0.6)) / 3.0)
    return np.clip(ridges + rng.normal(0, 8, ridges.shape), 0, 255).astype(np.uint8)


class CountingEncoder:
    def __init__(self):
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, pixels: np.ndarray) -> bytes:
        self.calls.append(threading.get_ident())
        self.started.set()
        self.release.wait(5)
        return biometrics.wsq_encode(pixels)


def test_the_background_encoding_is_what_finish_would_have_made(finger):
    counting = CountingEncoder()
    ahead = WsqAhead(counting)
    try:
        ahead.submit("s1", finger)
        assert counting.started.wait(5)
        encoded = ahead.encoder("s1")(finger.copy())
        assert encoded == biometrics.wsq_encode(finger)
        assert len(counting.calls) == 1 and counting.calls[0] != threading.get_ident()
    finally:
        ahead.close()


def test_other_pixels_or_another_session_are_encoded_on_the_spot(finger):
    counting = CountingEncoder()
    ahead = WsqAhead(counting)
    try:
        ahead.submit("s1", finger)
        other = finger.copy()
        other[0, 0] ^= 0xFF
        assert ahead.encoder("s1")(other) == biometrics.wsq_encode(other)
        assert ahead.encoder("s2")(finger) == biometrics.wsq_encode(finger)
        # A differently shaped image of the same bytes is another image.
        reshaped = finger.reshape(256, 288)
        assert ahead.encoder("s1")(reshaped) == biometrics.wsq_encode(reshaped)
        assert counting.calls.count(threading.get_ident()) == 3
    finally:
        ahead.close()


def test_drop_forgets_the_session(finger):
    counting = CountingEncoder()
    counting.release.clear()
    ahead = WsqAhead(counting)
    try:
        ahead.submit("s1", finger)
        ahead.submit("s1", finger + 1)   # queued behind the first, cancelled by the drop
        assert counting.started.wait(5) and ahead.pending("s1") == 2
        ahead.drop("s1")
        counting.release.set()
        assert ahead.pending("s1") == 0
        assert ahead.encoder("s1")(finger) == biometrics.wsq_encode(finger)
    finally:
        ahead.close()
    assert len(counting.calls) == 2  # the running one finished, the queued one never ran


def test_a_failed_background_encoding_is_raised_where_finish_asks(finger):
    def failing(pixels: np.ndarray) -> bytes:
        raise ValueError("encoder broke")

    ahead = WsqAhead(failing)
    try:
        ahead.submit("s1", finger)
        with pytest.raises(ValueError, match="encoder broke"):
            ahead.encoder("s1")(finger)
    finally:
        ahead.close()
