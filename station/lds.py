"""The chip's files of a CCCD: ICAO Doc 9303 Part 10 LDS 1.7 for a TD1 card, and EF.SOD.

Pure encoders, bytes out: the chip encoder writes what ``lds_files`` returns under the file
ids of ``FILES``, and ``station/chip_verify.py`` reads them back with ``read_tlv``. The data
groups are BER-TLV (tags and lengths only, written by ``tlv`` here); what is ASN.1 proper
(DG13's fields, the LDSSecurityObject, CMS SignedData) is left to asn1crypto.

  EF.COM  60: LDS version 0107, Unicode 040000, the tag list of the data groups present
  DG1     61 5D 5F1F 5A: the 90 characters of the TD1 MRZ, as printed (``card.mrz_lines``)
  DG2     75 7F61 (02 01 count) 7F60 (A1 header, 5F2E ISO/IEC 19794-5 face record): the portrait
  DG13    6D: the Vietnamese national data, SEQUENCE { INTEGER field id, UTF8String value }
          one a field, as printed on the card face (``card.printed``)
  DG14    6E: SecurityInfos (Doc 9303-11 9.2) with the ActiveAuthenticationInfo { id-AA
          2.23.136.1.1.5, version 1, ecdsa-plain-SHA256 0.4.0.127.0.7.1.1.4.1.3 (BSI
          TR-03111) }, when the chip has an ECDSA Active Authentication key: 9303-11 wants
          the signature algorithm named for ECDSA (an RSA key needs no DG14)
  DG15    6F: the Active Authentication public key (SubjectPublicKeyInfo), when the chip has one
  EF.SOD  77: CMS SignedData over an LDSSecurityObject (SHA-256 of each whole data group),
          signed by the Document Signer (``station/pki.py``) whose certificate it carries
"""
from __future__ import annotations

import hashlib
import io
import struct
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from PIL import Image, UnidentifiedImageError

from station import card as card_module
from station import mrz
from station.card import CardData
from station.errors import BadRequest, StationError
from station.pki import DocumentSigner

AID = bytes.fromhex("A0000002471001")  # the eMRTD application
LDS_VERSION = b"0107"
UNICODE_VERSION = b"040000"
LDS_SECURITY_OBJECT_OID = "2.23.136.1.1.1"
HASH_ALGORITHM = "sha256"
MAX_PORTRAIT_BYTES = 20_000  # the chip portrait's budget: 20 KB of the card's EEPROM


@dataclass(frozen=True)
class ElementaryFile:
    """One file of the eMRTD application: its name, file id, short file id and outer tag."""

    name: str
    file_id: int
    sfi: int
    tag: int
    data_group: int | None = None


_DG_TAGS = (0x61, 0x75, 0x63, 0x76, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x70)
DATA_GROUPS: dict[int, ElementaryFile] = {
    number: ElementaryFile(f"DG{number}", 0x0100 + number, number, tag, number)
    for number, tag in enumerate(_DG_TAGS, start=1)
}
FILES: dict[str, ElementaryFile] = {
    "EF.COM": ElementaryFile("EF.COM", 0x011E, 0x1E, 0x60),
    **{dg.name: dg for dg in DATA_GROUPS.values()},
    "EF.SOD": ElementaryFile("EF.SOD", 0x011D, 0x1D, 0x77),
}

# DG13 field ids of the Vietnamese national format, and what each holds.
DG13_FIELDS: dict[int, str] = {
    1: "id number", 2: "full name", 3: "date of birth", 4: "sex", 5: "nationality", 6: "ethnicity",
    7: "religion", 8: "place of origin (hometown)", 9: "place of residence", 10: "identifying marks",
    11: "date of issue", 12: "date of expiry", 13: "parents",
}

