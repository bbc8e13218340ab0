"""One enrollment as an ANSI/NIST-ITL 1-2011 transaction, traditional encoding: pure, bytes out.

The transaction is what central's AFIS and archive read, so every field must be true and
every record must parse in a reader that is not ours. Records, in this order:

- Type-1 transaction information (7-bit ASCII, as the standard requires of Type-1);
- Type-2, IDC 0: the demographics, UTF-8 (declared in 1.015 DCS), numbered per
  ``TYPE2_FIELDS``; the domain of those numbers is declared in 1.013 DOM;
- Type-10: the token portrait, then the exception photo when there is one (JPEG, as taken);
- Type-14: one per finger position, ascending: the WSQ image with its NFIQ 2 score, or,
  for an amputated / unprintable finger, the 14.018 AMP code and no image fields at all.

IDC: the Type-2 record is 0; the image records are numbered 1, 2, ... in record order.
The profile, field by field, and what was checked against which source, is
``docs/record-profile.md``. Every invalid input raises ``NistError`` (code ``bad_record``)
naming the field, so a bad record is refused at the station, not months later by central.
"""
from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Mapping, NamedTuple, Sequence

import wsq  # noqa: F401  (registers the WSQ header reader with Pillow)
from PIL import Image, UnidentifiedImageError

from station.errors import StationError

FS, GS, RS, US = b"\x1c", b"\x1d", b"\x1e", b"\x1f"  # record, field, subfield, item separators
VERSION = "0500"  # 1.002 VER: ANSI/NIST-ITL 1-2011
PROFILE_NAME, PROFILE_VERSION = "VNCCCD", "1.0"  # 1.013 DOM and 2.800 PRF
# Vietnam keeps UTC+07:00 all year (no daylight saving). The standard's DAT, PHD and FCD
# are local dates; 1.014 GMT carries the exact UTC time of the transaction.
LOCAL_TIME = timezone(timedelta(hours=7), "ICT")
# NFIQ 2 as a CBEFF quality algorithm (usnistgov/NFIQ2 nfiq2_cbeff.cpp): owner 0x0101
# (ISO/IEC JTC 1 SC 37), product 0x0039 = NFIQ 2.3, the version nbis-py 0.1.3 bundles.
NFIQ2_VENDOR_ID, NFIQ2_PRODUCT_CODE = "0101", 0x0039
MIN_FINGER_PPI = 500  # Type-14 images are at least 19.69 ppmm
SAP_BY_KIND = {"portrait": "14", "exception": "0"}  # ISO token face image / no profile claimed
CSP_BY_MODE = {"RGB": "SRGB", "L": "GRAY"}  # Pillow's mode of the decoded JPEG -> 10.012 CSP
AMP_CODES = ("XX", "UP")  # amputated, unable to print


class NistError(StationError):
    """The enrollment cannot be written as a valid transaction: the message names the field."""

    code = "bad_record"


class Type2Field(NamedTuple):
    number: int  # 2.NNN
    mnemonic: str


# Demographics key -> Type-2 field. EBTS numbers where EBTS has the same meaning; 2.8xx are
# this profile's user-defined fields (see docs/record-profile.md for each one's format).
TYPE2_FIELDS: Mapping[str, Type2Field] = {
    "full_name": Type2Field(18, "NAM"),
    "nationality": Type2Field(21, "CTZ"),
    "date_of_birth": Type2Field(22, "DOB"),
    "sex": Type2Field(24, "SEX"),
    "place_of_residence": Type2Field(41, "RES"),
    "id_number": Type2Field(801, "PIN"),
    "old_id_number": Type2Field(802, "OIN"),
    "place_of_origin": Type2Field(803, "POO"),
    "ethnicity": Type2Field(804, "ETH"),
    "religion": Type2Field(805, "REL"),
    "identifying_marks": Type2Field(806, "IDM"),
}
PROFILE_FIELD = Type2Field(800, "PRF")
REQUIRED_DEMOGRAPHICS = ("full_name", "date_of_birth", "sex", "nationality", "id_number")
_CODED = {  # formats the profile fixes; free text fields are only checked as text
    "sex": re.compile(r"[MF]"),
    "nationality": re.compile(r"[A-Z]{3}"),
    "id_number": re.compile(r"[0-9]{12}"),
    "old_id_number": re.compile(r"[0-9]{9}"),
}
_RECORD_ID = re.compile(r"[0-9a-f]{32}")
_TOT = re.compile(r"[A-Za-z]{1,16}")  # 1.004 TOT is alphabetic, 1 to 16 characters
_ASCII_TEXT = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class FaceImage:
    jpeg: bytes            # JFIF token portrait (or exception photo)
    width: int
    height: int
    captured: datetime     # UTC, timezone-aware
    kind: str = "portrait"  # "portrait" | "exception"


