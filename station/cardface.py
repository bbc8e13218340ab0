"""The CCCD card's artwork, front and back, as the printer's two layers.

A card printer lays colour (Y, M, C) and black (K) from different ribbon panels, and text is
only sharp in K: so each side is rendered as two layers from the start, ``color`` (tint,
security pattern, emblem, portrait, fingerprints) and ``black`` (every text, the MRZ, the QR
code), and ``drivers/printer/panels.py`` separates them without guessing which pixel is text.

Where everything goes is ``config/card.yaml`` (checked against ``card.schema.yaml``), so a
field engineer can move a box without touching code. Bitmaps are 1016 x 648 px (the Evolis
bitmap, CR80 at 300 dpi with bleed).

Speed: what is the same on every card (background, pattern, emblem, titles, labels) is drawn
once when the ``CardFace`` is built; a card costs its values, QR, MRZ and images only.
"""
from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import segno
from PIL import Image, ImageDraw, ImageFont

from station import config
from station.card import CardData, mrz_lines, printed, qr_text
from station.errors import ConfigError, StationError

WIDTH, HEIGHT = 1016, 648
INK_THRESHOLD = 128  # anti-aliased text coverage from which a K pixel is printed
WHITE = (255, 255, 255)
_QR_LEVELS = ("h", "q", "m", "l")  # error correction, strongest first

Box = tuple[int, int, int, int]  # x, y, width, height in pixels


class FontMissing(StationError):
    """A font the layout names is not installed; the message names the Debian package."""

    code = "font_missing"


@dataclass(frozen=True)
class Side:
    """One side of a card: ``color`` (H x W x 3 uint8 RGB) and ``black`` (H x W bool, K ink)."""

    color: np.ndarray
    black: np.ndarray

    def composite(self) -> np.ndarray:
        """What the printed side looks like: the colour layer with black wherever K prints."""
        out = self.color.copy()
        out[self.black] = 0
        return out


@dataclass(frozen=True)
class _Line:
    x: int
    baseline: int
    text: str


@functools.lru_cache(maxsize=256)  # (font, size) pairs: every size fitting may try
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


