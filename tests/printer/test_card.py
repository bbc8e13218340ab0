"""CardData: the expiry rule, the QR text, the MRZ and the print-queue serialisation."""
from __future__ import annotations

import json
import struct
import unicodedata
from dataclasses import replace
from datetime import date

import cv2
import numpy as np
import pytest
from mrz.checker.td1 import TD1CodeChecker

from station import card as cards
from station.card import CardData, card_data, expiry_date, mrz_lines, printed, qr_text
from station.demographics import DemographicsError
from station.errors import BadRequest, StationError
from tests.printer.cards import APPLICANT, AUTHORITY, finger, make_card, portrait

make = make_card


# -- expiry: renewed at 25, 40 and 60; within 2 years before one, valid until the next -------

BORN = "1990-06-15"


@pytest.mark.parametrize(("issued", "expires"), [
    (date(2004, 6, 15), date(2015, 6, 15)),   # at 14
    (date(2013, 6, 14), date(2015, 6, 15)),   # the day before 23: until 25
    (date(2013, 6, 15), date(2030, 6, 15)),   # at 23, within 2 years of 25: until 40
    (date(2014, 12, 1), date(2030, 6, 15)),   # at 24
    (date(2015, 6, 15), date(2030, 6, 15)),   # at 25
    (date(2028, 6, 14), date(2030, 6, 15)),   # at 37
    (date(2028, 6, 15), date(2050, 6, 15)),   # at 38: until 60
    (date(2029, 6, 15), date(2050, 6, 15)),   # at 39
    (date(2048, 6, 14), date(2050, 6, 15)),   # at 57
    (date(2048, 6, 15), None),                # at 58: no expiry
    (date(2060, 6, 15), None),                # at 70
])
def test_expiry_at_the_boundaries(issued: date, expires: date | None) -> None:
    assert expiry_date(BORN, issued) == expires


def test_expiry_of_a_year_alone_counts_from_1_january() -> None:
    assert expiry_date("1990", date(2012, 12, 31)) == date(2015, 1, 1)  # 22
    assert expiry_date("1990", date(2013, 1, 1)) == date(2030, 1, 1)    # 23


def test_a_29_february_birthday_expires_on_28_february_in_a_common_year() -> None:
    assert expiry_date("2000-02-29", date(2020, 3, 1)) == date(2025, 2, 28)
    assert expiry_date("2000-02-29", date(2016, 3, 1)) == date(2025, 2, 28)
    assert expiry_date("2004-02-28", date(2020, 1, 1)) == date(2029, 2, 28)


# -- building a card ----------------------------------------------------------------------

def test_card_data_holds_normalised_text_and_the_expiry() -> None:
    decomposed = {**APPLICANT, "full_name": unicodedata.normalize("NFD", " Nguyễn  Thị Đào ")}
    card = make(decomposed)
    assert card.full_name == "Nguyễn Thị Đào" and unicodedata.is_normalized("NFC", card.full_name)
    assert card.expiry_date == date(2045, 3, 4)  # issued at 39: until 60
    assert card.authority == AUTHORITY
    assert card.fingerprint("left").shape == (288, 256)
    assert np.array_equal(card.fingerprint("right"), finger(2))  # PNG is lossless


def test_fingerprints_may_come_as_png_already() -> None:
    png = cv2.imencode(".png", finger(3))[1].tobytes()
    card = card_data(APPLICANT, portrait(), png, finger(4), date(2024, 7, 1), AUTHORITY)
    assert card.left_index_png == png


@pytest.mark.parametrize(("change", "message"), [
    ({"portrait_jpeg": b"\x89PNG\r\n\x1a\n..."}, "the portrait is not a JPEG"),
    ({"left_index": b"not a png"}, "left index fingerprint bytes are not a PNG"),
    ({"right_index": np.zeros((10, 10, 3), np.uint8)}, "right index fingerprint must be an 8-bit grey image"),
])
def test_bad_images_are_refused(change: dict, message: str) -> None:
    arguments = {"applicant": APPLICANT, "portrait_jpeg": portrait(), "left_index": finger(1),
                 "right_index": finger(2), "issue_date": date(2024, 7, 1), "authority": AUTHORITY}
    with pytest.raises(BadRequest, match=message):
        card_data(**{**arguments, **change})


