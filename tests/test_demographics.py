"""Applicant demographics: normalisation, each rule's field and code, and the messages.

The id number vectors follow REFERENCE.md: ``031`` + ``1`` + ``85`` + six digits is a woman
born in 1985 whose birth was registered in Hải Phòng.
"""
from __future__ import annotations

import time
import unicodedata
from datetime import date
from importlib import resources

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from station import demographics
from station.demographics import (
    CODES, FIELDS, PROVINCES, DemographicsError, Problem, birth_year, make_id_number,
    province_name, validate,
)
from station.errors import StationError

TODAY = date(2025, 6, 1)
WOMAN_1985_HAI_PHONG = "031185004217"


def applicant(**changes: object) -> dict[str, object]:
    """A valid applicant, changed by keyword; ``field=None`` would be a value, so use drop()."""
    base: dict[str, object] = {
        "full_name": "Nguyễn Thị Hương Giang",
        "date_of_birth": "1985-03-04",
        "sex": "F",
        "nationality": "VNM",
        "id_number": WOMAN_1985_HAI_PHONG,
        "place_of_origin": "Xã Tiên Thắng, Tiên Lãng, Hải Phòng",
        "place_of_residence": "Số 12 Phố Huế, Hai Bà Trưng, Hà Nội",
        "ethnicity": "Kinh",
        "religion": "Không",
    }
    base.update(changes)
    return base


def drop(record: dict[str, object], *keys: str) -> dict[str, object]:
    return {key: value for key, value in record.items() if key not in keys}


def problems(record: object) -> list[Problem]:
    with pytest.raises(DemographicsError) as info:
        validate(record, today=TODAY)
    return info.value.problems


def found(record: object) -> list[tuple[str, str]]:
    """(field, code) of every problem, in reported order."""
    return [(p.field, p.code) for p in problems(record)]


# -- normalisation ---------------------------------------------------------------------------

def test_a_valid_applicant_comes_back_normalised() -> None:
    typed = applicant(
        full_name="  Nguye\u0302\u0303n   Thi\u0323\tHu\u031bo\u031bng\u00a0Giang \n",
        nationality=" vnm ",
        place_of_residence="Số 12 Phố Huế,\r\nHai Bà Trưng,  Hà Nội",
        identifying_marks="Nốt ruồi C:1cm trên trước mép phải",
    )
    assert unicodedata.normalize("NFC", typed["full_name"]) != typed["full_name"]  # really NFD
    out = validate(typed, today=TODAY)
    assert out["full_name"] == "Nguyễn Thị Hương Giang"
    assert unicodedata.is_normalized("NFC", out["full_name"])
    assert out["nationality"] == "VNM"
    assert out["place_of_residence"] == "Số 12 Phố Huế, Hai Bà Trưng, Hà Nội"
    assert list(out) == [key for key in FIELDS if key in typed]  # canonical order, no old_id_number


def test_length_is_counted_after_nfc() -> None:
    name = "Nguyễn " * 14 + "Lý"  # exactly 100 characters in NFC
    assert len(name) == 100
    decomposed = unicodedata.normalize("NFD", name)
    assert len(decomposed) > 100
    assert validate(applicant(full_name=decomposed), today=TODAY)["full_name"] == name
    assert found(applicant(full_name=name + "n")) == [("full_name", "too_long")]


def test_the_reference_example_is_a_woman_born_1985_in_hai_phong() -> None:
    out = validate(applicant(), today=TODAY)
    assert out["id_number"] == WOMAN_1985_HAI_PHONG
    assert birth_year(out) == 1985
    assert province_name(out["id_number"][:3]) == "Hải Phòng"


@pytest.mark.parametrize("digit, meaning", [
    ("0", "a man born in the 1900s"),
    ("2", "a man born in the 2000s"),
    ("3", "a woman born in the 2000s"),
])
def test_its_male_and_2000s_variants_fail(digit: str, meaning: str) -> None:
    number = "031" + digit + "85004217"
    (problem,) = problems(applicant(id_number=number))
    assert (problem.field, problem.code) == ("id_number", "century_sex_mismatch")
    assert problem.message == (f"id_number: digit 4 is {digit} ({meaning}) but sex is F and the birth year "
                               "1985: a woman born in 1985 has 1")


