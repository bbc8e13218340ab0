"""The ANSI/NIST-ITL 1-2011 transaction, read back by an independent parser.

``nistitl`` (IDEMIA's reader, not ours) parses every transaction built here; it decodes
text as Latin-1, so UTF-8 values are re-decoded before comparing. Images are real: a JPEG
of scikit-image's astronaut portrait and WSQ of synthetic prints, scored by NFIQ 2.
Record lengths are also walked by hand from the x.001 fields, independently of nistitl.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import cv2
import nistitl
import numpy as np
import pytest
from skimage import data as sample_images

from drivers.fingerprint.prints import SyntheticFinger
from station import nist
from station.biometrics import assess, wsq_decode, wsq_encode
from station.errors import StationError

pytestmark = pytest.mark.timeout(120)

CREATED = datetime(2025, 3, 1, 18, 30, 5, tzinfo=timezone.utc)  # 01:30 on 2 March in Hà Nội
RECORD_ID = "5f0c3a9e7b2d4c1e8a6f9b0d2e4c6a81"
DEMOGRAPHICS = {
    "full_name": "Nguyễn Thị Hương Giang",
    "date_of_birth": "1985-03-14",
    "sex": "F",
    "nationality": "VNM",
    "id_number": "031185012345",
    "place_of_origin": "Xã Quảng Phú, Huyện Quảng Điền, Thừa Thiên Huế",
    "place_of_residence": "Số 12 Lạch Tray, Phường Lạch Tray, Quận Ngô Quyền, Hải Phòng",
    "ethnicity": "Kinh",
    "religion": "Phật giáo",
    "identifying_marks": "Nốt ruồi C:2cm trên sau cánh mũi phải",
}
EXPECTED_TYPE2 = {**DEMOGRAPHICS, "date_of_birth": "19850314"}  # as written, per key
IMAGED = (7, 2)  # left index, right index: the card's two prints (given out of order on purpose)
EXCEPTIONS = {10: "XX", 6: "UP"}  # left little amputated, left thumb bandaged


def jpeg(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def enrollment():
    """A transaction from real-looking captures, its bytes and what nistitl reads of them."""
    astronaut = cv2.cvtColor(sample_images.astronaut()[:, 64:448], cv2.COLOR_RGB2BGR)  # 384 x 512, 3:4
    portrait = nist.FaceImage(jpeg(astronaut), 384, 512, CREATED - timedelta(minutes=9))
    exception_photo = nist.FaceImage(jpeg(sample_images.camera()), 512, 512, CREATED - timedelta(minutes=2),
                                     kind="exception")  # a greyscale JPEG: CSP must say GRAY
    pixels, fingers = {}, []
    for position in IMAGED:
        pixels[position] = SyntheticFinger(4242, position).impression(1)
        fingers.append(nist.FingerImpression(position, CREATED - timedelta(minutes=5), wsq=wsq_encode(pixels[position]),
                                             width=256, height=288, ppi=500, nfiq2=assess(pixels[position]).nfiq2))
    fingers += [nist.FingerImpression(p, CREATED - timedelta(minutes=4), exception=code) for p, code in EXCEPTIONS.items()]
    tx = nist.Transaction(record_id=RECORD_ID, station_id="VN-HP-0001", destination="VN-C06-CENTRAL",
                          created=CREATED, demographics=DEMOGRAPHICS, faces=[exception_photo, portrait], fingers=fingers)
    encoded = nist.encode(tx)
    message = nistitl.Message()
    message.parse(encoded)
    return {"tx": tx, "bytes": encoded, "message": message, "pixels": pixels,
            "portrait": portrait, "exception_photo": exception_photo}


def utf8(value: str) -> str:
    """nistitl's Latin-1 reading of a UTF-8 value, undone."""
    return value.encode("latin-1").decode("utf-8")


def walk(encoded: bytes) -> list[tuple[int, int, bytes]]:
    """(record type, LEN, record bytes) of each record, by the x.001 fields alone."""
    records, offset = [], 0
    while offset < len(encoded):
        match = re.match(rb"(\d+)\.001:(\d+)\x1d", encoded[offset:])
        assert match, f"no LEN field at byte {offset}"
        length = int(match.group(2))
        records.append((int(match.group(1)), length, encoded[offset:offset + length]))
        offset += length
    assert offset == len(encoded), "the last record's LEN overruns the transaction"
    return records


