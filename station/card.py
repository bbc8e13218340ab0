"""What one CCCD card says: its data, its expiry, its QR text and its MRZ; not how it looks.

The artwork (``station/cardface.py``) and the chip read the same ``CardData``, so the face,
the QR code and the MRZ cannot disagree about a date or a name. A card travels to the print
queue as ``to_bytes()``: a JSON header naming every field and payload, then the images.

Expiry (Law on Citizen Identification 2014, art. 21, kept by the Law on Identity 2023,
art. 21, with the card face of Circular 06/2021/TT-BCA): a card is renewed at 25, 40 and 60;
a card issued within the 2 years before one of those ages stays valid until the next one, so
a card issued at 58 or later never expires. The 2023 law adds a renewal at 14 for cards
issued to children; this station enrols the CCCD of the 2014 law, issued from 14, so 14 is
not one of the ages here.
"""
from __future__ import annotations

import json
import struct
import unicodedata
from dataclasses import dataclass, fields
from datetime import date
from typing import Any, Mapping

import cv2
import numpy as np
import pycountry

from station import demographics, mrz
from station.errors import BadRequest, StationError

RENEWAL_AGES = (25, 40, 60)
GRACE_YEARS = 2  # issued this close before a renewal age, the card skips to the next one

SEX_PRINTED = {"M": "Nam", "F": "Nữ"}
NO_EXPIRY_PRINTED = "Không thời hạn"
NATIONALITY_PRINTED = {"VNM": "Việt Nam"}

# Serialisation: magic, a 4-byte big-endian header length, the JSON header, the payloads in
# the order (and with the lengths) the header names them.
MAGIC = b"CCCD-CARD/1\n"
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_IMAGES = ("portrait_jpeg", "left_index_png", "right_index_png", "chip_portrait")


