"""The card's artwork: every text where its box says, in its font, with its diacritics; the QR
readable by an independent decoder; the layout loaded and checked like any config section."""
from __future__ import annotations

import unicodedata
from datetime import date
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFont, ImageOps
from skimage import data

from drivers.fingerprint.prints import SyntheticFinger
from drivers.printer.panels import recombine, separate
from station import config
from station.card import CardData, card_data, mrz_lines, qr_text
from station.cardface import HEIGHT, INK_THRESHOLD, WIDTH, CardFace, FontMissing, Side
from station.errors import ConfigError
from tests.printer.cards import APPLICANT, AUTHORITY

PACKAGED = Path(str(resources.files("station.defaults")))
def _fill(words: str, length: int) -> str:
    """Realistic Vietnamese text repeated to exactly ``length`` characters."""
    text = ((words + " ") * (length // len(words) + 2))[:length]
    return text[:-1] + "a" if text.endswith(" ") else text


# Every text field at the applicant schema's maximum length.
LONGEST = {
    **APPLICANT,
    "full_name": _fill("Nguyễn Hoàng Phương Trường Khánh Thượng", 100),
    "place_of_origin": _fill("Phường Nguyễn Thị Minh Khai, Quận Hoàn Kiếm, Thành phố Hà Nội,", 200),
    "place_of_residence": _fill("Số 1234 đường Nguyễn Trường Tộ, Phường Thượng Đình, Quận Thanh Xuân,", 200),
    "identifying_marks": _fill("Sẹo chấm cách 2cm dưới sau cánh mũi phải, nốt ruồi trên mép trái,", 200),
}

PORTRAIT = data.astronaut()[0:300, 80:330]  # RGB


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> CardFace:
    return CardFace.from_config(etc=tmp_path_factory.mktemp("etc"))


@pytest.fixture(scope="module")
def layout(face: CardFace) -> dict:
    return face.layout


def make(applicant: dict = APPLICANT) -> CardData:
    jpeg = cv2.imencode(".jpg", PORTRAIT[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return card_data(applicant, jpeg, SyntheticFinger(5, 7).impression(), SyntheticFinger(5, 2).impression(),
                     date(2024, 7, 1), AUTHORITY)


@pytest.fixture(scope="module")
def card() -> CardData:
    return make()


@pytest.fixture(scope="module")
def sides(face: CardFace, card: CardData) -> tuple[Side, Side]:
    return face.render(card)


def crop(box: list[int], image: np.ndarray) -> np.ndarray:
    x, y, width, height = box
    return image[y:y + height, x:x + width]


def ink(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its ink's bounding box."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert rows.size, "no ink"
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def pillow_ink(text: str, font_path: str, size: int) -> np.ndarray:
    """``text`` rendered by Pillow alone, thresholded as K is, cropped to its ink."""
    font = ImageFont.truetype(font_path, size)
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    image = Image.new("L", (right - left + 20, bottom - top + 20), 0)
    ImageDraw.Draw(image).text((10 - left, 10 - top), text, font=font, fill=255, anchor="ls")
    return ink(np.asarray(image) >= INK_THRESHOLD)


def black_boxes(layout: dict) -> list[list[int]]:
    """Every box the layout lets black ink into."""
    boxes = [layout["front"]["qr"]["box"]]
    for side in ("front", "back"):
        boxes += [title["box"] for title in layout[side]["titles"]]
        for field in layout[side]["fields"].values():
            boxes.append(field["value"]["box"])
            if field["label"] is not None:
                boxes.append(field["label"]["box"])
    boxes += [layout["back"]["fingerprints"][which]["label"]["box"] for which in ("left", "right")]
    mrz = layout["back"]["mrz"]
    boxes.append([*mrz["origin"], 30 * mrz["pitch"][0], 3 * mrz["pitch"][1]])
    return boxes


# -- the layout is a config section ------------------------------------------------------

def test_the_layout_loads_and_validates_from_an_etc_dir(tmp_path: Path) -> None:
    assert "card" in config.sections()
    assert config.load("card", None, tmp_path, []) == yaml.safe_load((PACKAGED / "card.yaml").read_text())


def test_a_layout_typo_is_reported_with_file_line_and_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "card.yaml").write_text("front:\n  qr:\n    eror: h\n")
    with pytest.raises(ConfigError) as info:
        config.load("card", None, tmp_path, [])
    assert info.value.problems == [f"{tmp_path / 'card.yaml'}:3: unknown key 'front.qr.eror' "
                                   f"(did you mean 'error'?; allowed: border, box, error, min_module_px)"]


def test_a_box_off_the_card_is_refused_with_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        CardFace.from_config(tmp_path, ["front.qr.box=[900, 26, 166, 166]"])
    assert info.value.problems == ["card.yaml front.qr.box: [900, 26, 166, 166] reaches 1066,192, off the "
                                   "1016x648 px card; move it or make it smaller"]


@pytest.mark.parametrize(("font", "package"), [("mrz", "fonts-ocr-b"), ("regular", "fonts-dejavu-core")])
def test_a_missing_font_names_the_debian_package(tmp_path: Path, font: str, package: str) -> None:
    with pytest.raises(FontMissing) as info:
        CardFace.from_config(tmp_path, [f"fonts.{font}.path=/nonexistent/{font}.ttf"])
    error = info.value
    assert error.code == "font_missing" and error.as_reply()["code"] == "font_missing"
    assert f"/nonexistent/{font}.ttf" in error.message and f"apt-get install {package}" in error.message
    assert f"fonts.{font}" in error.message


# -- the layers ----------------------------------------------------------------------------

def test_each_side_is_a_colour_layer_and_a_black_mask(sides: tuple[Side, Side]) -> None:
    for side in sides:
        assert side.color.shape == (HEIGHT, WIDTH, 3) and side.color.dtype == np.uint8
        assert side.black.shape == (HEIGHT, WIDTH) and side.black.dtype == bool
        composite = side.composite()
        assert (composite[side.black] == 0).all()
        assert np.array_equal(composite[~side.black], side.color[~side.black])


def test_the_name_is_drawn_with_its_diacritics(sides, layout, card) -> None:
    value = layout["front"]["fields"]["full_name"]["value"]
    font = layout["fonts"][value["font"]]["path"]
    drawn = ink(crop(value["box"], sides[0].black))
    assert np.array_equal(drawn, pillow_ink(unicodedata.normalize("NFC", card.full_name), font, value["size"]))
    stripped = "".join(c for c in unicodedata.normalize("NFD", card.full_name)
                       if not unicodedata.combining(c)).replace("Đ", "D")
    bare = pillow_ink(stripped, font, value["size"])
    assert drawn.shape != bare.shape or not np.array_equal(drawn, bare)


def test_fitting_normalises_to_nfc(face, layout) -> None:
    spec = layout["front"]["fields"]["full_name"]["value"]
    name = "Nguyễn Thị Đào"
    assert face.fit(unicodedata.normalize("NFD", name), spec) == face.fit(name, spec)
    assert [line.text for line in face.fit(name, spec)[1]] == [name]


def test_the_qr_code_decodes_to_the_qr_text(sides, card) -> None:
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(sides[0].composite())
    assert text == qr_text(card)
    printed = recombine(separate(sides[0]))  # ... and as the printer would lay it
    assert cv2.QRCodeDetector().detectAndDecode(printed)[0] == qr_text(card)


def test_a_qr_code_too_dense_to_read_refuses_the_card(face) -> None:
    """Past what fits at min_module_px (3 px, 0.25 mm) even at error level L, the card is
    refused rather than printed with a QR code no phone reads."""
    with pytest.raises(ConfigError, match=r"the QR code \(\d+-L, \d+ modules with its border\) needs "
                                          r"\d+ px; front.qr.box is 204x204: enlarge it"):
        face.front(make(LONGEST))


@pytest.fixture(scope="module")
def dense_face(tmp_path_factory: pytest.TempPathFactory) -> CardFace:
    """A face that prints any QR code, so the longest card's text can be looked at."""
    return CardFace.from_config(tmp_path_factory.mktemp("etc"), ["front.qr.min_module_px=1"])


@pytest.mark.parametrize("applicant", [APPLICANT, LONGEST], ids=["ordinary", "longest"])
def test_black_ink_stays_inside_the_layout_boxes(dense_face, applicant) -> None:
    allowed = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for x, y, width, height in black_boxes(dense_face.layout):
        allowed[y:y + height, x:x + width] = True
    for side in dense_face.render(make(applicant)):
        outside = side.black & ~allowed
        assert not outside.any(), np.argwhere(outside)[:5]


def test_a_long_value_is_wrapped_and_shrunk_inside_its_box(face, layout) -> None:
    spec = layout["front"]["fields"]["place_of_residence"]["value"]
    size, lines = face.fit(LONGEST["place_of_residence"], spec)
    assert spec["min_size"] <= size < spec["size"] and len(lines) > 2
    assert " ".join(line.text for line in lines) == LONGEST["place_of_residence"]


def test_text_that_cannot_fit_refuses_the_card_naming_the_box(face, layout) -> None:
    spec = layout["front"]["fields"]["sex"]["value"]
    with pytest.raises(ConfigError, match=r"does not fit the 110x30 px box at 470,370 even at min_size 16"):
        face.fit("Nữ " * 20, spec)


def test_a_hidden_field_is_not_drawn(tmp_path: Path, card: CardData) -> None:
    hidden = CardFace.from_config(tmp_path, ["front.fields.sex.show=false"])
    front = hidden.front(card)
    field = hidden.layout["front"]["fields"]["sex"]
    assert not crop(field["value"]["box"], front.black).any()
    assert not crop(field["label"]["box"], front.black).any()


def test_the_mrz_is_drawn_in_ocr_b_one_character_a_cell(sides, layout, card) -> None:
    spec = layout["back"]["mrz"]
    font = layout["fonts"][spec["font"]]["path"]
    (x0, y0), (pitch_x, pitch_y) = spec["origin"], spec["pitch"]
    glyphs = {}
    for row, line in enumerate(mrz_lines(card)):
        for column, char in enumerate(line):
            cell = [x0 + column * pitch_x, y0 + row * pitch_y, pitch_x, pitch_y]
            if char not in glyphs:
                glyphs[char] = pillow_ink(char, font, spec["size"])
            assert np.array_equal(ink(crop(cell, sides[1].black)), glyphs[char]), (row, column, char)


def test_colour_art_portrait_and_fingerprints(sides, layout, card) -> None:
    front, back = sides
    colors = layout["colors"]
    (cx, cy), radius = layout["front"]["emblem"]["center"], layout["front"]["emblem"]["radius"]
    assert list(front.color[cy, cx]) == colors["emblem_star"]
    assert list(front.color[cy + round(radius * 0.75), cx]) == colors["emblem_disc"]
    box = layout["front"]["portrait"]["box"]
    expected = np.asarray(ImageOps.fit(Image.fromarray(PORTRAIT), tuple(box[2:]), Image.LANCZOS), dtype=float)
    assert np.abs(crop(box, front.color).astype(float) - expected).mean() < 8
    for which in ("left", "right"):
        printed = crop(layout["back"]["fingerprints"][which]["box"], back.color)
        assert (printed[..., 0] == printed[..., 2]).all() and printed.min() < 80  # grey ridges
    chip = layout["back"]["chip"]
    assert (crop(chip, back.color) == 255).all() and not crop(chip, back.black).any()