def records(message, record_type: int) -> list:
    return list(message.iter(record_type))


def items(field) -> list[list[str]]:
    return [list(subfield.values) for subfield in field]


# -- structure ---------------------------------------------------------------------------

def test_records_are_in_profile_order_with_their_idcs(enrollment):
    message = enrollment["message"]
    assert [r.type for r in message] == [1, 2, 10, 10, 14, 14, 14, 14]
    assert [int(r[2].value) for r in list(message)[1:]] == list(range(7))  # Type-2 IDC 0, images 1..6
    fingers = records(message, 14)
    assert [int(r[13].value) for r in fingers] == [2, 6, 7, 10]  # ascending position


def test_every_len_is_the_records_real_length(enrollment):
    walked = walk(enrollment["bytes"])
    assert [kind for kind, _, _ in walked] == [1, 2, 10, 10, 14, 14, 14, 14]
    for (kind, length, record), parsed in zip(walked, enrollment["message"]):
        assert len(record) == length and record.endswith(nist.FS), f"Type-{kind}"
        assert int(parsed[1].value) == length  # nistitl read the same LEN
    assert sum(length for _, length, _ in walked) == len(enrollment["bytes"])


def test_len_counts_its_own_digits_across_a_digit_boundary():
    """Type-2 records from 990 to 1010 bytes long: the length field grows a digit on the way."""
    lengths = []
    for extra in range(40):
        tx = nist.Transaction(RECORD_ID, "VN-HP-0001", "VN-C06-CENTRAL", CREATED,
                              {**DEMOGRAPHICS, "identifying_marks": "Sẹo " + "x" * (670 + extra)}, [], [])
        for kind, length, record in walk(nist.encode(tx)):
            assert len(record) == length
            if kind == 2:
                lengths.append(length)
    assert min(lengths) < 1000 < max(lengths), lengths
    assert 1000 not in lengths  # 997 other bytes + "1000" would be 1001: no record is 1000 long


def test_encoding_is_deterministic(enrollment):
    assert nist.encode(enrollment["tx"]) == enrollment["bytes"]


# -- Type-1 ------------------------------------------------------------------------------

def test_type1_fields(enrollment):
    type1 = enrollment["message"][0]
    assert type1[2].value == "0500"
    assert items(type1[3]) == [["1", "7"], ["2", "0"], ["10", "1"], ["10", "2"],
                               ["14", "3"], ["14", "4"], ["14", "5"], ["14", "6"]]
    assert type1[4].value == "CCCDENROL"
    assert type1[5].value == "20250302"  # the local (UTC+7) date of 18:30 UTC on 1 March
    assert type1[7].value == "VN-C06-CENTRAL"
    assert type1[8].value == "VN-HP-0001"
    assert type1[9].value == RECORD_ID
    assert type1[11].value == type1[12].value == "19.69"  # 500 ppi in ppmm
    assert items(type1[13]) == [[nist.PROFILE_NAME, nist.PROFILE_VERSION]]
    assert type1[14].value == "20250301183005Z"
    assert items(type1[15]) == [["3", "UTF-8"]]
    assert type1[6] is None and type1[10] is None  # PRY, TCR not used
    assert enrollment["bytes"].split(nist.FS)[0].isascii()  # Type-1 is 7-bit ASCII


def test_without_finger_images_the_resolutions_are_zero():
    tx = nist.Transaction(RECORD_ID, "VN-HP-0001", "VN-C06-CENTRAL", CREATED, DEMOGRAPHICS, [],
                          [nist.FingerImpression(3, CREATED, exception="XX")])
    message = nistitl.Message()
    message.parse(nist.encode(tx))
    assert message[0][11].value == message[0][12].value == "00.00"


# -- Type-2 ------------------------------------------------------------------------------