@dataclass(frozen=True)
class CardData:
    """One card. Text is NFC; dates are ``date`` except ``date_of_birth``, which keeps the
    applicant's form (``YYYY-MM-DD``, or ``YYYY`` when the papers give only the year).

    The fingerprints are PNG bytes of 8-bit grey images (what the sensor gave, any size): bytes
    keep the card immutable, comparable and serialisable as it is; ``fingerprint()`` decodes.
    """

    id_number: str
    full_name: str
    date_of_birth: str
    sex: str
    nationality: str
    place_of_origin: str
    place_of_residence: str
    ethnicity: str
    religion: str
    issue_date: date
    expiry_date: date | None  # None: the card does not expire
    authority: str  # the issuing officer's title as printed on the back
    portrait_jpeg: bytes
    left_index_png: bytes
    right_index_png: bytes
    old_id_number: str | None = None
    identifying_marks: str | None = None
    chip_portrait: bytes = b""  # the chip's token portrait (JPEG 2000, <= 20 KB, for DG2); none: no chip

    def fingerprint(self, which: str) -> np.ndarray:
        """The ``"left"`` or ``"right"`` index fingerprint as an 8-bit grey array."""
        data = {"left": self.left_index_png, "right": self.right_index_png}[which]
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise StationError(f"card {self.id_number}: the {which} index fingerprint PNG does not decode",
                               code="bad_record")
        return image

    def to_bytes(self) -> bytes:
        """The card for the print queue: MAGIC, header length, JSON header, images."""
        text = {}
        for item in fields(self):
            if item.name in _IMAGES:
                continue
            value = getattr(self, item.name)
            text[item.name] = value.isoformat() if isinstance(value, date) else value
        payloads = [{"name": name, "length": len(getattr(self, name))} for name in _IMAGES]
        header = json.dumps({"fields": text, "payloads": payloads}, ensure_ascii=False).encode()
        return b"".join([MAGIC, struct.pack(">I", len(header)), header,
                         *(getattr(self, name) for name in _IMAGES)])

    @classmethod
    def from_bytes(cls, blob: bytes) -> "CardData":
        """The card ``to_bytes`` wrote; a damaged or foreign blob is a ``bad_record`` error."""
        def bad(why: str) -> StationError:
            return StationError(f"card blob: {why}", code="bad_record")

        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
            raise bad(f"does not start with {MAGIC!r}")
        start = len(MAGIC) + 4
        (size,) = struct.unpack(">I", blob[len(MAGIC):start])
        try:
            header = json.loads(blob[start:start + size])
            values: dict[str, Any] = dict(header["fields"])
            payloads = [(str(p["name"]), int(p["length"])) for p in header["payloads"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise bad(f"header is not the JSON this module writes ({exc})") from None
        offset = start + size
        for name, length in payloads:
            if name not in _IMAGES or length < 0:
                raise bad(f"unknown payload {name!r}; known: {', '.join(_IMAGES)}")
            values[name] = blob[offset:offset + length]
            offset += length
        if offset != len(blob):
            raise bad(f"{len(blob)} bytes, the header accounts for {offset}")
        for name in ("issue_date", "expiry_date"):
            if isinstance(values.get(name), str):
                try:
                    values[name] = date.fromisoformat(values[name])
                except ValueError:
                    raise bad(f"{name} {values[name]!r} is not an ISO date") from None
        known = {item.name for item in fields(cls)}
        if set(values) - known or set(_IMAGES) - set(values):
            raise bad(f"fields {sorted(set(values) ^ known)} do not match a card's")
        try:
            return cls(**values)
        except TypeError as exc:
            raise bad(str(exc)) from None


def card_data(
    applicant: Mapping[str, str],
    portrait_jpeg: bytes,
    left_index: np.ndarray | bytes,
    right_index: np.ndarray | bytes,
    issue_date: date,
    authority: str,
    chip_portrait: bytes = b"",
) -> CardData:
    """A card for a validated applicant, issued on ``issue_date``.

    The applicant is validated again (``demographics.validate``, dated on the issue date), so
    the card holds the normalised text whoever called. Fingerprints are 8-bit grey arrays or
    PNG bytes; the expiry follows the rule in this module's docstring (``expiry_date``).
    """
    person = demographics.validate(applicant, today=issue_date)
    if not portrait_jpeg.startswith(_JPEG):
        raise BadRequest("card: the portrait is not a JPEG (it must start with FF D8 FF)")
    left, right = _png("left index", left_index), _png("right index", right_index)
    return CardData(
        id_number=person["id_number"],
        full_name=person["full_name"],
        date_of_birth=person["date_of_birth"],
        sex=person["sex"],
        nationality=person["nationality"],
        place_of_origin=person["place_of_origin"],
        place_of_residence=person["place_of_residence"],
        ethnicity=person["ethnicity"],
        religion=person["religion"],
        issue_date=issue_date,
        expiry_date=expiry_date(person["date_of_birth"], issue_date),
        authority=unicodedata.normalize("NFC", authority).strip(),
        portrait_jpeg=bytes(portrait_jpeg),
        left_index_png=left,
        right_index_png=right,
        old_id_number=person.get("old_id_number"),
        identifying_marks=person.get("identifying_marks"),
        chip_portrait=bytes(chip_portrait),
    )


def expiry_date(date_of_birth: str, issue_date: date) -> date | None:
    """The day the card stops being valid: the birthday of the first renewal age the holder is
    more than 2 years short of on the issue date; None (no expiry) from 58 on.

    A year-only date of birth counts as 1 January of that year, for the age and the expiry
    alike; a 29 February birthday falls on 28 February in other years.
    """
    born = _birthday(date_of_birth)
    age = issue_date.year - born.year - ((issue_date.month, issue_date.day) < (born.month, born.day))
    for renewal in RENEWAL_AGES:
        if age < renewal - GRACE_YEARS:
            return _anniversary(born, renewal)
    return None


def printed(card: CardData) -> dict[str, str]:
    """Every value as the card face prints it: dates dd/mm/yyyy (a year alone as the year),
    sex in Vietnamese, nationality by name, "Không thời hạn" for no expiry."""
    values = {item.name: getattr(card, item.name) for item in fields(card) if item.name not in _IMAGES}
    values.update(
        date_of_birth=_printed_birth(card.date_of_birth, "/"),
        sex=SEX_PRINTED[card.sex],
        nationality=_nationality(card.nationality),
        issue_date=card.issue_date.strftime("%d/%m/%Y"),
        expiry_date=card.expiry_date.strftime("%d/%m/%Y") if card.expiry_date else NO_EXPIRY_PRINTED,
        old_id_number=card.old_id_number or "",
        identifying_marks=card.identifying_marks or "",
    )
    return values


def qr_text(card: CardData) -> str:
    """The front QR code's text (Circular 06/2021/TT-BCA): id number | old id number or empty
    | full name | date of birth ddmmyyyy | sex as printed | place of residence | issue date
    ddmmyyyy. A year-only date of birth is written as printed, the year alone."""
    return "|".join([
        card.id_number,
        card.old_id_number or "",
        card.full_name,
        _printed_birth(card.date_of_birth, ""),
        SEX_PRINTED[card.sex],
        card.place_of_residence,
        card.issue_date.strftime("%d%m%Y"),
    ])


def mrz_lines(card: CardData) -> tuple[str, str, str]:
    """The card's TD1 MRZ: document code ID, state VNM, the last 9 digits of the id number as
    document number (the check digit follows), the whole 12-digit id number as optional data
    1, names family name first. No expiry is written as fillers."""
    return mrz.td1(
        document_code="ID",
        issuing_state="VNM",
        document_number=card.id_number[-9:],
        optional1=card.id_number,
        birth=mrz.yymmdd(card.date_of_birth),
        sex=card.sex,
        expiry=mrz.yymmdd(card.expiry_date),
        nationality=card.nationality,
        optional2="",
        names=mrz.vietnamese_names(card.full_name),
    )


def _birthday(date_of_birth: str) -> date:
    return date(int(date_of_birth), 1, 1) if len(date_of_birth) == 4 else date.fromisoformat(date_of_birth)


def _anniversary(born: date, years: int) -> date:
    try:
        return born.replace(year=born.year + years)
    except ValueError:  # 29 February in a common year
        return date(born.year + years, 2, 28)


def _printed_birth(date_of_birth: str, separator: str) -> str:
    if len(date_of_birth) == 4:
        return date_of_birth
    return _birthday(date_of_birth).strftime(f"%d{separator}%m{separator}%Y")


def _nationality(code: str) -> str:
    if code in NATIONALITY_PRINTED:
        return NATIONALITY_PRINTED[code]
    country = pycountry.countries.get(alpha_3=code)
    return country.name if country else code


def _png(label: str, image: np.ndarray | bytes) -> bytes:
    """8-bit grey PNG bytes of a fingerprint given as an array or as PNG already."""
    if isinstance(image, (bytes, bytearray)):
        if not bytes(image).startswith(_PNG):
            raise BadRequest(f"card: the {label} fingerprint bytes are not a PNG")
        return bytes(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 2 or min(array.shape) < 16:
        raise BadRequest(f"card: the {label} fingerprint must be an 8-bit grey image (2-D uint8, "
                         f"at least 16x16); got {array.dtype} {array.shape}")
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise BadRequest(f"card: the {label} fingerprint could not be encoded as PNG")
    return encoded.tobytes()