# ISO/IEC 19794-5:2005 face record values written in DG2
FACE_FORMAT = b"FAC\x00"
FACE_VERSION = b"010\x00"
IMAGE_JPEG, IMAGE_JPEG2000 = 0, 1
FACE_BASIC, FACE_FULL_FRONTAL, FACE_TOKEN_FRONTAL = 0, 1, 2
SOURCE_DIGITAL_CAMERA = 2
_GENDER = {"M": 1, "F": 2}
_COLOUR_SPACE = {"RGB": 1, "L": 3}  # 24-bit RGB, 8-bit greyscale; other modes: unspecified (0)
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_CODESTREAM = b"\xff\x4f\xff\x51"
_JPEG = b"\xff\xd8\xff"


class LdsError(StationError):
    """Bytes that do not follow the LDS encoding; the message names the file and the offset."""

    code = "bad_lds"


# -- BER-TLV ---------------------------------------------------------------------------------

def tlv(tag: int, value: bytes) -> bytes:
    """One BER-TLV: the tag's bytes as written (0x5F1F is two bytes), a definite length."""
    tag_bytes = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    size = len(value)
    if size < 0x80:
        length = bytes([size])
    else:
        octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return tag_bytes + length + value


def read_tlv(data: bytes, offset: int = 0, where: str = "data") -> tuple[int, bytes, int]:
    """(tag, value, offset after it) of the TLV at ``offset``; ``LdsError`` when it does not fit."""
    start = offset

    def byte() -> int:
        nonlocal offset
        if offset >= len(data):
            raise LdsError(f"{where}: TLV at offset {start} is cut short at offset {offset} "
                           f"({len(data)} bytes in all)")
        offset += 1
        return data[offset - 1]

    tag = byte()
    if tag & 0x1F == 0x1F:
        while True:
            following = byte()
            tag = tag << 8 | following
            if not following & 0x80:
                break
            if tag > 0xFFFFFF:
                raise LdsError(f"{where}: TLV at offset {start} has a tag longer than 3 bytes")
    first = byte()
    if first < 0x80:
        size = first
    elif first == 0x80 or first > 0x84:
        raise LdsError(f"{where}: TLV at offset {start} has length byte {first:02X}; the LDS uses definite "
                       f"lengths of at most 4 bytes")
    else:
        size = int.from_bytes(bytes(byte() for _ in range(first & 0x7F)), "big")
    if offset + size > len(data):
        raise LdsError(f"{where}: TLV {tag:X} at offset {start} claims {size} bytes, {len(data) - offset} follow")
    return tag, bytes(data[offset:offset + size]), offset + size


def read_tlvs(data: bytes, where: str = "data") -> list[tuple[int, bytes]]:
    """Every TLV in ``data``, one after another, which must fill it exactly."""
    items, offset = [], 0
    while offset < len(data):
        tag, value, offset = read_tlv(data, offset, where)
        items.append((tag, value))
    return items


def read_file(name: str, data: bytes) -> bytes:
    """The value of an LDS file whose outer TLV carries the tag ``FILES`` gives its name and
    fills the file exactly."""
    expected = FILES[name].tag
    tag, value, end = read_tlv(data, 0, name)
    if tag != expected:
        raise LdsError(f"{name}: starts with tag {tag:02X}, an {name} starts with {expected:02X}")
    if end != len(data):
        raise LdsError(f"{name}: {len(data) - end} bytes follow the {expected:02X} TLV, which ends at offset {end}")
    return value


def _only(items: list[tuple[int, bytes]], tag: int, where: str) -> bytes:
    values = [value for item_tag, value in items if item_tag == tag]
    if len(values) != 1:
        raise LdsError(f"{where}: {len(values)} TLVs with tag {tag:X}, expected one")
    return values[0]


# -- EF.COM and DG1 --------------------------------------------------------------------------