@dataclass(frozen=True)
class FingerImpression:
    position: int          # ANSI/NIST finger position 1..10
    captured: datetime
    wsq: bytes | None = None     # None only for an exception
    width: int = 0
    height: int = 0
    ppi: int = 500
    nfiq2: int | None = None     # 0..100
    exception: str | None = None  # "XX" amputated, "UP" unable to print (field 14.018 AMP)


@dataclass(frozen=True)
class Transaction:
    record_id: str         # 32 lowercase hex chars; transaction control number 1.009 TCN
    station_id: str        # originating station, 1.008 ORI (e.g. "VN-HP-0001")
    destination: str       # 1.007 DAI (e.g. "VN-C06-CENTRAL")
    created: datetime      # UTC
    demographics: Mapping[str, str]
    faces: Sequence[FaceImage]
    fingers: Sequence[FingerImpression]
    transaction_type: str = "CCCDENROL"  # 1.004 TOT


# A field value: one text item, binary image data, or subfields of information items.
Value = str | bytes | Sequence[Sequence[str]]
Fields = list[tuple[int, Value]]


def encode(tx: Transaction) -> bytes:
    """The transaction's bytes. Deterministic: equal input gives equal bytes, so a record's
    hash identifies its content."""
    faces = _ordered_faces(tx.faces)
    fingers = _ordered_fingers(tx.fingers)
    source = _ascii(tx.station_id, "station_id (1.008 ORI)")
    records: list[tuple[int, Fields]] = [(2, _type2_fields(tx.demographics))]
    records += [(10, _type10_fields(face, source)) for face in faces]
    records += [(14, _type14_fields(finger, source)) for finger in fingers]
    content = [(kind, idc) for idc, (kind, _) in enumerate(records)]  # IDC: Type-2 0, images 1, 2, ...
    type1 = _record(1, _type1_fields(tx, content, fingers))
    return type1 + b"".join(_record(kind, [(2, str(idc))] + fields) for idc, (kind, fields) in enumerate(records))