def test_a_man_cannot_carry_a_womans_number() -> None:
    (problem,) = problems(applicant(sex="M"))
    assert problem.code == "century_sex_mismatch"
    assert problem.message.endswith("a man born in 1985 has 0")


def test_the_year_digits_must_be_the_birth_year() -> None:
    (problem,) = problems(applicant(id_number="031186004217"))
    assert (problem.field, problem.code) == ("id_number", "birth_year_mismatch")
    assert problem.message == "id_number: digits 5-6 are 86 but the birth year is 1985: they must be 85"


def test_century_and_year_are_both_reported() -> None:
    assert found(applicant(id_number="031290004217")) == [
        ("id_number", "century_sex_mismatch"), ("id_number", "birth_year_mismatch"),
    ]


@pytest.mark.parametrize("code", ["000", "003", "097", "100", "999"])
def test_a_province_code_must_be_in_the_table(code: str) -> None:
    (problem,) = problems(applicant(id_number=code + "185004217"))
    assert (problem.field, problem.code) == ("id_number", "province_unknown")
    assert problem.message.startswith(f"id_number: digits 1-3 are {code}, which is no province code")


def test_the_province_table() -> None:
    assert len(PROVINCES) == 63
    assert all(len(code) == 3 and code.isdigit() for code in PROVINCES)
    assert all(unicodedata.is_normalized("NFC", name) for name in PROVINCES.values())
    assert [province_name(c) for c in ("001", "031", "048", "079", "096")] == [
        "Hà Nội", "Hải Phòng", "Đà Nẵng", "TP. Hồ Chí Minh", "Cà Mau"]
    assert province_name("003") is None
    assert province_name("31") is None


def test_a_woman_born_in_the_2000s() -> None:
    record = applicant(date_of_birth="2004-11-30", id_number="079304000001")
    assert validate(record, today=TODAY)["date_of_birth"] == "2004-11-30"


# -- date of birth -----------------------------------------------------------------------------

def test_a_year_alone_is_a_date_of_birth() -> None:
    out = validate(applicant(date_of_birth="1985"), today=TODAY)
    assert out["date_of_birth"] == "1985"
    assert birth_year(out) == 1985


@pytest.mark.parametrize("day", ["2023-02-29", "1900-02-29"])
def test_29_february_of_a_common_year_is_not_a_date(day: str) -> None:
    record = applicant(date_of_birth=day, id_number=make_id_number("031", "F", int(day[:4]), 1))
    (problem,) = problems(record)
    assert (problem.field, problem.code) == ("date_of_birth", "not_a_date")
    assert f"({day[:4]} is not a leap year)" in problem.message


@pytest.mark.parametrize("day", ["2024-02-29", "2000-02-29"])
def test_29_february_of_a_leap_year_is(day: str) -> None:
    record = applicant(date_of_birth=day, id_number=make_id_number("031", "F", int(day[:4]), 1))
    assert validate(record, today=TODAY)["date_of_birth"] == day


@pytest.mark.parametrize("day, code", [
    ("1985-13-01", "not_a_date"),
    ("1985-04-31", "not_a_date"),
    ("1985-00-10", "not_a_date"),
    ("2025-06-02", "future_date"),
    ("2026", "future_date"),
    ("1899-12-31", "before_1900"),
    ("1899", "before_1900"),
    ("04/03/1985", "pattern"),
    ("1985-3-4", "pattern"),
    ("85", "pattern"),
    ("1985-03-04T00:00", "too_long"),
])
def test_a_bad_date_of_birth(day: str, code: str) -> None:
    assert found(applicant(date_of_birth=day)) == [("date_of_birth", code)]


