"""An applicant's demographics, normalised and checked before anything is printed or signed.

What goes on a CCCD is read back by people and machines for decades, so text is stored the
one way Vietnamese is meant to be stored (NFC: typed input often arrives decomposed from
macOS or an IME) and every field is refused at the station, while the applicant is still
there, rather than by the issuing back office later. Every problem is reported at once,
each with a stable ``code`` a UI translates and an English message that says what is wrong
and what is allowed.

Types, required and unknown keys, lengths and patterns are the schema's
(``schemas/applicant.schema.yaml``); this module owns what a schema cannot say: the calendar,
the ISO 3166 list, the province table and the id number against sex and birth year.

Problem codes (``Problem.code``):

- whole applicant (field ``""``): ``not_a_mapping``, ``too_many_fields``
- schema: ``unknown_field``, ``required``, ``wrong_type``, ``empty``, ``too_long``,
  ``pattern`` (characters or shape not allowed), ``not_allowed`` (not one of the choices)
- date_of_birth: ``not_a_date``, ``before_1900``, ``future_date``
- nationality: ``country_unknown``
- id_number: ``province_unknown``, ``century_sex_mismatch``, ``birth_year_mismatch``
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date
from importlib import resources
from types import MappingProxyType
from typing import Any

import jsonschema
import pycountry
import yaml

from station.config import TYPE_WORDS, kind_of, suggest
from station.errors import StationError

CODES = frozenset({
    "not_a_mapping", "too_many_fields", "unknown_field", "required", "wrong_type", "empty",
    "too_long", "pattern", "not_allowed", "not_a_date", "before_1900", "future_date",
    "country_unknown", "province_unknown", "century_sex_mismatch", "birth_year_mismatch",
})

# Province-level codes of birth registration, the first 3 digits of an id number (Circular
# 07/2016/TT-BCA, following the administrative unit codes of Decision 124/2004/QD-TTg).
# The codes are historic: a number keeps its province even after provinces merge.
PROVINCES: Mapping[str, str] = MappingProxyType({
    "001": "Hà Nội", "002": "Hà Giang", "004": "Cao Bằng", "006": "Bắc Kạn",
    "008": "Tuyên Quang", "010": "Lào Cai", "011": "Điện Biên", "012": "Lai Châu",
    "014": "Sơn La", "015": "Yên Bái", "017": "Hòa Bình", "019": "Thái Nguyên",
    "020": "Lạng Sơn", "022": "Quảng Ninh", "024": "Bắc Giang", "025": "Phú Thọ",
    "026": "Vĩnh Phúc", "027": "Bắc Ninh", "030": "Hải Dương", "031": "Hải Phòng",
    "033": "Hưng Yên", "034": "Thái Bình", "035": "Hà Nam", "036": "Nam Định",
    "037": "Ninh Bình", "038": "Thanh Hóa", "040": "Nghệ An", "042": "Hà Tĩnh",
    "044": "Quảng Bình", "045": "Quảng Trị", "046": "Thừa Thiên Huế", "048": "Đà Nẵng",
    "049": "Quảng Nam", "051": "Quảng Ngãi", "052": "Bình Định", "054": "Phú Yên",
    "056": "Khánh Hòa", "058": "Ninh Thuận", "060": "Bình Thuận", "062": "Kon Tum",
    "064": "Gia Lai", "066": "Đắk Lắk", "067": "Đắk Nông", "068": "Lâm Đồng",
    "070": "Bình Phước", "072": "Tây Ninh", "074": "Bình Dương", "075": "Đồng Nai",
    "077": "Bà Rịa - Vũng Tàu", "079": "TP. Hồ Chí Minh", "080": "Long An",
    "082": "Tiền Giang", "083": "Bến Tre", "084": "Trà Vinh", "086": "Vĩnh Long",
    "087": "Đồng Tháp", "089": "An Giang", "091": "Kiên Giang", "092": "Cần Thơ",
    "093": "Hậu Giang", "094": "Sóc Trăng", "095": "Bạc Liêu", "096": "Cà Mau",
})

FIRST_YEAR = 1900  # the century-and-sex digit starts at the 1900s
LAST_YEAR = 2399   # ... and its ten values end with the 2300s

# Before any real work: input beyond these is refused without being read further, so a
# 5 MB value or a million keys costs what a normal applicant costs. MAX_CHARS is well above
# any maxLength even for decomposed (NFD) text, which may take three code points a letter.
MAX_FIELDS = 32
MAX_CHARS = 1000

# Layout, not content: what forms, pastes and IMEs put between words (ASCII whitespace and
# the Unicode space separators). Other control characters stay and the schema refuses them.
_SPACES = re.compile(r"[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")

_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("person-name")
def _is_person_name(text: object) -> bool:
    """Letters of any script (with their combining marks), spaces, apostrophes, hyphens.

    Python's re, which jsonschema runs for ``pattern``, has no ``\\p{L}``: ``[^\\W\\d_]``
    would let "²" and "½" through and refuse the vowel signs Thai or Devanagari need.
    """
    if not isinstance(text, str):
        return True  # the type is the schema's to refuse
    previous = ""
    for char in text:
        kind = unicodedata.category(char)[0]
        if not (kind == "L" or (kind == "M" and previous in ("L", "M")) or (char in " '-" and previous)):
            return False
        previous = kind if kind in "LM" else " "
    return True


def _load_schema() -> dict[str, Any]:
    entry = resources.files("station") / "schemas" / "applicant.schema.yaml"
    schema = yaml.safe_load(entry.read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


SCHEMA = _load_schema()
FIELDS: tuple[str, ...] = tuple(SCHEMA["properties"])
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=_FORMATS)


@dataclass(frozen=True)
class Problem:
    """One finding: the canonical key (``""`` for the whole applicant), a code, a message."""

    field: str
    code: str
    message: str


class DemographicsError(StationError):
    """The applicant's demographics are invalid; ``problems`` lists every finding."""

    code = "invalid_demographics"
    retryable = False

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(p.message for p in self.problems) or "invalid demographics")
        self.details = {"problems": [asdict(p) for p in self.problems]}

    def as_reply(self) -> dict:
        """The bus reply carries each problem, so a UI can mark the field and translate the code."""
        return {**super().as_reply(), "details": self.details}


