"""The machine readable zone of a TD1 (ID-1 card) document, ICAO Doc 9303 Parts 3 and 5.

Pure text in, text out: the printed card and the chip's DG1 must carry the same 90
characters, so both build them here and neither knows about the other. What a CCCD puts in
each field (document code ``ID``, the last 9 digits of the id number as document number, the
whole id number as optional data) is the card's business (``station/card.py``); this module
only knows the layout, the check digits, the character set and how names are written.

TD1 layout (1-based positions)::

    line 1: 1-2 document code | 3-5 issuing state | 6-14 document number | 15 check digit
            | 16-30 optional data 1
    line 2: 1-6 birth YYMMDD | 7 check | 8 sex | 9-14 expiry YYMMDD | 15 check
            | 16-18 nationality | 19-29 optional data 2 | 30 composite check
    line 3: 1-30 names: PRIMARY<<SECONDARY<NAMES

Errors are ``BadRequest`` naming the field and what it may hold.
"""
from __future__ import annotations

import re
import unicodedata
from datetime import date

from station.errors import BadRequest

LINE_LENGTH = 30
FILLER = "<"

# Letters that do not decompose into a base letter and marks (so NFD alone cannot strip them),
# written the way Doc 9303 Part 3's transliteration table writes them. Đ/đ is the one a
# Vietnamese name needs; the others cost nothing and spare a foreign-born citizen a refusal.
_LETTERS = str.maketrans({
    "Đ": "D", "đ": "D", "Ð": "D", "ð": "D", "Ħ": "H", "ħ": "H", "Ł": "L", "ł": "L",
    "Ø": "OE", "ø": "OE", "Æ": "AE", "æ": "AE", "Œ": "OE", "œ": "OE", "ß": "SS",
    "Þ": "TH", "þ": "TH", "ı": "I", "Ĳ": "IJ", "ĳ": "IJ",
})
# Between name components a filler; apostrophes and other marks are simply left out
# ("H'HEN" is written HHEN), as Doc 9303 Part 3 asks of punctuation in names.
_SEPARATORS = re.compile(r"[\s\-‐‑,.]+")
_DROPPED = re.compile(r"['’ʼ`]")
_FIELD = re.compile(r"[0-9A-Z<]*")
_DATE = re.compile(r"[0-9]{2}([0-9]{2}|<<)([0-9]{2}|<<)|<{6}")


def check_digit(field: str) -> str:
    """The 7-3-1 check digit of ``field`` (digits as themselves, A=10 ... Z=35, ``<`` = 0)."""
    total = 0
    for index, char in enumerate(field):
        if char.isdigit() and char.isascii():
            value = int(char)
        elif "A" <= char <= "Z":
            value = ord(char) - ord("A") + 10
        elif char == FILLER:
            value = 0
        else:
            raise BadRequest(f"MRZ check digit: {char!r} in {field!r} is not an MRZ character; "
                             f"allowed: 0-9, A-Z, '<'")
        total += value * (7, 3, 1)[index % 3]
    return str(total % 10)