def test_today_is_not_the_future() -> None:
    record = applicant(date_of_birth=TODAY.isoformat(), id_number=make_id_number("001", "F", TODAY.year, 7))
    assert validate(record, today=TODAY)["date_of_birth"] == TODAY.isoformat()


def test_without_today_the_clock_decides() -> None:
    with pytest.raises(DemographicsError) as info:
        validate(applicant(date_of_birth=f"{date.today().year + 1}"))
    assert [p.code for p in info.value.problems] == ["future_date"]


# -- the other fields --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["H'Hen Niê", "Jean-Pierre Nguyễn", "Lý", "김민준", "สมชาย",
                                  "Đặng Văn Lâm"])
def test_names_of_letters(name: str) -> None:
    assert validate(applicant(full_name=name), today=TODAY)["full_name"] == name


@pytest.mark.parametrize("name", ["Nguyễn Văn 2", "Nguyễn_Văn", "Nguyễn²", "Trần.", "-Lan", "'Lan",
                                  "Lan\x00", "\u0301Lan"])
def test_names_with_other_characters(name: str) -> None:
    (problem,) = problems(applicant(full_name=name))
    assert (problem.field, problem.code) == ("full_name", "pattern")
    assert problem.message.endswith("allowed: letters of any script, spaces, apostrophes and hyphens, "
                                    "starting with a letter")


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_name_is_empty(blank: str) -> None:
    assert found(applicant(full_name=blank)) == [("full_name", "empty")]


@pytest.mark.parametrize("sex", ["m", "X", "Nam", ""])
def test_sex_is_m_or_f(sex: str) -> None:
    (problem,) = problems(applicant(sex=sex))
    assert (problem.field, problem.code) == ("sex", "not_allowed")
    assert problem.message == f"sex: {sex!r} is not allowed; allowed: 'M', 'F'"


@pytest.mark.parametrize("nationality, code", [("XXX", "country_unknown"), ("vn", "pattern"),
                                               ("Việt Nam", "too_long"), ("V1N", "pattern")])
def test_nationality_is_an_iso_alpha3_code(nationality: str, code: str) -> None:
    assert found(applicant(nationality=nationality)) == [("nationality", code)]


def test_a_foreign_alpha3_code_is_accepted() -> None:
    assert validate(applicant(nationality="lao"), today=TODAY)["nationality"] == "LAO"


@pytest.mark.parametrize("number, code", [
    ("03118500421", "pattern"),
    ("03118500421x", "pattern"),
    ("031 185 004217", "too_long"),
    ("0311850042170", "too_long"),
    ("٠٣١١٨٥٠٠٤٢١٧", "pattern"),  # Arabic-Indic digits are digits to \d, not to an id number
])
def test_id_number_is_twelve_ascii_digits(number: str, code: str) -> None:
    assert found(applicant(id_number=number)) == [("id_number", code)]


def test_old_id_number_is_optional_and_nine_digits() -> None:
    assert validate(applicant(old_id_number="031456789"), today=TODAY)["old_id_number"] == "031456789"
    assert found(applicant(old_id_number="03145678")) == [("old_id_number", "pattern")]
    assert found(applicant(old_id_number="")) == [("old_id_number", "pattern")]


@pytest.mark.parametrize("field", ["place_of_origin", "place_of_residence", "ethnicity", "religion",
                                   "identifying_marks"])
def test_text_fields(field: str) -> None:
    assert validate(applicant(**{field: "x" * 200}), today=TODAY)[field] == "x" * 200
    assert found(applicant(**{field: "x" * 201})) == [(field, "too_long")]
    assert found(applicant(**{field: " "})) == [(field, "empty")]
    for control in ("\x00", "\x1b[31m", "\x7f", "\x85", "\u202e", "\ufeff", "\ud800"):
        assert found(applicant(**{field: f"Hà{control}Nội"})) == [(field, "pattern")], repr(control)