def ef_com(data_groups: Iterable[int], lds_version: bytes = LDS_VERSION,
           unicode_version: bytes = UNICODE_VERSION) -> bytes:
    """EF.COM listing ``data_groups`` (numbers) by tag, in data group order."""
    tags = bytes(DATA_GROUPS[number].tag for number in sorted(set(data_groups)))
    return tlv(0x60, tlv(0x5F01, lds_version) + tlv(0x5F36, unicode_version) + tlv(0x5C, tags))


def ef_com_data_groups(data: bytes) -> list[int]:
    """The data group numbers EF.COM lists."""
    by_tag = {dg.tag: number for number, dg in DATA_GROUPS.items()}
    tags = _only(read_tlvs(read_file("EF.COM", data), "EF.COM"), 0x5C, "EF.COM")
    unknown = [f"{t:02X}" for t in tags if t not in by_tag]
    if unknown:
        raise LdsError(f"EF.COM: the tag list holds {', '.join(unknown)}, which are no data group's tags")
    return [by_tag[t] for t in tags]


def dg1(mrz_lines: Sequence[str]) -> bytes:
    """DG1 of a TD1 document: its three 30-character MRZ lines, as ``station/mrz.py`` writes them."""
    if len(mrz_lines) != 3 or any(len(line) != mrz.LINE_LENGTH for line in mrz_lines):
        raise BadRequest(f"DG1: a TD1 MRZ is 3 lines of {mrz.LINE_LENGTH} characters; got "
                         f"{[len(line) for line in mrz_lines]}")
    text = "".join(mrz_lines)
    if not all("0" <= c <= "9" or "A" <= c <= "Z" or c == mrz.FILLER for c in text):
        raise BadRequest(f"DG1: {text!r} holds characters outside 0-9, A-Z and '<'")
    return tlv(0x61, tlv(0x5F1F, text.encode("ascii")))


def dg1_mrz(data: bytes) -> tuple[str, str, str]:
    """The three MRZ lines of a TD1 DG1."""
    text = _only(read_tlvs(read_file("DG1", data), "DG1"), 0x5F1F, "DG1").decode("ascii", "replace")
    if len(text) != 3 * mrz.LINE_LENGTH:
        raise LdsError(f"DG1: the MRZ has {len(text)} characters; a TD1 MRZ has {3 * mrz.LINE_LENGTH}")
    return text[0:30], text[30:60], text[60:90]


# -- DG2: the portrait -----------------------------------------------------------------------

@dataclass(frozen=True)
class FacePortrait:
    """What DG2 says about its one portrait."""

    image: bytes
    image_type: int  # IMAGE_JPEG or IMAGE_JPEG2000
    width: int
    height: int
    gender: int
    face_image_type: int


def dg2(portrait: bytes, *, sex: str = "<", face_image_type: int = FACE_FULL_FRONTAL,
        source_type: int = SOURCE_DIGITAL_CAMERA) -> bytes:
    """DG2 holding one ISO/IEC 19794-5 face record of ``portrait`` (JPEG or JPEG 2000).

    The portrait is the chip's own, already compressed to fit: one over MAX_PORTRAIT_BYTES is
    refused rather than recompressed here, since quality is the camera pipeline's decision.
    """
    image_type, width, height, colour_space = _portrait_facts(portrait)
    record = _face_record(portrait, image_type, width, height, colour_space, _GENDER.get(sex, 0),
                          face_image_type, source_type)
    header = tlv(0xA1, tlv(0x81, b"\x02") + tlv(0x87, b"\x01\x01") + tlv(0x88, b"\x00\x08"))
    instance = tlv(0x7F60, header + tlv(0x5F2E, record))
    return tlv(0x75, tlv(0x7F61, tlv(0x02, b"\x01") + instance))