def validate(applicant: object, *, today: date | None = None) -> dict[str, str]:
    """The normalised applicant (canonical keys in schema order), or DemographicsError listing
    every problem. ``today`` is the station's date; tests pass it to stay true next year."""
    if not isinstance(applicant, Mapping):
        message = f"applicant: expected a mapping of field: value, got {kind_of(applicant)}"
        raise DemographicsError([Problem("", "not_a_mapping", message)])
    if len(applicant) > MAX_FIELDS:
        message = f"applicant: {len(applicant)} fields; at most {len(FIELDS)} are known, refused unread"
        raise DemographicsError([Problem("", "too_many_fields", message)])
    raw = {_bounded_key(key): value for key, value in applicant.items()}
    seen = {key: _for_schema(key, value) for key, value in raw.items()}
    problems: dict[str, Problem] = {}
    for error in _VALIDATOR.iter_errors(seen):
        for problem in _schema_problems(error, raw):
            problems.setdefault(problem.field, problem)  # the first blocks the field; fix it first
    found = list(problems.values())
    good = {key: value for key, value in seen.items() if key not in problems}
    found += _domain_problems(good, today or date.today())
    if found:
        order = {field: index for index, field in enumerate(("",) + FIELDS)}
        raise DemographicsError(sorted(found, key=lambda p: order.get(p.field, len(order))))
    return {key: good[key] for key in FIELDS if key in good}


def province_name(code: str) -> str | None:
    """The province a birth-registration code stands for, or None if it is not one."""
    return PROVINCES.get(code)