def test_identifying_marks_are_optional() -> None:
    assert "identifying_marks" not in validate(applicant(), today=TODAY)


# -- shape of the input ------------------------------------------------------------------------

def test_an_unknown_key_is_refused_with_a_suggestion() -> None:
    (problem,) = problems(applicant(ful_name="Lan"))
    assert (problem.field, problem.code) == ("ful_name", "unknown_field")
    assert problem.message == (
        "unknown key 'ful_name' (did you mean 'full_name'?); allowed: full_name, date_of_birth, sex, "
        "nationality, id_number, old_id_number, place_of_origin, place_of_residence, ethnicity, "
        "religion, identifying_marks")
    (dob,) = problems(applicant(dob="1985"))
    assert dob.message.startswith("unknown key 'dob'; allowed: ")


def test_every_missing_field_is_named() -> None:
    assert found({}) == [(field, "required") for field in
                         ("full_name", "date_of_birth", "sex", "nationality", "id_number", "place_of_origin",
                          "place_of_residence", "ethnicity", "religion")]
    assert problems(drop(applicant(), "religion"))[0].message == "religion: missing; it is required"


@pytest.mark.parametrize("value, kind", [(1985, "integer"), (None, "null"), (["Lan"], "a list"),
                                         ({"given": "Lan"}, "a mapping"), (True, "boolean"), (1.5, "number"),
                                         (b"Lan", "bytes"),
                                         pytest.param(10**5000, "integer", id="5000-digit-int")])
def test_values_must_be_strings(value: object, kind: str) -> None:
    (problem,) = problems(applicant(full_name=value))
    assert (problem.field, problem.code) == ("full_name", "wrong_type")
    assert problem.message == f"full_name: expected a string, got {kind}"


@pytest.mark.parametrize("record", [None, [], "Nguyễn", 5, [("full_name", "Lan")]])
def test_an_applicant_is_a_mapping(record: object) -> None:
    (problem,) = problems(record)
    assert (problem.field, problem.code) == ("", "not_a_mapping")
    assert problem.message.startswith("applicant: expected a mapping of field: value, got ")


def test_every_problem_is_reported_at_once_in_field_order() -> None:
    record = drop(applicant(full_name="Lan 2", date_of_birth="1985-02-30", nationality="ZZZ",
                            id_number="999185004217", religon="Không", ethnicity=7), "religion")
    assert found(record) == [
        ("full_name", "pattern"), ("date_of_birth", "not_a_date"), ("nationality", "country_unknown"),
        ("id_number", "province_unknown"), ("ethnicity", "wrong_type"), ("religion", "required"),
        ("religon", "unknown_field"),
    ]
    with pytest.raises(DemographicsError) as info:
        validate(record, today=TODAY)
    assert str(info.value) == "\n".join(p.message for p in info.value.problems)


def test_a_5_mb_value_key_or_list_is_refused_cheaply() -> None:
    huge = "A" * 5_000_000
    cases = [
        (applicant(full_name=huge), ("full_name", "too_long")),
        (applicant(id_number="1" * 5_000_000), ("id_number", "too_long")),
        (applicant(place_of_origin=huge), ("place_of_origin", "too_long")),
        (applicant(**{huge: "x"}), ("A" * 63 + "…", "unknown_field")),
        (applicant(religion=[huge] * 1_000_000), ("religion", "wrong_type")),
        (dict.fromkeys(map(str, range(1_000_000)), "x"), ("", "too_many_fields")),
    ]
    for record, expected in cases:
        started = time.perf_counter()
        got = found(record)
        assert time.perf_counter() - started < 0.25, expected
        assert got == [expected]
    assert problems(applicant(full_name=huge))[0].message.startswith(
        "full_name: 5000000 characters; allowed at most 100 (")
    assert len(problems(applicant(sex=huge))[0].message) < 100