def dg2_portrait(data: bytes) -> FacePortrait:
    """The first portrait of a DG2, with what its face record says of it."""
    group = read_tlvs(read_file("DG2", data), "DG2")
    template = read_tlvs(_only(group, 0x7F61, "DG2"), "DG2 7F61")
    instance = read_tlvs(_only(template, 0x7F60, "DG2 7F61"), "DG2 7F60")
    block = [value for tag, value in instance if tag in (0x5F2E, 0x7F2E)]
    if not block:
        raise LdsError("DG2: the biometric information template has no 5F2E or 7F2E data block")
    record = block[0]
    if len(record) < 46 or record[:4] != FACE_FORMAT:
        raise LdsError(f"DG2: the biometric data block is not an ISO/IEC 19794-5 face record "
                       f"(starts {record[:4]!r}, {len(record)} bytes)")
    (record_length,) = struct.unpack(">I", record[8:12])
    if record_length != len(record):
        raise LdsError(f"DG2: the face record says it is {record_length} bytes long, the block holds {len(record)}")
    features = struct.unpack(">H", record[18:20])[0]
    info = 34 + 8 * features
    if len(record) < info + 12:
        raise LdsError(f"DG2: the face record is cut short: {features} feature points and the image "
                       f"information need {info + 12} bytes, it has {len(record)}")
    face_image_type, image_type, width, height = struct.unpack(">BBHH", record[info:info + 6])
    return FacePortrait(record[info + 12:], image_type, width, height, record[20], face_image_type)


def _portrait_facts(portrait: bytes) -> tuple[int, int, int, int]:
    if len(portrait) > MAX_PORTRAIT_BYTES:
        raise BadRequest(f"DG2: the chip portrait is {len(portrait)} bytes; at most {MAX_PORTRAIT_BYTES} fit "
                         f"the chip: compress it harder (JPEG 2000 or a lower JPEG quality)")
    if portrait.startswith(_JPEG):
        image_type = IMAGE_JPEG
    elif portrait.startswith(_JP2_SIGNATURE) or portrait.startswith(_J2K_CODESTREAM):
        image_type = IMAGE_JPEG2000
    else:
        raise BadRequest("DG2: the chip portrait is neither JPEG (FF D8 FF) nor JPEG 2000 (JP2 or codestream)")
    try:
        with Image.open(io.BytesIO(portrait)) as image:
            width, height = image.size
            mode = image.mode
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadRequest(f"DG2: the chip portrait does not decode: {exc}") from None
    return image_type, width, height, _COLOUR_SPACE.get(mode, 0)


def _face_record(image: bytes, image_type: int, width: int, height: int, colour_space: int, gender: int,
                 face_image_type: int, source_type: int) -> bytes:
    """ISO/IEC 19794-5:2005: record header, facial information (no feature points, pose and
    expression unspecified), image information, image."""
    facial_length = 20 + 12 + len(image)
    facial_information = struct.pack(">IHBBB3sH3s3s", facial_length, 0, gender, 0, 0, b"\0\0\0", 0,
                                      b"\0\0\0", b"\0\0\0")
    image_information = struct.pack(">BBHHBBHH", face_image_type, image_type, width, height, colour_space,
                                    source_type, 0, 0)
    header = FACE_FORMAT + FACE_VERSION + struct.pack(">IH", 14 + facial_length, 1)
    return header + facial_information + image_information + image


# -- DG13: Vietnamese national data ------------------------------------------------------------

class Dg13Field(core.Sequence):
    """SEQUENCE { fieldId INTEGER, value UTF8String }"""

    _fields = [("field_id", core.Integer), ("value", core.UTF8String)]


def dg13_values(card: CardData, parents: str | None = None) -> dict[int, str]:
    """DG13's fields of ``card``, written as its face prints them; identifying marks and
    parents only when known."""
    printed = card_module.printed(card)
    values = {
        1: card.id_number, 2: card.full_name, 3: printed["date_of_birth"], 4: printed["sex"],
        5: printed["nationality"], 6: card.ethnicity, 7: card.religion, 8: card.place_of_origin,
        9: card.place_of_residence, 10: card.identifying_marks, 11: printed["issue_date"],
        12: printed["expiry_date"], 13: parents,
    }
    return {number: value for number, value in values.items() if value}