def test_type2_values_survive_with_their_diacritics(enrollment):
    (type2,) = records(enrollment["message"], 2)
    for key, expected in EXPECTED_TYPE2.items():
        field = type2[nist.TYPE2_FIELDS[key].number]
        assert field is not None, key
        assert utf8(field.value) == expected, key
    assert utf8(type2[18].value).startswith("Nguyễn") and unicodedata.is_normalized("NFC", utf8(type2[18].value))
    assert items(type2[nist.PROFILE_FIELD.number]) == [[nist.PROFILE_NAME, nist.PROFILE_VERSION]]
    assert type2[nist.TYPE2_FIELDS["old_id_number"].number] is None  # absent key, absent field


def test_type2_field_numbers_follow_ebts_where_ebts_means_the_same():
    assert {key: tuple(field) for key, field in nist.TYPE2_FIELDS.items() if field.number < 800} == {
        "full_name": (18, "NAM"), "nationality": (21, "CTZ"), "date_of_birth": (22, "DOB"),
        "sex": (24, "SEX"), "place_of_residence": (41, "RES")}
    numbers = [field.number for field in nist.TYPE2_FIELDS.values()] + [nist.PROFILE_FIELD.number]
    assert len(set(numbers)) == len(numbers) and min(numbers) > 2


def test_a_birth_year_alone_and_the_old_id_number():
    tx = nist.Transaction(RECORD_ID, "VN-HP-0001", "VN-C06-CENTRAL", CREATED,
                          {**DEMOGRAPHICS, "date_of_birth": "1958", "old_id_number": "031456789"}, [], [])
    message = nistitl.Message()
    message.parse(nist.encode(tx))
    (type2,) = records(message, 2)
    assert type2[22].value == "19580000"
    assert type2[802].value == "031456789"


# -- Type-10 -----------------------------------------------------------------------------

def test_face_records(enrollment):
    portrait, exception_photo = records(enrollment["message"], 10)
    for record, face, sap, csp in ((portrait, enrollment["portrait"], "14", "SRGB"),
                                   (exception_photo, enrollment["exception_photo"], "0", "GRAY")):
        assert record[999].value == face.jpeg  # byte for byte
        assert record[3].value == "FACE"
        assert record[4].value == "VN-HP-0001"
        assert record[5].value == "20250302"  # PHD, local date
        assert (int(record[6].value), int(record[7].value)) == (face.width, face.height)
        assert (record[8].value, record[9].value, record[10].value) == ("0", "1", "1")
        assert record[11].value == "JPEGB"
        assert record[12].value == csp
        assert record[13].value == sap


# -- Type-14 -----------------------------------------------------------------------------

def test_finger_images_with_their_nfiq2(enrollment):
    given = {f.position: f for f in enrollment["tx"].fingers}
    imaged = [r for r in records(enrollment["message"], 14) if r[999] is not None]
    assert [int(r[13].value) for r in imaged] == sorted(IMAGED)
    for record in imaged:
        position = int(record[13].value)
        finger = given[position]
        assert record[999].value == finger.wsq  # byte for byte
        assert wsq_decode(record[999].value).shape == enrollment["pixels"][position].shape
        assert record[3].value == "0"  # live-scan plain
        assert record[5].value == "20250302"
        assert (record[6].value, record[7].value) == ("256", "288")
        assert (record[8].value, record[9].value, record[10].value) == ("1", "500", "500")
        assert (record[11].value, record[12].value) == ("WSQ20", "8")
        assert items(record[24]) == [[str(position), str(finger.nfiq2), "0101", "57"]]
        assert 0 <= finger.nfiq2 <= 100
        assert record[18] is None


def test_exception_fingers_carry_amp_and_no_image_fields(enrollment):
    exceptions = [r for r in records(enrollment["message"], 14) if r[18] is not None]
    assert {int(r[13].value): items(r[18]) for r in exceptions} == {
        position: [[str(position), code]] for position, code in EXCEPTIONS.items()}
    for record in exceptions:
        assert record[999] is None
        assert all(record[tag] is None for tag in (6, 7, 8, 9, 10, 11, 12, 24))
        assert (record[3].value, record[4].value, record[5].value) == ("0", "VN-HP-0001", "20250302")


# -- refusals ----------------------------------------------------------------------------