def test_an_invalid_applicant_is_refused_by_demographics() -> None:
    with pytest.raises(DemographicsError) as info:
        make({**APPLICANT, "id_number": "031085001234"})  # digit 4 says a man
    assert [p.code for p in info.value.problems] == ["century_sex_mismatch"]


# -- what the card says -------------------------------------------------------------------

def test_qr_text() -> None:
    assert qr_text(make()) == (
        "031185001234|123456789|Nguyễn Thị Đào|04031985|Nữ|"
        "Số 12, ngõ 34 phố Lạch Tray, Phường Lạch Tray, Quận Ngô Quyền, Hải Phòng|01072024")


def test_qr_text_of_a_man_born_in_a_year_alone_without_an_old_id() -> None:
    applicant = {**APPLICANT, "full_name": "Trần Văn Bình", "sex": "M", "date_of_birth": "1950",
                 "id_number": "079050123456"}
    del applicant["old_id_number"]
    card = make(applicant)
    assert qr_text(card) == ("079050123456||Trần Văn Bình|1950|Nam|"
                             "Số 12, ngõ 34 phố Lạch Tray, Phường Lạch Tray, Quận Ngô Quyền, Hải Phòng|01072024")
    assert card.expiry_date is None  # issued at 74
    assert printed(card)["expiry_date"] == "Không thời hạn"
    assert printed(card)["date_of_birth"] == "1950"


def test_printed_values() -> None:
    values = printed(make())
    assert values["date_of_birth"] == "04/03/1985"
    assert values["sex"] == "Nữ" and values["nationality"] == "Việt Nam"
    assert values["issue_date"] == "01/07/2024" and values["expiry_date"] == "04/03/2045"


def test_mrz_lines_pass_the_independent_checker() -> None:
    lines = mrz_lines(make())
    assert lines == ("IDVNM1850012344031185001234<<<",
                     "8503046F4503048VNM<<<<<<<<<<<8",
                     "NGUYEN<<THI<DAO<<<<<<<<<<<<<<<")
    assert TD1CodeChecker("\n".join(lines))


# -- the print queue's bytes --------------------------------------------------------------

def test_to_bytes_round_trips_and_names_its_payloads() -> None:
    card = make()
    blob = card.to_bytes()
    assert CardData.from_bytes(blob) == card
    start = len(cards.MAGIC) + 4
    (size,) = struct.unpack(">I", blob[len(cards.MAGIC):start])
    header = json.loads(blob[start:start + size])
    assert [p["name"] for p in header["payloads"]] == ["portrait_jpeg", "left_index_png", "right_index_png",
                                                        "chip_portrait"]
    assert header["fields"]["full_name"] == "Nguyễn Thị Đào"
    assert header["fields"]["issue_date"] == "2024-07-01"


def test_a_card_without_expiry_or_marks_round_trips() -> None:
    card = replace(make(), expiry_date=None, identifying_marks=None, old_id_number=None)
    assert CardData.from_bytes(card.to_bytes()) == card


@pytest.mark.parametrize("damage", [
    lambda blob: b"XXXX" + blob[4:],
    lambda blob: blob[:-1],
    lambda blob: blob + b"\0",
    lambda blob: blob[:20],
    lambda blob: blob.replace(b'"fields"', b'"fieldz"'),
    lambda blob: blob.replace(b'"2024-07-01"', b'"2024-13-01"'),
])
def test_a_damaged_blob_is_a_bad_record(damage) -> None:
    with pytest.raises(StationError) as info:
        CardData.from_bytes(damage(make().to_bytes()))
    assert info.value.code == "bad_record" and info.value.message.startswith("card blob: ")