def make_id_number(province: str, sex: str, birth_year: int, serial: int) -> str:
    """A structurally valid id number, for demos and tests; the state, not us, assigns real ones."""
    problems = []
    if province not in PROVINCES:
        problems.append(Problem("id_number", "province_unknown",
                                f"province {province!r} is not a province code"))
    if sex not in ("M", "F"):
        problems.append(Problem("sex", "not_allowed", f"sex {sex!r} is not allowed; allowed: 'M', 'F'"))
    if not FIRST_YEAR <= birth_year <= LAST_YEAR:
        code = "before_1900" if birth_year < FIRST_YEAR else "future_date"
        problems.append(Problem("date_of_birth", code, f"birth year {birth_year} has no century digit; "
                                                       f"allowed {FIRST_YEAR}..{LAST_YEAR}"))
    if not 0 <= serial <= 999_999:
        problems.append(Problem("id_number", "pattern",
                                f"serial {serial} is out of range; allowed 0..999999"))
    if problems:
        raise DemographicsError(problems)
    return f"{province}{_century_sex_digit(sex, birth_year)}{birth_year % 100:02d}{serial:06d}"


def birth_year(applicant: Mapping[str, str]) -> int:
    """The birth year of a validated applicant: all a year-only date of birth holds, and what
    the id number encodes."""
    return int(applicant["date_of_birth"][:4])


def _bounded_key(key: object) -> str:
    """Keys as text a message can show; a megabyte key is cut, it is refused as unknown anyway."""
    text = key if isinstance(key, str) else f"<{type(key).__name__} key>"
    return text if len(text) <= 64 else text[:63] + "…"


def _for_schema(key: str, value: object) -> object:
    """What the schema sees of one value.

    Strings are normalised (NFC, spaces collapsed, nationality upper-cased). A string too long
    to be worth normalising is passed cut but still over every maxLength, so it fails as
    ``too_long`` cheaply. Anything else is passed as an empty value of its JSON type: the
    schema refuses it by type alone, and jsonschema's messages ``repr`` the value, which for a
    huge list or a 5000-digit integer is slow or raises.
    """
    if isinstance(value, str):
        if len(value) > MAX_CHARS:
            return value[: MAX_CHARS + 1]
        text = _SPACES.sub(" ", unicodedata.normalize("NFC", value)).strip()
        return text.upper() if key == "nationality" else text
    for kind, empty in ((bool, False), (int, 0), (float, 0.0), (list, []), (Mapping, {})):
        if isinstance(value, kind):
            return empty
    return None if value is None else object()


def _schema_problems(error: jsonschema.ValidationError, raw: Mapping[str, object]) -> list[Problem]:
    """A jsonschema finding in the applicant's words: which field, a code, what is allowed."""
    schema, kind = error.schema, error.validator
    if kind == "additionalProperties":
        allowed = list(schema["properties"])
        return [Problem(key, "unknown_field",
                        f"unknown key {key!r}{suggest(key, allowed)}; allowed: {', '.join(allowed)}")
                for key in error.instance if key not in allowed]
    if kind == "required":
        return [Problem(key, "required", f"{key}: missing; it is required")
                for key in error.validator_value if key not in error.instance]
    field = str(error.path[0]) if error.path else ""
    value = error.instance
    expected = f" ({schema['description']})" if "description" in schema else ""
    if kind == "type":
        return [Problem(field, "wrong_type",
                        f"{field}: expected {TYPE_WORDS[error.validator_value]}, got {kind_of(raw[field])}")]
    if kind == "minLength":
        bounds = f"{schema['minLength']}..{schema['maxLength']}"
        return [Problem(field, "empty", f"{field}: empty; allowed {bounds} characters{expected}")]
    if kind == "maxLength":
        return [Problem(field, "too_long", f"{field}: {len(str(raw[field]))} characters; "
                                           f"allowed at most {schema['maxLength']}{expected}")]
    if kind == "enum":
        choices = ", ".join(map(repr, schema["enum"]))
        return [Problem(field, "not_allowed", f"{field}: {_quote(value)} is not allowed; allowed: {choices}")]
    if kind in ("pattern", "format"):
        return [Problem(field, "pattern",
                        f"{field}: {_quote(value)} is not allowed; allowed: {schema['description']}")]
    return [Problem(field, "not_allowed", f"{field or 'applicant'}: {error.message}")]