def test_the_error_is_a_station_error_with_structured_problems() -> None:
    with pytest.raises(StationError) as info:
        validate(applicant(sex="X"), today=TODAY)
    error = info.value
    assert isinstance(error, DemographicsError)
    assert (error.code, error.retryable) == ("invalid_demographics", False)
    reply = error.as_reply()
    assert reply["code"] == "invalid_demographics"
    assert reply["details"]["problems"] == [{"field": "sex", "code": "not_allowed",
                                             "message": "sex: 'X' is not allowed; allowed: 'M', 'F'"}]


# -- make_id_number, the schema, the documented codes ------------------------------------------

def test_make_id_number_builds_the_reference_layout() -> None:
    assert make_id_number("031", "F", 1985, 4217) == WOMAN_1985_HAI_PHONG
    assert make_id_number("079", "M", 2010, 999_999) == "079210999999"
    assert make_id_number("001", "F", 2399, 0) == "001999000000"


@pytest.mark.parametrize("args, field, code", [
    (("003", "F", 1985, 1), "id_number", "province_unknown"),
    (("031", "X", 1985, 1), "sex", "not_allowed"),
    (("031", "F", 1899, 1), "date_of_birth", "before_1900"),
    (("031", "F", 2400, 1), "date_of_birth", "future_date"),
    (("031", "F", 1985, 1_000_000), "id_number", "pattern"),
    (("031", "F", 1985, -1), "id_number", "pattern"),
])
def test_make_id_number_refuses_what_no_number_can_say(args: tuple, field: str, code: str) -> None:
    with pytest.raises(DemographicsError) as info:
        make_id_number(*args)
    assert [(p.field, p.code) for p in info.value.problems] == [(field, code)]


def test_the_schema_is_packaged_valid_and_names_the_canonical_keys() -> None:
    text = (resources.files("station") / "schemas" / "applicant.schema.yaml").read_text("utf-8")
    schema = yaml.safe_load(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert FIELDS == ("full_name", "date_of_birth", "sex", "nationality", "id_number", "old_id_number",
                      "place_of_origin", "place_of_residence", "ethnicity", "religion", "identifying_marks")
    assert set(schema["required"]) == set(FIELDS) - {"old_id_number", "identifying_marks"}


def test_every_code_is_documented() -> None:
    assert all(f"``{code}``" in demographics.__doc__ for code in CODES)


# -- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["M", "F", "VNM", "vnm", "1985", "1985-03-04", "2023-02-29", WOMAN_1985_HAI_PHONG,
                     "Kinh"]),
    json_values,
)
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), field_values, max_size=14)


@settings(max_examples=300)
@given(st.one_of(json_values, records, st.builds(lambda changes: applicant(**changes),
                                                  st.dictionaries(st.sampled_from(FIELDS), field_values))))
def test_validate_only_ever_raises_demographics_error(record: object) -> None:
    try:
        out = validate(record, today=TODAY)
    except DemographicsError as error:
        assert error.problems
        assert all(p.code in CODES and p.message for p in error.problems)
        return
    assert set(out) <= set(FIELDS) and all(isinstance(v, str) for v in out.values())
    assert all(unicodedata.is_normalized("NFC", v) and "  " not in v for v in out.values())
    assert validate(out, today=TODAY) == out  # normalising is idempotent


@given(
    province=st.sampled_from(sorted(PROVINCES)),
    sex=st.sampled_from(["M", "F"]),
    born=st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
    year_only=st.booleans(),
    serial=st.integers(0, 999_999),
)
def test_make_id_number_validates_for_its_sex_and_year(
    province: str, sex: str, born: date, year_only: bool, serial: int
) -> None:
    number = make_id_number(province, sex, born.year, serial)
    day = str(born.year) if year_only else born.isoformat()
    out = validate(applicant(sex=sex, date_of_birth=day, id_number=number), today=TODAY)
    assert out["id_number"] == number and province_name(number[:3]) == PROVINCES[province]
    other = "F" if sex == "M" else "M"
    assert found(applicant(sex=other, date_of_birth=day, id_number=number)) == [
        ("id_number", "century_sex_mismatch")]
