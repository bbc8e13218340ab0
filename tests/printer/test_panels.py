"""Ribbon panels: every colour and level, the masks, and the way back to the printed look."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

from drivers.printer.panels import HEIGHT, WIDTH, Panel, recombine, separate
from station.errors import BadRequest

CHIP = (112, 200, 150, 160)


@dataclass(frozen=True)
class Side:
    """A side as cardface renders one: only what panels reads."""

    color: np.ndarray
    black: np.ndarray

    def composite(self) -> np.ndarray:
        out = self.color.copy()
        out[self.black] = 0
        return out


@pytest.fixture(scope="module")
def side() -> Side:
    """Random colours, with every value 0..255 present in every channel, and random text."""
    rng = np.random.default_rng(7)
    color = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    color[0, :256] = np.arange(256, dtype=np.uint8)[:, None]
    black = rng.random((HEIGHT, WIDTH)) < 0.1
    black[0, :256] = False
    return Side(color, black)


def by_name(panels: list[Panel]) -> dict[str, Panel]:
    return {panel.letter: panel for panel in panels}


@pytest.mark.parametrize("levels", [32, 64, 128])
def test_recombine_inverts_separate_within_one_quantisation_step(side: Side, levels: int) -> None:
    printed = recombine(separate(side, "ymcko", levels))
    error = np.abs(printed.astype(int) - side.composite().astype(int))
    assert error.max() <= 256 / levels
    assert (printed[side.black] == 0).all()


def test_panels_in_ribbon_order_with_their_levels(side: Side) -> None:
    panels = separate(side, keep_clear=[CHIP])
    assert [(p.letter, p.levels) for p in panels] == [("y", 32), ("m", 32), ("c", 32), ("k", 2), ("o", 2)]
    for panel in panels:
        assert panel.bitmap.shape == (HEIGHT, WIDTH) and panel.bitmap.dtype == np.uint8
        assert panel.bitmap.max() == panel.levels - 1 and panel.bitmap.min() == 0


def test_inks_are_the_subtractive_complement() -> None:
    color = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    color[:, :300] = (255, 0, 0)      # red: no cyan, full magenta and yellow
    color[:, 300:600] = (255, 255, 255)  # white: no ink
    color[:, 600:] = (0, 128, 255)    # azure: full cyan, half magenta, no yellow
    panels = by_name(separate(Side(color, np.zeros((HEIGHT, WIDTH), bool)), "ymcko", 32))
    assert (panels["c"].bitmap[0, 0], panels["m"].bitmap[0, 0], panels["y"].bitmap[0, 0]) == (0, 31, 31)
    assert not any(panels[name].bitmap[:, 300:600].any() for name in "ymc")
    assert (panels["c"].bitmap[0, 700], panels["m"].bitmap[0, 700], panels["y"].bitmap[0, 700]) == (31, 15, 0)


def test_k_is_the_black_mask_and_o_keeps_the_chip_clear(side: Side) -> None:
    panels = by_name(separate(side, keep_clear=[CHIP]))
    assert np.array_equal(panels["k"].bitmap, side.black.astype(np.uint8))
    expected = np.ones((HEIGHT, WIDTH), np.uint8)
    x, y, width, height = CHIP
    expected[y:y + height, x:x + width] = 0
    assert np.array_equal(panels["o"].bitmap, expected)
    assert by_name(separate(side))["o"].bitmap.all()


def test_a_ko_ribbon_thresholds_everything_into_k(side: Side) -> None:
    panels = separate(side, "ko", keep_clear=[CHIP])
    assert [(p.letter, p.levels) for p in panels] == [("k", 2), ("o", 2)]
    luma_x1000 = side.color.astype(np.int64) @ [299, 587, 114]  # BT.601, exact in integers
    expected = side.black | (luma_x1000 < 128_000)
    assert np.array_equal(panels[0].bitmap.astype(bool), expected)
    printed = recombine(panels)
    assert set(np.unique(printed)) <= {0, 255}
    assert np.array_equal(printed[..., 0] == 0, expected)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"ribbon": "ymc"}, "ribbon 'ymc' is not supported; supported: ymcko, ko, kb"),
    ({"color_levels": 16}, "color_levels 16 is not allowed; allowed: 32, 64, 128"),
    ({"keep_clear": [(1000, 0, 50, 50)]}, r"keep-clear rectangle \[1000, 0, 50, 50\] is not on the"),
])
def test_bad_arguments_are_refused(side: Side, arguments: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        separate(side, **arguments)


def test_a_side_of_the_wrong_size_is_refused() -> None:
    small = Side(np.zeros((638, 1011, 3), np.uint8), np.zeros((638, 1011), bool))
    with pytest.raises(BadRequest, match=r"expected color \(648, 1016, 3\) uint8"):
        separate(small)


def test_separation_is_vectorised(side: Side) -> None:
    """A few milliseconds a side; a per-pixel Python loop would take seconds."""
    separate(side)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        separate(side, keep_clear=[CHIP])
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[2] < 0.05, timings