def _domain_problems(good: Mapping[str, Any], today: date) -> list[Problem]:
    """What the schema cannot say, for the fields it accepted (so every value is a string); a
    cross-field rule runs only when every field it compares is valid: one mistake, one report."""
    problems: list[Problem] = []
    year = None
    if "date_of_birth" in good:
        found = _date_problem(good["date_of_birth"], today)
        problems += [found] if found else []
        year = None if found else int(good["date_of_birth"][:4])
    if "nationality" in good and pycountry.countries.get(alpha_3=good["nationality"]) is None:
        problems.append(Problem("nationality", "country_unknown",
                                f"nationality: {good['nationality']!r} is not an ISO 3166-1 alpha-3 "
                                f"country code; Viet Nam is 'VNM'"))
    if "id_number" in good:
        problems += _id_number_problems(good["id_number"], good.get("sex"), year)
    return problems


def _date_problem(text: str, today: date) -> Problem | None:
    """A real calendar date, or a year alone, from 1900 (the id number's first century) to today."""
    year = int(text[:4])
    try:
        born = date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        why = f" ({year} is not a leap year)" if text[5:] == "02-29" else ""
        return Problem("date_of_birth", "not_a_date",
                       f"date_of_birth: {text!r} is not a calendar date{why}; write YYYY-MM-DD or YYYY")
    if year < FIRST_YEAR:
        return Problem("date_of_birth", "before_1900", f"date_of_birth: {text!r} is before {FIRST_YEAR}, "
                                                       f"the first year an id number can encode")
    if (born or date(year, 1, 1)) > today:
        return Problem("date_of_birth", "future_date",
                       f"date_of_birth: {text!r} is in the future (today is {today.isoformat()})")
    return None


def _id_number_problems(number: str, sex: str | None, year: int | None) -> list[Problem]:
    """The id number's structure: a province code, then century and sex, then the birth year."""
    problems = []
    if number[:3] not in PROVINCES:
        problems.append(Problem("id_number", "province_unknown",
                                f"id_number: digits 1-3 are {number[:3]}, which is no province code; "
                                f"allowed: the 63 codes 001 (Hà Nội) to 096 (Cà Mau)"))
    if sex not in ("M", "F") or year is None:
        return problems
    expected = _century_sex_digit(sex, year)
    if number[3] != str(expected):
        digit = int(number[3])
        problems.append(Problem("id_number", "century_sex_mismatch",
                                f"id_number: digit 4 is {digit} ({_digit_means(digit)}) but sex is {sex} and "
                                f"the birth year {year}: {_person(sex)} born in {year} has {expected}"))
    if number[4:6] != f"{year % 100:02d}":
        problems.append(Problem("id_number", "birth_year_mismatch",
                                f"id_number: digits 5-6 are {number[4:6]} but the birth year is {year}: "
                                f"they must be {year % 100:02d}"))
    return problems


def _century_sex_digit(sex: str, year: int) -> int:
    """0/1 for a man/woman born in the 1900s, 2/3 in the 2000s, ... 8/9 in the 2300s."""
    return 2 * ((year - FIRST_YEAR) // 100) + (sex == "F")


def _digit_means(digit: int) -> str:
    return f"{_person('F' if digit % 2 else 'M')} born in the {FIRST_YEAR + 100 * (digit // 2)}s"


def _person(sex: str) -> str:
    return "a woman" if sex == "F" else "a man"


def _quote(text: object) -> str:
    """A value short enough to read in a message."""
    shown = str(text)
    return repr(shown if len(shown) <= 40 else shown[:39] + "…")