class CardFace:
    """Renders cards with one layout; build it once and keep it (fonts and static art are cached).

    ``layout`` is the ``card`` config section (``CardFace.from_config`` loads it). A layout that
    puts a box off the card is a ``ConfigError``; a font that is not installed, ``FontMissing``.
    """

    def __init__(self, layout: Mapping[str, Any]):
        self.layout = layout
        self._fonts = {name: dict(spec) for name, spec in layout["fonts"].items()}
        for name in self._fonts:
            self._font(name, 12)  # a missing font is found when the station starts, not at print
        problems = _box_problems(layout)
        if problems:
            raise ConfigError(problems)
        self._static = {"front": self._static_side("front"), "back": self._static_side("back")}

    @classmethod
    def from_config(cls, etc: Path | None = None, overrides: Sequence[str] = ()) -> "CardFace":
        """The card face from the packaged ``card.yaml`` and the site's overrides."""
        return cls(config.load("card", None, etc, overrides))

    def render(self, card: CardData) -> tuple[Side, Side]:
        """(front, back) of ``card``."""
        return self.front(card), self.back(card)

    def front(self, card: CardData) -> Side:
        layout = self.layout["front"]
        color, ink, draw = self._begin("front")
        values = printed(card)
        self._draw_values(draw, "front", values)
        portrait = cv2.imdecode(np.frombuffer(card.portrait_jpeg, np.uint8), cv2.IMREAD_COLOR)
        if portrait is None:
            raise StationError(f"card {card.id_number}: the portrait JPEG does not decode", code="bad_record")
        _paste(color, _cover(cv2.cvtColor(portrait, cv2.COLOR_BGR2RGB), layout["portrait"]["box"]),
               layout["portrait"]["box"])
        black = np.asarray(ink) >= INK_THRESHOLD
        black |= self._static["front"][1]
        black[_slices(layout["qr"]["box"])] |= _qr(qr_text(card), layout["qr"])
        return Side(color, black)

    def back(self, card: CardData) -> Side:
        layout = self.layout["back"]
        color, ink, draw = self._begin("back")
        self._draw_values(draw, "back", printed(card))
        self._draw_mrz(draw, mrz_lines(card))
        for which in ("left", "right"):
            box = layout["fingerprints"][which]["box"]
            inner = _inset(box, layout["fingerprints"]["padding"])
            _paste(color, _contain(card.fingerprint(which), inner), inner)
        black = np.asarray(ink) >= INK_THRESHOLD
        black |= self._static["back"][1]
        return Side(color, black)

    def fit(self, text: str, spec: Mapping[str, Any]) -> tuple[int, list[_Line]]:
        """(font size, lines placed in page pixels) of ``text`` in ``spec``'s box: wrapped at
        words, shrunk from ``size`` down to ``min_size`` until every line's ink is inside the
        box. Text that does not fit even then is a ``ConfigError``: an ID card does not print
        a cut address, the layout must make room."""
        text = unicodedata.normalize("NFC", text)
        x, y, width, height = spec["box"]
        for size in range(spec["size"], spec["min_size"] - 1, -1):
            font = self._font(spec["font"], size)
            lines = _wrap(text, font, width)
            placed = _place(lines, font, spec["box"], spec["align"])
            if placed is not None:
                return size, placed
        raise ConfigError([f"card layout: {text[:40]!r}{'…' if len(text) > 40 else ''} ({len(text)} "
                           f"characters) does not fit the {width}x{height} px box at {x},{y} even at "
                           f"min_size {spec['min_size']}; enlarge the box or lower min_size in card.yaml"])

    def _font(self, name: str, size: int) -> ImageFont.FreeTypeFont:
        spec = self._fonts[name]
        try:
            return _truetype(spec["path"], size)
        except OSError as exc:
            why = "is missing" if not Path(spec["path"]).is_file() else f"cannot be read as a font ({exc})"
            raise FontMissing(f"font {spec['path']} (card.yaml fonts.{name}) {why}; install the "
                              f"Debian package {spec['package']}: apt-get install {spec['package']}, "
                              f"or point fonts.{name}.path at an installed font") from None

    def _begin(self, side: str) -> tuple[np.ndarray, Image.Image, ImageDraw.ImageDraw]:
        ink = Image.new("L", (WIDTH, HEIGHT), 0)
        return self._static[side][0].copy(), ink, ImageDraw.Draw(ink)

    def _draw_text(self, draw: ImageDraw.ImageDraw, text: str, spec: Mapping[str, Any]) -> None:
        size, lines = self.fit(text, spec)
        font = self._font(spec["font"], size)
        for line in lines:
            draw.text((line.x, line.baseline), line.text, fill=255, font=font, anchor="ls")

    def _draw_values(self, draw: ImageDraw.ImageDraw, side: str, values: Mapping[str, str]) -> None:
        for name, field in self.layout[side]["fields"].items():
            if field["show"] and values[name]:
                self._draw_text(draw, values[name], field["value"])

    def _draw_mrz(self, draw: ImageDraw.ImageDraw, lines: Sequence[str]) -> None:
        """OCR-B at the MRZ's fixed pitch (Doc 9303: 2.54 mm a character), one cell a character."""
        spec = self.layout["back"]["mrz"]
        font = self._font(spec["font"], spec["size"])
        x0, y0 = spec["origin"]
        pitch_x, pitch_y = spec["pitch"]
        ascent = font.getmetrics()[0]
        for row, line in enumerate(lines):
            baseline = y0 + row * pitch_y + ascent
            for column, char in enumerate(line):
                draw.text((x0 + column * pitch_x + pitch_x / 2, baseline), char, fill=255, font=font, anchor="ms")

    def _static_side(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """The art every card shares: the colour layer before images, and the black of titles
        and labels."""
        layout, colors = self.layout[side], self.layout["colors"]
        background = _pattern(self.layout["pattern"], colors["background"], side)
        image = Image.fromarray(background)
        art = ImageDraw.Draw(image)
        ink = Image.new("L", (WIDTH, HEIGHT), 0)
        draw = ImageDraw.Draw(ink)
        for title in layout["titles"]:
            self._draw_text(draw, title["text"], title)
        for field in layout["fields"].values():
            if field["show"] and field["label"] is not None:
                self._draw_text(draw, _label(field["label"]), field["label"])
        if side == "front":
            _emblem(art, layout["emblem"], colors)
            art.rectangle(_corners(layout["qr"]["box"]), fill=WHITE)
            art.rectangle(_corners(layout["portrait"]["box"]), fill=WHITE)
        else:
            fingerprints = layout["fingerprints"]
            for which in ("left", "right"):
                spec = fingerprints[which]
                art.rectangle(_corners(spec["box"]), fill=WHITE, outline=tuple(colors["frame"]),
                              width=fingerprints["frame_width"])
                label = spec["label"]  # Vietnamese above English, as the boxes are narrow
                self._draw_text(draw, f"{label['vi']}\n{label['en']}".strip(), label)
            seal = layout["seal"]
            cx, cy, r = *seal["center"], seal["radius"]
            art.ellipse((cx - r, cy - r, cx + r, cy + r), outline=tuple(colors["seal"]), width=seal["width"])
            art.rectangle(_corners(layout["chip"]), fill=WHITE)
        return np.asarray(image).copy(), np.asarray(ink) >= INK_THRESHOLD


def _label(spec: Mapping[str, Any]) -> str:
    """A bilingual label as the card prints it: ``Họ và tên / Full name:``."""
    return f"{spec['vi']} / {spec['en']}:" if spec["en"] else f"{spec['vi']}:"


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap of each line of ``text``; a word wider than the box is broken
    between letters."""
    return [line for paragraph in text.split("\n") for line in _wrap_line(paragraph, font, width)]


def _wrap_line(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > width and len(current) > 1:
            cut = len(current) - 1
            while cut > 1 and font.getlength(current[:cut]) > width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    return lines


def _place(lines: list[str], font: ImageFont.FreeTypeFont, box: Box, align: str) -> list[_Line] | None:
    """Lines at their baselines, top-aligned, or None when any line's ink leaves the box.

    The first baseline sits one ascent down, lower if a stacked Vietnamese diacritic (Ễ, Ộ)
    rises above the font's ascent; further lines follow at ascent + descent.
    """
    x, y, width, height = box
    ascent, descent = font.getmetrics()
    inks = [font.getbbox(line, anchor="ls") for line in lines]
    if not inks:
        return []
    first = y + max(ascent, -inks[0][1])
    placed = []
    for index, (line, (left, top, right, bottom)) in enumerate(zip(lines, inks)):
        baseline = first + index * (ascent + descent)
        if align == "center":
            start = x + (width - (right - left)) // 2 - left
        elif align == "right":
            start = x + width - right
        else:
            start = x - min(left, 0)
        if start + left < x or start + right > x + width or baseline + top < y or baseline + bottom > y + height:
            return None
        placed.append(_Line(start, baseline, line))
    return placed


def _qr(text: str, spec: Mapping[str, Any]) -> np.ndarray:
    """The QR code of ``text`` as a bool mask the size of its box, at the largest whole number
    of pixels a module, centred; UTF-8 in byte mode, as the cards' readers expect.

    ``error`` is the level wanted; a long text that would need modules under ``min_module_px``
    steps down a level at a time to L (fewer modules) before the card is refused.
    """
    x, y, width, height = spec["box"]
    levels = _QR_LEVELS[_QR_LEVELS.index(spec["error"]):]
    for level in levels:
        code = segno.make(text, error=level, micro=False, boost_error=False)
        modules = np.pad(np.array(code.matrix, dtype=bool), spec["border"])
        scale = min(width, height) // modules.shape[0]
        if scale >= spec["min_module_px"]:
            break
    else:
        raise ConfigError([f"card layout: the QR code ({code.version}-{code.error}, {modules.shape[0]} "
                           f"modules with its border) needs {modules.shape[0] * spec['min_module_px']} px; "
                           f"front.qr.box is {width}x{height}: enlarge it in card.yaml"])
    mask = np.zeros((height, width), dtype=bool)
    big = np.repeat(np.repeat(modules, scale, axis=0), scale, axis=1)
    top, left = (height - big.shape[0]) // 2, (width - big.shape[1]) // 2
    mask[top:top + big.shape[0], left:left + big.shape[1]] = big
    return mask


def _pattern(spec: Mapping[str, Any], background: Sequence[int], side: str) -> np.ndarray:
    """A guilloche-like security background: two families of crossing sine waves and a rosette
    of rings, drawn as thin lines where a phase field passes a whole number (vectorised)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    spacing, half_width = spec["spacing"], spec["line_width"] / 2
    shift = 0.0 if side == "front" else 1.3  # the back's waves run out of step with the front's
    waves_a = (yy + 18 * np.sin(xx / 61 + shift) + 7 * np.sin(xx / 17 + yy / 97)) / spacing
    waves_b = (yy - 18 * np.sin(xx / 61 + shift + 2.1) - 7 * np.sin(xx / 23 - yy / 83)) / spacing
    cx, cy = spec["rosette"]["center"]
    radius = np.hypot(xx - cx, yy - cy)
    angle = np.arctan2(yy - cy, xx - cx)
    rings = (radius + 6 * np.sin(12 * angle)) / (spacing * 0.8)
    out = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
    out[:] = np.asarray(background, dtype=np.float32)
    for field, color, weight in ((waves_a, spec["color"], 1.0), (waves_b, spec["color"], 0.7),
                                 (rings, spec["rosette"]["color"], 0.9)):
        distance = np.abs(field - np.round(field)) * spacing
        alpha = (np.clip(half_width + 0.5 - distance, 0, 1) * weight)[..., None]
        if field is rings:
            alpha = alpha * (radius < spec["rosette"]["radius"])[..., None]
        out += alpha * (np.asarray(color, dtype=np.float32) - out)
    return np.rint(out).astype(np.uint8)


def _emblem(draw: ImageDraw.ImageDraw, spec: Mapping[str, Any], colors: Mapping[str, Any]) -> None:
    """The national emblem's placeholder: a gold-ringed red disc with a yellow five-point star."""
    cx, cy, r = *spec["center"], spec["radius"]
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(colors["emblem_ring"]))
    inner = round(r * 0.84)
    draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=tuple(colors["emblem_disc"]))
    outer, small = r * 0.6, r * 0.6 * 0.382
    points = []
    for k in range(10):
        reach = outer if k % 2 == 0 else small
        theta = -math.pi / 2 + k * math.pi / 5
        points.append((cx + reach * math.cos(theta), cy + reach * math.sin(theta)))
    draw.polygon(points, fill=tuple(colors["emblem_star"]))


