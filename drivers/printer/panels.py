"""A card side separated into the ribbon panels an Evolis-style printer lays one by one.

Pure array code (numpy, OpenCV's lookup table): an artwork side (a ``color`` RGB layer and
a ``black`` text mask, as ``station/cardface.py`` renders them) in, one array a panel out,
in ribbon order. The protocol module packs each panel for ``Db;<panel>;<levels>;<data>``;
this module decides only what ink goes where.

Ribbons:

- ``ymcko``: Y, M and C are the colour layer's subtractive complement (C = 255 - R,
  M = 255 - G, Y = 255 - B) quantised to ``color_levels`` (32, 64 or 128); K is the black
  mask, 1 bit; O, the clear overlay, covers the card except the keep-clear rectangles (the
  chip's contacts, a signature panel).
- ``ko``: a monochrome ribbon; K is every pixel of the composite darker than mid-grey
  (photos included, thresholded), O as above; ``kb``: the same K, no overlay.

A panel's values are ink levels: 0 is no ink, ``levels - 1`` is full ink.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from drivers.printer.protocol import CARD_HEIGHT as HEIGHT, CARD_WIDTH as WIDTH, PANEL_LEVELS, RIBBON_PANELS, Panel
from station.errors import BadRequest

COLOR_LEVELS = PANEL_LEVELS["y"]
_CHANNEL = {"c": 0, "m": 1, "y": 2}  # the RGB channel each subtractive ink absorbs
# ITU-R BT.601 luma, in integers over 1000: what decides a pixel on a ko ribbon.
_LUMA = np.array([299, 587, 114], dtype=np.uint32)
KO_THRESHOLD = 128

Rect = tuple[int, int, int, int]  # x, y, width, height in pixels


class Artwork(Protocol):
    """What a side must offer: ``color`` (H x W x 3 uint8 RGB) and ``black`` (H x W bool)."""

    color: np.ndarray
    black: np.ndarray


def separate(
    side: Artwork,
    ribbon: str = "ymcko",
    color_levels: int = 32,
    keep_clear: Sequence[Rect] = (),
) -> list[Panel]:
    """The panels of ``side`` for ``ribbon``, in the order the ribbon lays them."""
    if ribbon not in RIBBON_PANELS:
        raise BadRequest(f"ribbon {ribbon!r} is not supported; supported: {', '.join(RIBBON_PANELS)}")
    if color_levels not in COLOR_LEVELS:
        raise BadRequest(f"color_levels {color_levels} is not allowed; allowed: "
                         f"{', '.join(map(str, COLOR_LEVELS))}")
    color, black = np.asarray(side.color), np.asarray(side.black)
    if color.shape != (HEIGHT, WIDTH, 3) or color.dtype != np.uint8 or black.shape != (HEIGHT, WIDTH):
        raise BadRequest(f"side: expected color ({HEIGHT}, {WIDTH}, 3) uint8 and black ({HEIGHT}, {WIDTH}); "
                         f"got {color.shape} {color.dtype} and {black.shape}")
    black = black.astype(bool, copy=False)
    overlay = _overlay(keep_clear)
    if ribbon in ("ko", "kb"):
        luma = color.reshape(-1, 3) @ _LUMA  # uint32 dot product, no float pass
        dark = (luma < KO_THRESHOLD * 1000).reshape(HEIGHT, WIDTH)
        k = Panel("k", 2, (dark | black).astype(np.uint8))
        return [k, Panel("o", 2, overlay)] if ribbon == "ko" else [k]
    # One lookup table maps an 8-bit channel to its ink level, rounding to the nearest;
    # OpenCV applies it to the three channels in one pass and splits them (a sixth of
    # numpy's gather on each strided channel).
    table = ((255 - np.arange(256, dtype=np.uint32)) * (color_levels - 1) + 127) // 255
    inks = cv2.split(cv2.LUT(np.ascontiguousarray(color), table.astype(np.uint8)))
    panels = [Panel(name, color_levels, inks[_CHANNEL[name]]) for name in ("y", "m", "c")]
    return panels + [Panel("k", 2, black.astype(np.uint8)), Panel("o", 2, overlay)]


def recombine(panels: Sequence[Panel]) -> np.ndarray:
    """What the printed side looks like (H x W x 3 uint8 RGB): white card, Y/M/C inks at their
    levels, K on top; the clear overlay does not change the colour."""
    out = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    for panel in panels:
        if panel.letter in _CHANNEL:
            levels = np.arange(panel.levels, dtype=np.uint32)
            table = (255 - (levels * 255 + (panel.levels - 1) // 2) // (panel.levels - 1)).astype(np.uint8)
            out[..., _CHANNEL[panel.letter]] = table[panel.bitmap]
    for panel in panels:
        if panel.letter == "k":
            out[panel.bitmap.astype(bool)] = 0
    return out


def _overlay(keep_clear: Sequence[Rect]) -> np.ndarray:
    overlay = np.ones((HEIGHT, WIDTH), dtype=np.uint8)
    for x, y, width, height in keep_clear:
        if width <= 0 or height <= 0 or x < 0 or y < 0 or x + width > WIDTH or y + height > HEIGHT:
            raise BadRequest(f"keep-clear rectangle {[x, y, width, height]} is not on the "
                             f"{WIDTH}x{HEIGHT} px card")
        overlay[y:y + height, x:x + width] = 0
    return overlay