def transliterate(text: str) -> str:
    """A name component in MRZ characters: diacritics removed, Đ as D, upper case, spaces and
    hyphens as ``<``: ``"Nguyễn Văn An"`` is ``NGUYEN<VAN<AN``.

    Letters no table here can write (another script) are refused rather than dropped: a name
    that loses letters silently is a different name.
    """
    decomposed = unicodedata.normalize("NFD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_LETTERS)
    words = _SEPARATORS.sub(FILLER, _DROPPED.sub("", bare).upper()).strip(FILLER)
    unknown = sorted({c for c in words if not ("A" <= c <= "Z" or c == FILLER)})
    if unknown:
        raise BadRequest(f"MRZ name: {text!r} has characters with no MRZ transliteration "
                         f"({', '.join(map(repr, unknown))}); allowed: Latin letters with or "
                         f"without diacritics, spaces, hyphens and apostrophes")
    return words


def vietnamese_names(full_name: str) -> tuple[str, str]:
    """(primary, secondary) identifiers of a Vietnamese name, which is written family name
    first: the first word is the family name, the rest (middle and given names) follows."""
    family, _, rest = full_name.strip().partition(" ")
    return family, rest.strip()


def name_field(primary: str, secondary: str = "", width: int = LINE_LENGTH) -> str:
    """``PRIMARY<<SECONDARY`` in MRZ characters, padded or truncated to ``width``.

    Truncation (Doc 9303 Part 3): characters go from the end of the secondary identifier
    first, and the primary identifier is cut only when it alone fills the field. A truncated
    field ends with a letter, which is how a reader knows the name may have been cut: when
    the cut falls on a filler, the initial of the next name component takes that position.
    """
    whole = transliterate(primary)
    given = transliterate(secondary)
    if not whole:
        raise BadRequest(f"MRZ name: the primary identifier {primary!r} has no letters")
    if given:
        whole += FILLER * 2 + given
    if len(whole) <= width:
        return whole.ljust(width, FILLER)
    field = whole[:width]
    if field.endswith(FILLER):
        letter = next(c for c in whole[width:] if c != FILLER)
        field = field[:-1] + letter
    return field


def yymmdd(value: date | str | None) -> str:
    """A date as the MRZ writes it: ``date`` or ISO ``YYYY-MM-DD`` as YYMMDD; a year alone
    (``YYYY``) as YY<<<< (Doc 9303 Part 3: an unknown month or day is written in fillers);
    None, a date that does not exist on the document (an expiry of "no expiry"), as <<<<<<."""
    if value is None:
        return FILLER * 6
    if isinstance(value, date):
        return value.strftime("%y%m%d")
    if re.fullmatch(r"[0-9]{4}", value):
        return value[2:] + FILLER * 4
    try:
        return date.fromisoformat(value).strftime("%y%m%d")
    except ValueError:
        raise BadRequest(f"MRZ date: {value!r} is not a date; allowed: YYYY-MM-DD or YYYY") from None


def td1(
    document_code: str,
    issuing_state: str,
    document_number: str,
    optional1: str,
    birth: str,
    sex: str,
    expiry: str,
    nationality: str,
    optional2: str,
    names: tuple[str, str],
) -> tuple[str, str, str]:
    """The three 30-character lines of a TD1 MRZ.

    Codes, numbers and dates are given in MRZ characters already (``birth`` and ``expiry`` as
    from ``yymmdd``); ``names`` is (primary, secondary) in ordinary text, transliterated and
    truncated by ``name_field``. A value that does not fit its field is refused: Doc 9303's
    long document number convention is not implemented, as no CCCD needs it.
    """
    code = _field("document code", document_code, 2, minimum=1)
    state = _field("issuing state", issuing_state, 3, minimum=3)
    number = _field("document number", document_number, 9, minimum=1)
    option1 = _field("optional data 1", optional1, 15)
    option2 = _field("optional data 2", optional2, 11)
    nation = _field("nationality", nationality, 3, minimum=3)
    for label, value in (("birth date", birth), ("expiry date", expiry)):
        if not _DATE.fullmatch(value):
            raise BadRequest(f"MRZ {label}: {value!r} is not YYMMDD; allowed: 6 digits, YY<<<< "
                             f"for a year alone, or <<<<<< for none")
    if sex not in ("M", "F", "X", FILLER):
        raise BadRequest(f"MRZ sex: {sex!r} is not allowed; allowed: 'M', 'F', 'X', '<'")
    line1 = code + state + number + check_digit(number) + option1
    body = birth + check_digit(birth) + sex + expiry + check_digit(expiry) + nation + option2
    composite = check_digit(line1[5:30] + body[0:7] + body[8:15] + body[18:29])
    return line1, body + composite, name_field(*names)


def _field(label: str, value: str, width: int, *, minimum: int = 0) -> str:
    if not minimum <= len(value) <= width or not _FIELD.fullmatch(value):
        raise BadRequest(f"MRZ {label}: {value!r} does not fit; allowed: {minimum}..{width} "
                         f"characters of 0-9, A-Z and '<'")
    return value.ljust(width, FILLER)