def dg13(values: Mapping[int, str]) -> bytes:
    """DG13 of the fields given (id -> text), in field id order, text NFC."""
    unknown = sorted(set(values) - set(DG13_FIELDS))
    if unknown:
        raise BadRequest(f"DG13: field ids {unknown} are not in the national format; known: "
                         f"{', '.join(f'{k} {v}' for k, v in DG13_FIELDS.items())}")
    body = b"".join(Dg13Field({"field_id": number, "value": unicodedata.normalize("NFC", values[number])}).dump()
                    for number in sorted(values))
    return tlv(0x6D, body)


def dg13_fields(data: bytes) -> dict[int, str]:
    """The fields of a DG13 in the national format (id -> text)."""
    fields: dict[int, str] = {}
    for position, (tag, value) in enumerate(read_tlvs(read_file("DG13", data), "DG13"), start=1):
        where = f"DG13 field {position}"
        items = read_tlvs(value, where) if tag == 0x30 else []
        if tag != 0x30 or [t for t, _ in items] != [0x02, 0x0C] or not 1 <= len(items[0][1]) <= 2:
            raise LdsError(f"{where}: not SEQUENCE {{ INTEGER, UTF8String }}")
        try:
            fields[int.from_bytes(items[0][1], "big")] = items[1][1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LdsError(f"{where}: the value is not UTF-8 ({exc})") from None
    return fields


# -- DG14 --------------------------------------------------------------------------------------

AA_PROTOCOL_OID = "2.23.136.1.1.5"  # id-icao-mrtd-security-aaProtocolObject
AA_INFO_VERSION = 1
ECDSA_PLAIN_SHA256_OID = "0.4.0.127.0.7.1.1.4.1.3"  # BSI TR-03111 ecdsa-plain-SHA256


class SecurityInfo(core.Sequence):
    """Doc 9303-11 SecurityInfo: a protocol and what it requires (and may add), as any ASN.1."""

    _fields = [("protocol", core.ObjectIdentifier), ("required_data", core.Any),
               ("optional_data", core.Any, {"optional": True})]


class SecurityInfos(core.SetOf):
    _child_spec = SecurityInfo


def dg14(signature_algorithm: str = ECDSA_PLAIN_SHA256_OID) -> bytes:
    """DG14 holding the ActiveAuthenticationInfo that names the AA signature algorithm."""
    info = SecurityInfo({"protocol": AA_PROTOCOL_OID, "required_data": core.Integer(AA_INFO_VERSION),
                         "optional_data": core.ObjectIdentifier(signature_algorithm)})
    return tlv(0x6E, SecurityInfos([info]).dump())


def aa_signature_algorithm(data: bytes) -> str | None:
    """The signature algorithm (dotted OID) DG14's ActiveAuthenticationInfo names; None when
    DG14 has no ActiveAuthenticationInfo; ``LdsError`` for a DG14 that does not parse."""
    try:
        infos = SecurityInfos.load(read_file("DG14", data))
        for info in infos:
            if info["protocol"].dotted != AA_PROTOCOL_OID:
                continue
            version = core.Integer.load(info["required_data"].dump()).native
            if version != AA_INFO_VERSION or info["optional_data"].native is None:
                raise LdsError(f"DG14: ActiveAuthenticationInfo version {version} without a signature "
                               f"algorithm; Doc 9303-11 defines version {AA_INFO_VERSION} with one")
            return core.ObjectIdentifier.load(info["optional_data"].dump()).dotted
    except (ValueError, TypeError) as exc:
        raise LdsError(f"DG14: not SecurityInfos ({exc})") from None
    return None


# -- DG15 --------------------------------------------------------------------------------------

def dg15(public_key: PublicKeyTypes) -> bytes:
    """DG15: the Active Authentication public key as a SubjectPublicKeyInfo."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return tlv(0x6F, spki)


# -- EF.SOD ------------------------------------------------------------------------------------

class DataGroupHash(core.Sequence):
    _fields = [("data_group_number", core.Integer), ("data_group_hash_value", core.OctetString)]


class DataGroupHashValues(core.SequenceOf):
    _child_spec = DataGroupHash


class LdsVersionInfo(core.Sequence):
    _fields = [("lds_version", core.PrintableString), ("unicode_version", core.PrintableString)]


class LdsSecurityObject(core.Sequence):
    """LDSSecurityObject (Doc 9303-10 4.6.2): version 0, or 1 with ldsVersionInfo."""

    _fields = [
        ("version", core.Integer),
        ("hash_algorithm", algos.DigestAlgorithm),
        ("data_group_hash_values", DataGroupHashValues),
        ("lds_version_info", LdsVersionInfo, {"optional": True}),
    ]


def lds_security_object(data_groups: Mapping[int, bytes], hash_algorithm: str = HASH_ALGORITHM) -> bytes:
    """The DER LDSSecurityObject: the hash of each whole data group (tag and length included)."""
    return LdsSecurityObject({
        "version": 0,
        "hash_algorithm": {"algorithm": hash_algorithm},
        "data_group_hash_values": [
            {"data_group_number": number, "data_group_hash_value": hashlib.new(hash_algorithm, data).digest()}
            for number, data in sorted(data_groups.items())
        ],
    }).dump()


def ef_sod(data_groups: Mapping[int, bytes], document_signer: DocumentSigner,
           hash_algorithm: str = HASH_ALGORITHM) -> bytes:
    """EF.SOD: ``77 L`` around a CMS SignedData (version 3) whose eContent is the
    LDSSecurityObject of ``data_groups``, signed over the signed attributes contentType and
    messageDigest, the DS certificate inside."""
    content = lds_security_object(data_groups, hash_algorithm)
    digest = document_signer.digest
    signed_attrs = cms.CMSAttributes([
        {"type": "content_type", "values": [LDS_SECURITY_OBJECT_OID]},
        {"type": "message_digest", "values": [hashlib.new(digest, content).digest()]},
    ])
    certificate = asn1_x509.Certificate.load(document_signer.certificate_der())
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": {
            "issuer": certificate.issuer, "serial_number": certificate.serial_number}}),
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": signed_attrs,
        "signature_algorithm": document_signer.signature_algorithm(),
        "signature": document_signer.sign(signed_attrs.dump()),
    })
    signed_data = cms.SignedData({
        "version": "v3",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": {"content_type": LDS_SECURITY_OBJECT_OID, "content": content},
        "certificates": [certificate],
        "signer_infos": [signer_info],
    })
    return tlv(0x77, cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


# -- the whole set -----------------------------------------------------------------------------

def lds_files(card: CardData, chip_portrait: bytes, ds: DocumentSigner, aa_public_key: PublicKeyTypes | None = None,
              *, parents: str | None = None) -> dict[str, bytes]:
    """Every file of the card's chip by name: EF.COM, DG1, DG2, DG13, DG14 and DG15 (with
    an Active Authentication key; DG14 for an ECDSA one), EF.SOD. ``chip_portrait`` is the
    portrait compressed for the chip."""
    groups = {
        1: dg1(card_module.mrz_lines(card)),
        2: dg2(chip_portrait, sex=card.sex),
        13: dg13(dg13_values(card, parents)),
    }
    if isinstance(aa_public_key, ec.EllipticCurvePublicKey):
        groups[14] = dg14()
    if aa_public_key is not None:
        groups[15] = dg15(aa_public_key)
    return {
        "EF.COM": ef_com(groups),
        **{DATA_GROUPS[number].name: data for number, data in groups.items()},
        "EF.SOD": ef_sod(groups, ds),
    }