def _type1_fields(tx: Transaction, content: list[tuple[int, int]], fingers: list[FingerImpression]) -> Fields:
    if not _RECORD_ID.fullmatch(str(tx.record_id)):
        raise NistError(f"record_id (1.009 TCN) must be 32 lowercase hex characters, not {tx.record_id!r}")
    if not _TOT.fullmatch(str(tx.transaction_type)):
        raise NistError(f"transaction_type (1.004 TOT) must be 1 to 16 letters (ANSI/NIST character "
                        f"type A), not {tx.transaction_type!r}")
    created = _moment(tx.created, "created")
    ppi = min((f.ppi for f in fingers if f.wsq is not None), default=None)
    resolution = "00.00" if ppi is None else f"{ppi / 25.4:05.2f}"  # ppmm, two decimals
    return [
        (2, VERSION),
        (3, [("1", str(len(content)))] + [(str(kind), str(idc)) for kind, idc in content]),
        (4, tx.transaction_type),
        (5, _local_date(created)),
        (7, _ascii(tx.destination, "destination (1.007 DAI)")),
        (8, _ascii(tx.station_id, "station_id (1.008 ORI)")),
        (9, tx.record_id),
        (11, resolution),  # NSR
        (12, resolution),  # NTR
        (13, [(PROFILE_NAME, PROFILE_VERSION)]),  # DOM: the domain of the Type-2 field numbers
        (14, created.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")),  # GMT
        (15, [("3", "UTF-8")]),  # DCS: character encoding index 3
    ]


def _type2_fields(demographics: Mapping[str, str]) -> Fields:
    unknown = sorted(set(demographics) - set(TYPE2_FIELDS))
    if unknown:
        raise NistError(f"demographics has no Type-2 field for {unknown}: the profile's keys are "
                        f"{sorted(TYPE2_FIELDS)}")
    missing = [key for key in REQUIRED_DEMOGRAPHICS if key not in demographics]
    if missing:
        raise NistError(f"demographics lacks required {missing}")
    fields: Fields = [(PROFILE_FIELD.number, [(PROFILE_NAME, PROFILE_VERSION)])]
    for key, value in demographics.items():
        number, mnemonic = TYPE2_FIELDS[key]
        where = f"demographics[{key!r}] (2.{number:03d} {mnemonic})"
        text = _text(value, where)
        if key in _CODED and not _CODED[key].fullmatch(text):
            raise NistError(f"{where} must match {_CODED[key].pattern}, not {text!r}")
        fields.append((number, _date_of_birth(text, where) if key == "date_of_birth" else text))
    return sorted(fields, key=lambda field: field[0])


def _date_of_birth(text: str, where: str) -> str:
    """YYYYMMDD; a birth year alone (old papers) becomes YYYY0000, as EBTS writes unknowns."""
    try:
        if re.fullmatch(r"[0-9]{4}", text):
            return f"{text}0000"
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            return date.fromisoformat(text).strftime("%Y%m%d")
    except ValueError:
        pass
    raise NistError(f"{where} must be a date YYYY-MM-DD or a year YYYY, not {text!r}")


def _type10_fields(face: FaceImage, source: str) -> Fields:
    where = f"{face.kind} photo"
    mode = _check_image(face.jpeg, "JPEG", face.width, face.height, where)
    if mode not in CSP_BY_MODE:
        raise NistError(f"{where}: a {mode} JPEG has no ANSI/NIST colour space here; encode it as "
                        "colour (sRGB) or greyscale")
    return [
        (3, "FACE"),  # IMT
        (4, source),  # SRC
        (5, _local_date(_moment(face.captured, f"{where} captured"))),  # PHD
        (6, str(face.width)),  # HLL
        (7, str(face.height)),  # VLL
        (8, "0"),  # SLC: no scale, THPS:TVPS is the pixel aspect ratio
        (9, "1"),  # THPS
        (10, "1"),  # TVPS
        (11, "JPEGB"),  # CGA
        (12, CSP_BY_MODE[mode]),  # CSP
        (13, SAP_BY_KIND[face.kind]),  # SAP
        (999, face.jpeg),
    ]


def _type14_fields(finger: FingerImpression, source: str) -> Fields:
    position = str(finger.position)
    head: Fields = [
        (3, "0"),  # IMP: live-scan plain
        (4, source),  # SRC
        (5, _local_date(_moment(finger.captured, f"finger {position} captured"))),  # FCD
    ]
    if finger.exception is not None:
        # No image: 14.006-14.012 and 14.999 are present only with an image (ANSI/NIST-ITL
        # 1-2011 makes Field 999 optional when the finger is declared amputated or unprintable).
        return head + [(13, position), (18, [(position, finger.exception)])]
    fields = head + [
        (6, str(finger.width)),  # HLL
        (7, str(finger.height)),  # VLL
        (8, "1"),  # SLC: pixels per inch
        (9, str(finger.ppi)),  # THPS
        (10, str(finger.ppi)),  # TVPS
        (11, "WSQ20"),  # CGA
        (12, "8"),  # BPX
        (13, position),  # FGP
    ]
    if finger.nfiq2 is not None:
        fields.append((24, [(position, str(finger.nfiq2), NFIQ2_VENDOR_ID, str(NFIQ2_PRODUCT_CODE))]))  # FQM
    return fields + [(999, finger.wsq)]


def _ordered_faces(faces: Sequence[FaceImage]) -> list[FaceImage]:
    """Portrait first, then the exception photo; at most one of each."""
    by_kind: dict[str, FaceImage] = {}
    for face in faces:
        if face.kind not in SAP_BY_KIND:
            raise NistError(f"a face image's kind must be one of {sorted(SAP_BY_KIND)}, not {face.kind!r}")
        if face.kind in by_kind:
            raise NistError(f"two {face.kind} photos: a transaction holds at most one of each kind")
        by_kind[face.kind] = face
    return [by_kind[kind] for kind in SAP_BY_KIND if kind in by_kind]


def _ordered_fingers(fingers: Sequence[FingerImpression]) -> list[FingerImpression]:
    """By position; each finger checked, one record per position."""
    seen: set[int] = set()
    for finger in fingers:
        _check_finger(finger)
        if finger.position in seen:
            raise NistError(f"finger {finger.position} appears twice: one Type-14 record per position")
        seen.add(finger.position)
    return sorted(fingers, key=lambda finger: finger.position)


def _check_finger(finger: FingerImpression) -> None:
    position = finger.position
    if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= 10:
        raise NistError(f"finger position must be an ANSI/NIST finger position 1..10, not {position!r}")
    where = f"finger {position}"
    if finger.exception is not None:
        if finger.exception not in AMP_CODES:
            raise NistError(f"{where}: exception must be one of {list(AMP_CODES)} (14.018 AMP), "
                            f"not {finger.exception!r}")
        if finger.wsq is not None or finger.nfiq2 is not None:
            raise NistError(f"{where} is declared {finger.exception} but carries an image or a score")
        return
    if finger.wsq is None:
        raise NistError(f"{where} has neither a WSQ image nor an exception code ({'/'.join(AMP_CODES)})")
    if not isinstance(finger.ppi, int) or not MIN_FINGER_PPI <= finger.ppi <= 99999:
        raise NistError(f"{where}: {finger.ppi!r} ppi; Type-14 images are {MIN_FINGER_PPI} ppi or more")
    if finger.nfiq2 is not None and (not isinstance(finger.nfiq2, int) or not 0 <= finger.nfiq2 <= 100):
        raise NistError(f"{where}: NFIQ 2 score must be 0..100, not {finger.nfiq2!r}")
    _check_image(finger.wsq, "WSQ", finger.width, finger.height, where)


def _check_image(data: bytes, kind: str, width: int, height: int, where: str) -> str:
    """The image's Pillow mode, once its header agrees with the declared size: HLL and VLL
    are written from the declaration, so a mismatch would be a false record."""
    if not isinstance(data, bytes):
        raise NistError(f"{where}: the {kind} image must be bytes, not {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            size, mode = image.size, image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, IndexError) as exc:
        raise NistError(f"{where}: not a {kind} image ({len(data)} bytes): {exc}") from exc
    if size != (width, height):
        raise NistError(f"{where}: declared {width} x {height} but the {kind} image is {size[0]} x {size[1]}")
    return mode


def _text(value: object, where: str) -> str:
    """A text value as the profile allows it: NFC, one line, no ANSI/NIST separator."""
    if not isinstance(value, str) or not value:
        raise NistError(f"{where} must be a non-empty string, not {value!r}")
    bad = next((char for char in value if unicodedata.category(char) in ("Cc", "Cs")), None)
    if bad is not None:
        name = {"\x1c": "FS", "\x1d": "GS", "\x1e": "RS", "\x1f": "US"}.get(bad, f"U+{ord(bad):04X}")
        raise NistError(f"{where} contains {name}, a control character or lone surrogate, which the "
                        "ANSI/NIST encoding reserves or UTF-8 cannot carry")
    if not unicodedata.is_normalized("NFC", value):
        raise NistError(f"{where} is not NFC-normalised Unicode; normalise it (unicodedata.normalize('NFC', ...))")
    return value


def _ascii(value: object, where: str) -> str:
    """Type-1 text: printable 7-bit ASCII only, as the standard requires in every encoding."""
    if not isinstance(value, str) or not _ASCII_TEXT.fullmatch(value):
        raise NistError(f"{where} must be printable 7-bit ASCII (Type-1 is ASCII only), not {value!r}")
    return value


def _moment(value: object, where: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise NistError(f"{where} must be a timezone-aware datetime, not {value!r}")
    return value


def _local_date(moment: datetime) -> str:
    return moment.astimezone(LOCAL_TIME).strftime("%Y%m%d")


def _record(record_type: int, fields: Fields) -> bytes:
    """One tagged record. x.001 LEN counts every byte of the record, its own digits and the
    closing FS included, so the length is the fixed point of base + digits(length)."""
    body = b"".join(GS + _field(record_type, number, value) for number, value in fields) + FS
    head = f"{record_type}.001:".encode("ascii")
    base, digits = len(head) + len(body), 1
    while len(str(base + digits)) != digits:
        digits += 1
    return head + str(base + digits).encode("ascii") + body


def _field(record_type: int, number: int, value: Value) -> bytes:
    tag = f"{record_type}.{number:03d}:".encode("ascii")
    if isinstance(value, bytes):
        return tag + value
    if isinstance(value, str):
        return tag + value.encode("utf-8")
    return tag + RS.join(US.join(item.encode("utf-8") for item in subfield) for subfield in value)
