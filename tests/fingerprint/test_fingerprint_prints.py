"""Synthetic fingerprints: shape, determinism, realism cues, distinctness, speed."""
from __future__ import annotations


import numpy as np
import pytest

from drivers.fingerprint.prints import Conditions, PatternClass, SyntheticFinger, finger_spec

pytestmark = pytest.mark.timeout(30)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def centre(image: np.ndarray) -> np.ndarray:
    return image[84:204, 68:188]


def test_impression_shape_background_and_ridges():
    image = SyntheticFinger(1, 2).impression(0)
    assert image.shape == (288, 256) and image.dtype == np.uint8
    assert image[:6, :6].mean() > 200 or image[-6:, -6:].mean() > 200  # white outside the pad
    core = centre(image)
    assert core.min() < 90 and core.max() > 180  # dark ridges, light valleys


def test_ridge_period_is_about_nine_pixels():
    finger = SyntheticFinger(3, 7)
    region = centre(finger.impression(0)).astype(np.float32)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(region - region.mean())))
    cy, cx = np.array(spectrum.shape) // 2
    y, x = np.indices(spectrum.shape)
    radius = np.hypot((y - cy) / spectrum.shape[0], (x - cx) / spectrum.shape[1])
    profile = np.bincount((radius * 1000).astype(int).ravel(), spectrum.ravel())
    peak_frequency = (np.argmax(profile[20:]) + 20) / 1000
    assert 7.0 < 1 / peak_frequency < 12.0
    assert 8.0 <= finger.spec.ridge_period_px <= 10.5


def test_deterministic_from_applicant_and_position():
    assert np.array_equal(SyntheticFinger(5, 3).impression(4), SyntheticFinger(5, 3).impression(4))
    assert finger_spec(5, 3) == finger_spec(5, 3)
    assert finger_spec(5, 3) != finger_spec(5, 4)


def test_same_finger_correlates_different_fingers_do_not():
    # Same placement and no skin distortion: only dryness and noise differ, so pixels compare.
    still = Conditions(distortion_px=0.0)
    a = SyntheticFinger(11, 2)
    first = a.impression(1, still)
    again = a.impression(2, Conditions(distortion_px=0.0, dryness=0.3, noise=0.05))
    assert ncc(centre(first), centre(again)) > 0.6
    for other in (SyntheticFinger(11, 3), SyntheticFinger(12, 2)):
        assert abs(ncc(centre(first), centre(other.impression(1, still)))) < 0.25


def test_impressions_vary_in_placement():
    finger = SyntheticFinger(2, 1)
    images = [finger.next_impression() for _ in range(3)]
    assert not np.array_equal(images[0], images[1])
    assert ncc(images[0], images[1]) < 0.95


def test_pattern_classes_vary_across_fingers():
    classes = {finger_spec(seed, position).pattern for seed in range(20) for position in range(1, 11)}
    assert {PatternClass.WHORL, PatternClass.LEFT_LOOP, PatternClass.RIGHT_LOOP} <= classes
    assert len(classes) >= 4
    whorl = next(finger_spec(s, 1) for s in range(50) if finger_spec(s, 1).pattern == PatternClass.WHORL)
    assert len(whorl.cores) == 2 and len(whorl.deltas) == 2


def test_partial_contact_and_pressure_change_the_print():
    finger = SyntheticFinger(4, 6)
    full = finger.impression(1, Conditions(contact=1.0))
    partial = finger.impression(1, Conditions(contact=0.5))
    assert (partial > 200).mean() > (full > 200).mean() + 0.1
    light = finger.impression(1, Conditions(pressure=0.0, noise=0.0))
    heavy = finger.impression(1, Conditions(pressure=1.0, noise=0.0))
    assert centre(heavy).mean() < centre(light).mean()


def test_a_fingers_master_pattern_is_made_once_and_each_impression_reuses_it():
    """What keeps the emulator fast (a master costs ~0.1 s, an impression a few ms, made from
    the master); tests never assert timings, so this holds the cache that makes it so."""
    from drivers.fingerprint import prints

    before = prints._master.cache_info()
    finger = SyntheticFinger(987654, 9)
    first = finger.impression(0)
    again = SyntheticFinger(987654, 9)  # the same finger placed again: its master is not remade
    after = prints._master.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert again.master is finger.master
    assert np.array_equal(again.impression(0), first)  # and an impression is the same every time