def _cover(image: np.ndarray, box: Box) -> np.ndarray:
    """``image`` cropped to the box's proportions around its centre and resized to fill it."""
    _, _, width, height = box
    h, w = image.shape[:2]
    if w * height > h * width:
        crop = round(h * width / height)
        image = image[:, (w - crop) // 2:(w - crop) // 2 + crop]
    else:
        crop = round(w * height / width)
        image = image[(h - crop) // 2:(h - crop) // 2 + crop]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _contain(gray: np.ndarray, box: Box) -> np.ndarray:
    """A grey image scaled to fit inside the box, centred on white, as RGB."""
    _, _, width, height = box
    h, w = gray.shape
    scale = min(width / w, height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.full((height, width), 255, dtype=np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    out[top:top + size[1], left:left + size[0]] = small
    return np.repeat(out[..., None], 3, axis=2)


def _paste(color: np.ndarray, image: np.ndarray, box: Box) -> None:
    color[_slices(box)] = image


def _slices(box: Box) -> tuple[slice, slice]:
    x, y, width, height = box
    return slice(y, y + height), slice(x, x + width)


def _corners(box: Box) -> tuple[int, int, int, int]:
    x, y, width, height = box
    return x, y, x + width - 1, y + height - 1


def _inset(box: Box, padding: int) -> Box:
    x, y, width, height = box
    return x + padding, y + padding, width - 2 * padding, height - 2 * padding


def _box_problems(layout: Mapping[str, Any]) -> list[str]:
    """Boxes the schema cannot check: on the card, and a min_size no bigger than the size."""
    problems = []

    def check(where: str, box: Sequence[int]) -> None:
        x, y, width, height = box
        if x + width > WIDTH or y + height > HEIGHT:
            problems.append(f"card.yaml {where}: {list(box)} reaches {x + width},{y + height}, off the "
                            f"{WIDTH}x{HEIGHT} px card; move it or make it smaller")

    def text(where: str, spec: Mapping[str, Any]) -> None:
        check(f"{where}.box", spec["box"])
        if spec["min_size"] > spec["size"]:
            problems.append(f"card.yaml {where}: min_size {spec['min_size']} is above size {spec['size']}")

    for side in ("front", "back"):
        layout_side = layout[side]
        for index, title in enumerate(layout_side["titles"]):
            text(f"{side}.titles[{index}]", title)
        for name, field in layout_side["fields"].items():
            text(f"{side}.fields.{name}.value", field["value"])
            if field["label"] is not None:
                text(f"{side}.fields.{name}.label", field["label"])
    check("front.portrait.box", layout["front"]["portrait"]["box"])
    check("front.qr.box", layout["front"]["qr"]["box"])
    check("back.chip", layout["back"]["chip"])
    for which in ("left", "right"):
        check(f"back.fingerprints.{which}.box", layout["back"]["fingerprints"][which]["box"])
        text(f"back.fingerprints.{which}.label", layout["back"]["fingerprints"][which]["label"])
    mrz = layout["back"]["mrz"]
    check("back.mrz", [*mrz["origin"], 30 * mrz["pitch"][0], 3 * mrz["pitch"][1]])
    return problems
