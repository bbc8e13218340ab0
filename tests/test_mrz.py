"""The TD1 MRZ against Doc 9303's specimen and the independent ``mrz`` package (PyPI)."""
from __future__ import annotations

import unicodedata
from datetime import date

import pytest
from mrz.checker.td1 import TD1CodeChecker
from mrz.generator.td1 import TD1CodeGenerator

from station import mrz
from station.errors import BadRequest

SPECIMEN = (
    "I<UTOD231458907<<<<<<<<<<<<<<<",
    "7408122F1204159UTO<<<<<<<<<<<6",
    "ERIKSSON<<ANNA<MARIA<<<<<<<<<<",
)

# Every Vietnamese vowel with every tone, and Đ: each must come out as its bare Latin letter.
VOWELS = {"a": "A", "ă": "A", "â": "A", "e": "E", "ê": "E", "i": "I", "o": "O", "ô": "O",
          "ơ": "O", "u": "U", "ư": "U", "y": "Y"}
TONES = ("", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323")  # ngang huyền sắc hỏi ngã nặng


def checker_report(lines: tuple[str, str, str]) -> dict[str, bool]:
    checker = TD1CodeChecker("\n".join(lines))
    bool(checker)  # runs every check into the report
    return dict(checker.report._rep[0])


def test_the_icao_specimen_byte_for_byte() -> None:
    lines = mrz.td1("I", "UTO", "D23145890", "", "740812", "F", "120415", "UTO", "",
                    ("Eriksson", "Anna Maria"))
    assert lines == SPECIMEN
    assert TD1CodeChecker("\n".join(lines))


@pytest.mark.parametrize(("field", "digit"), [
    ("D23145890", "7"), ("740812", "2"), ("120415", "9"),
    # Doc 9303 Part 11's BAC example: L898902C< 3, 690806 1, 940623 6.
    ("L898902C<", "3"), ("690806", "1"), ("940623", "6"),
])
def test_check_digits_of_published_examples(field: str, digit: str) -> None:
    assert mrz.check_digit(field) == digit


def test_a_character_outside_the_mrz_set_has_no_check_digit() -> None:
    with pytest.raises(BadRequest, match="'a' in 'abc' is not an MRZ character"):
        mrz.check_digit("abc")


def test_vietnamese_names_are_written_family_name_first() -> None:
    assert mrz.name_field(*mrz.vietnamese_names("NGUYỄN VĂN AN")) == "NGUYEN<<VAN<AN".ljust(30, "<")
    assert mrz.name_field(*mrz.vietnamese_names("Trần Thị Đào")) == "TRAN<<THI<DAO".ljust(30, "<")
    assert mrz.vietnamese_names("Lê") == ("Lê", "")
    assert mrz.name_field("Lê") == "LE".ljust(30, "<")


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_every_vietnamese_letter_loses_its_diacritics(form: str) -> None:
    for vowel, bare in VOWELS.items():
        for tone in TONES:
            letter = unicodedata.normalize(form, vowel + tone)
            assert mrz.transliterate(letter) == bare, letter
            assert mrz.transliterate(letter.upper()) == bare, letter.upper()
    assert mrz.transliterate(unicodedata.normalize(form, "Đặng đức")) == "DANG<DUC"


def test_punctuation_in_names() -> None:
    assert mrz.transliterate("H'Hen Niê") == "HHEN<NIE"  # apostrophes are left out
    assert mrz.transliterate("Nguyễn-Trần") == "NGUYEN<TRAN"  # a hyphen separates
    assert mrz.transliterate("  Văn   An ") == "VAN<AN"


def test_letters_no_table_can_write_are_refused_not_dropped() -> None:
    with pytest.raises(BadRequest, match="'阮'"):
        mrz.transliterate("阮文安")


def test_a_long_name_is_cut_from_the_end_of_the_secondary_identifier() -> None:
    field = mrz.name_field("Tôn Nữ", "Hoàng Ngọc Phương Thảo Nguyên Khánh")
    assert field == "TON<NU<<HOANG<NGOC<PHUONG<THAO"
    field = mrz.name_field("Nguyễn", "Hoàng Ngọc Phương Thảo Nguyên Khánh")
    assert len(field) == 30 and field == "NGUYEN<<HOANG<NGOC<PHUONG<THAO"


def test_a_cut_that_falls_on_a_filler_ends_with_the_next_initial() -> None:
    # Untruncated: NGUYEN<<HOANG<NGOC<PHUONG<THI<AN; position 30 is the filler after THI.
    field = mrz.name_field("Nguyễn", "Hoàng Ngọc Phương Thi An Bình")
    assert field == "NGUYEN<<HOANG<NGOC<PHUONG<THIA"
    # A primary identifier of exactly 28 letters: position 30 is the secondary's initial.
    field = mrz.name_field("A" * 28, "Bình")
    assert field == "A" * 28 + "<B"


def test_a_primary_identifier_that_fills_the_field_alone() -> None:
    assert mrz.name_field("X" * 35, "An") == "X" * 30


@pytest.mark.parametrize(("value", "expected"), [
    (date(1985, 3, 4), "850304"), ("1985-03-04", "850304"), ("2001-12-31", "011231"),
    ("1985", "85<<<<"), (None, "<<<<<<"),
])
def test_dates(value: object, expected: str) -> None:
    assert mrz.yymmdd(value) == expected


def test_a_date_that_is_not_one() -> None:
    with pytest.raises(BadRequest, match="'1985-02-30' is not a date"):
        mrz.yymmdd("1985-02-30")


VIETNAMESE = [
    # (full name, id number, birth, sex, expiry)
    ("Nguyễn Thị Đào", "031185001234", "1985-03-04", "F", date(2045, 3, 4)),
    ("Trần Văn Bình", "079090123456", "1990-11-30", "M", date(2030, 11, 30)),
    ("Phạm Ngọc Ánh", "001305000001", "2005-01-01", "F", date(2030, 1, 1)),
    ("Lê Quý Đôn", "048060999999", "1960-07-07", "M", date(2020, 7, 7)),
    ("Tôn Nữ Hoàng Ngọc Phương Thảo Nguyên", "046199000042", "1999-02-28", "F", date(2024, 2, 28)),
]


@pytest.mark.parametrize(("name", "number", "birth", "sex", "expiry"), VIETNAMESE)
def test_vietnamese_cards_pass_the_independent_checker(name, number, birth, sex, expiry) -> None:
    lines = mrz.td1("ID", "VNM", number[-9:], number, mrz.yymmdd(birth), sex, mrz.yymmdd(expiry),
                    "VNM", "", mrz.vietnamese_names(name))
    assert all(len(line) == 30 for line in lines)
    assert lines[0] == f"IDVNM{number[-9:]}{mrz.check_digit(number[-9:])}{number}<<<"
    assert TD1CodeChecker("\n".join(lines)), checker_report(lines)
    # ... and are what the independent generator writes for the same fields.
    primary, secondary = (mrz.transliterate(part) for part in mrz.vietnamese_names(name))
    generated = TD1CodeGenerator("ID", "VNM", number[-9:], mrz.yymmdd(birth), sex, mrz.yymmdd(expiry),
                                 "VNM", primary, secondary.replace("<", " "), number, "")
    if len(primary) + 2 + len(secondary) <= 30:  # the package refuses names it would have to cut
        assert "\n".join(lines) == str(generated)


def test_a_year_alone_and_no_expiry_keep_every_check_digit_valid() -> None:
    """Fillers in a date are Doc 9303's way to write an unknown month and day, or no expiry.
    The ``mrz`` checker refuses them as date formats, but its check digit arithmetic (which
    counts ``<`` as 0) agrees with ours on every digit."""
    lines = mrz.td1("ID", "VNM", "185001234", "031185001234", mrz.yymmdd("1985"), "F", mrz.yymmdd(None),
                    "VNM", "", ("Nguyễn", "Thị Đào"))
    assert lines[1][:15] == "85<<<<1F<<<<<<0"
    report = checker_report(lines)
    assert not report.pop("birth date") and not report.pop("expiry date")
    assert all(report.values()), report


@pytest.mark.parametrize(("argument", "value", "message"), [
    (2, "1850012345", "document number: '1850012345' does not fit"),
    (3, "0311850012345678", "optional data 1"),
    (4, "85034", "birth date: '85034' is not YYMMDD"),
    (5, "Z", "sex: 'Z' is not allowed"),
    (1, "VN", "issuing state: 'VN' does not fit"),
])
def test_values_that_do_not_fit_their_field_are_refused(argument: int, value: str, message: str) -> None:
    arguments = ["ID", "VNM", "185001234", "031185001234", "850304", "F", "450304", "VNM", "",
                 ("Nguyễn", "Thị Đào")]
    arguments[argument] = value
    with pytest.raises(BadRequest, match=message):
        mrz.td1(*arguments)