def _finger(enrollment, **changes):
    imaged = next(f for f in enrollment["tx"].fingers if f.wsq is not None)
    return replace(imaged, **changes)


def _with_demographics(**changes):
    values = {**DEMOGRAPHICS, **changes}
    return lambda e: replace(e["tx"], demographics={k: v for k, v in values.items() if v is not None})


REFUSALS = {
    "unknown key": (_with_demographics(place_of_birth="Hải Phòng"), "place_of_birth"),
    "missing key": (_with_demographics(id_number=None), "id_number"),
    "FS in a value": (_with_demographics(full_name="Nguyễn\x1cThị"), "FS"),
    "GS in a value": (_with_demographics(religion="Phật\x1dgiáo"), "GS"),
    "RS in a value": (_with_demographics(ethnicity="Kinh\x1e"), "RS"),
    "US in a value": (_with_demographics(place_of_origin="\x1fHuế"), "US"),
    "line break": (_with_demographics(place_of_residence="Số 12\nLạch Tray"), "U+000A"),
    "lone surrogate": (_with_demographics(religion="Phật\ud800"), "U+D800"),
    "not NFC": (_with_demographics(full_name=unicodedata.normalize("NFD", "Nguyễn Thị Hương Giang")), "NFC"),
    "empty value": (_with_demographics(religion=""), "non-empty"),
    "impossible date": (_with_demographics(date_of_birth="1985-02-30"), "2.022"),
    "bad sex": (_with_demographics(sex="N"), "2.024"),
    "short id number": (_with_demographics(id_number="03118501234"), "2.801"),
    "finger without image or exception": (
        lambda e: replace(e["tx"], fingers=[nist.FingerImpression(3, CREATED)]), "neither"),
    "position 0": (lambda e: replace(e["tx"], fingers=[_finger(e, position=0)]), "1..10"),
    "position 11": (lambda e: replace(e["tx"], fingers=[_finger(e, position=11)]), "1..10"),
    "same position twice": (lambda e: replace(e["tx"], fingers=[_finger(e), _finger(e)]), "twice"),
    "unknown exception code": (
        lambda e: replace(e["tx"], fingers=[nist.FingerImpression(3, CREATED, exception="AM")]), "14.018"),
    "exception with an image": (lambda e: replace(e["tx"], fingers=[_finger(e, exception="UP")]), "carries"),
    "NFIQ 2 out of range": (lambda e: replace(e["tx"], fingers=[_finger(e, nfiq2=101)]), "0..100"),
    "under 500 ppi": (lambda e: replace(e["tx"], fingers=[_finger(e, ppi=300)]), "ppi"),
    "WSQ size not as declared": (lambda e: replace(e["tx"], fingers=[_finger(e, width=300)]), "declared"),
    "not WSQ": (lambda e: replace(e["tx"], fingers=[_finger(e, wsq=e["portrait"].jpeg)]), "not a WSQ image"),
    "JPEG size not as declared": (lambda e: replace(e["tx"], faces=[replace(e["portrait"], height=480)]), "declared"),
    "two portraits": (lambda e: replace(e["tx"], faces=[e["portrait"], e["portrait"]]), "two portrait"),
    "unknown photo kind": (lambda e: replace(e["tx"], faces=[replace(e["portrait"], kind="selfie")]), "kind"),
    "naive datetime": (lambda e: replace(e["tx"], created=CREATED.replace(tzinfo=None)), "timezone-aware"),
    "TOT not alphabetic": (lambda e: replace(e["tx"], transaction_type="CCCD-ENROL"), "1.004"),
    "record id not lowercase hex": (lambda e: replace(e["tx"], record_id=RECORD_ID.upper()), "1.009"),
    "station id not ASCII": (lambda e: replace(e["tx"], station_id="VN-HẢI-PHÒNG"), "1.008"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_invalid_input_is_refused_with_the_field_named(enrollment, case):
    make, expected = REFUSALS[case]
    with pytest.raises(nist.NistError) as caught:
        nist.encode(make(enrollment))
    assert expected in caught.value.message
    assert isinstance(caught.value, StationError) and caught.value.as_reply()["code"] == "bad_record"
