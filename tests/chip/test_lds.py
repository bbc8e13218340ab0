"""The chip's files byte for byte: EF.COM, DG1, DG2, DG13, DG15 and the file table."""
from __future__ import annotations

import struct
import subprocess
import unicodedata

import cv2
import numpy as np
import pytest
from asn1crypto import keys
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mrz.checker.td1 import TD1CodeChecker

from station import card as card_module
from station import lds, mrz, pki
from station.errors import BadRequest
from tests.chip.chip_set import chip_portrait_jp2, chip_portrait_jpeg
from tests.printer.cards import APPLICANT, make_card

# REFERENCE.md, "Chip data: ICAO 9303 LDS for a TD1 card"
EF_COM_EXAMPLE = "60165F0104303130375F36063034303030305C046175636E"
ICAO_SPECIMEN = ("I<UTOD231458907<<<<<<<<<<<<<<<",
                 "7408122F1204159UTO<<<<<<<<<<<6",
                 "ERIKSSON<<ANNA<MARIA<<<<<<<<<<")


def test_ef_com_reproduces_the_reference_example():
    assert lds.ef_com([1, 2, 3, 14]).hex().upper() == EF_COM_EXAMPLE
    assert lds.ef_com([14, 3, 2, 1, 2]).hex().upper() == EF_COM_EXAMPLE  # order and repeats do not matter
    assert lds.ef_com_data_groups(bytes.fromhex(EF_COM_EXAMPLE)) == [1, 2, 3, 14]


def test_the_icao_specimen_through_dg1():
    lines = mrz.td1("I", "UTO", "D23145890", "", "740812", "F", "120415", "UTO", "", ("ERIKSSON", "ANNA MARIA"))
    assert lines == ICAO_SPECIMEN
    assert TD1CodeChecker("\n".join(lines))
    group = lds.dg1(lines)
    assert group == bytes.fromhex("615D5F1F5A") + "".join(ICAO_SPECIMEN).encode("ascii")
    assert len(group) == 95
    assert lds.dg1_mrz(group) == ICAO_SPECIMEN


def test_dg1_of_a_vietnamese_card_passes_an_independent_td1_checker():
    card = make_card()
    group = lds.dg1(card_module.mrz_lines(card))
    assert group[:5] == bytes.fromhex("615D5F1F5A") and len(group) == 95
    lines = lds.dg1_mrz(group)
    assert lines == card_module.mrz_lines(card)
    assert lines[0].startswith("IDVNM185001234") and lines[0][15:27] == APPLICANT["id_number"]
    assert lines[2].startswith("NGUYEN<<THI<DAO<")
    assert TD1CodeChecker("\n".join(lines))
    damaged = lines[0], lines[1][:-1] + str((int(lines[1][-1]) + 1) % 10), lines[2]
    assert not TD1CodeChecker("\n".join(damaged))  # the checker is not a rubber stamp


@pytest.mark.parametrize("lines", [ICAO_SPECIMEN[:2], (ICAO_SPECIMEN[0] + "<",) + ICAO_SPECIMEN[1:],
                                   (ICAO_SPECIMEN[0].lower(),) + ICAO_SPECIMEN[1:]])
def test_dg1_refuses_what_is_not_a_td1_mrz(lines):
    with pytest.raises(BadRequest):
        lds.dg1(lines)


def test_dg13_round_trips_vietnamese_text():
    card = make_card()
    group = lds.dg13(lds.dg13_values(card, parents="Nguyễn Văn Bình; Trần Thị Huệ"))
    fields = lds.dg13_fields(group)
    assert fields == {
        1: "031185001234", 2: "Nguyễn Thị Đào", 3: "04/03/1985", 4: "Nữ", 5: "Việt Nam", 6: "Kinh", 7: "Không",
        8: "Xã Nghĩa Hưng, Huyện Nghĩa Hưng, Nam Định",
        9: "Số 12, ngõ 34 phố Lạch Tray, Phường Lạch Tray, Quận Ngô Quyền, Hải Phòng",
        10: "Nốt ruồi C:2cm trên sau đầu lông mày trái", 11: "01/07/2024", 12: "04/03/2045",
        13: "Nguyễn Văn Bình; Trần Thị Huệ",
    }
    assert group[:2] == b"\x6D\x82"  # over 255 bytes: a two-byte length
    first = bytes.fromhex("3011020101") + b"\x0C\x0C031185001234"
    assert group[4:4 + len(first)] == first
    name = "Nguyễn Thị Đào".encode("utf-8")
    assert bytes.fromhex("020102") + bytes([0x0C, len(name)]) + name in group


def test_dg13_writes_nfc_and_leaves_out_what_is_unknown():
    card = make_card({k: v for k, v in APPLICANT.items() if k != "identifying_marks"})
    values = lds.dg13_values(card)
    assert 10 not in values and 13 not in values
    decomposed = {2: unicodedata.normalize("NFD", "Nguyễn Thị Đào")}
    assert lds.dg13_fields(lds.dg13(decomposed)) == {2: "Nguyễn Thị Đào"}
    with pytest.raises(BadRequest, match="field ids \\[14\\]"):
        lds.dg13({14: "x"})


def test_dg13_parser_refuses_a_foreign_layout():
    wrong = lds.tlv(0x6D, lds.tlv(0x30, lds.tlv(0x02, b"\x01") + lds.tlv(0x13, b"031185001234")))
    with pytest.raises(lds.LdsError, match="DG13 field 1"):
        lds.dg13_fields(wrong)


@pytest.mark.parametrize("encode, image_type", [(chip_portrait_jp2, lds.IMAGE_JPEG2000),
                                                (chip_portrait_jpeg, lds.IMAGE_JPEG)])
def test_dg2_wraps_an_iso_19794_5_face_record(encode, image_type):
    portrait = encode()
    group = lds.dg2(portrait, sex="F")
    # 75 → 7F61 { 02 01 01, 7F60 { A1 header, 5F2E record } }
    tag, value, end = lds.read_tlv(group)
    assert (tag, end) == (0x75, len(group))
    (_, template), = lds.read_tlvs(value)
    count, (instance_tag, instance) = lds.read_tlvs(template)
    assert count == (0x02, b"\x01") and instance_tag == 0x7F60
    (header_tag, header), (block_tag, record) = lds.read_tlvs(instance)
    assert (header_tag, block_tag) == (0xA1, 0x5F2E)
    assert header == bytes.fromhex("810102 87020101 88020008".replace(" ", ""))
    assert record[:8] == b"FAC\x00010\x00"
    assert struct.unpack(">IH", record[8:14]) == (len(record), 1)
    assert struct.unpack(">I", record[14:18])[0] == len(record) - 14
    assert record[20] == 2  # female
    face_image_type, data_type, width, height = struct.unpack(">BBHH", record[34:40])
    assert (face_image_type, data_type, width, height) == (lds.FACE_FULL_FRONTAL, image_type, 120, 160)
    assert record[46:] == portrait
    decoded = cv2.imdecode(np.frombuffer(record[46:], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (160, 120, 3)
    parsed = lds.dg2_portrait(group)
    assert (parsed.image, parsed.image_type, parsed.width, parsed.height) == (portrait, image_type, 120, 160)


def test_dg2_refuses_a_portrait_too_large_or_not_jpeg():
    noise = np.random.default_rng(3).integers(0, 256, (400, 300, 3), dtype=np.uint8)
    large = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert len(large) > lds.MAX_PORTRAIT_BYTES
    with pytest.raises(BadRequest, match=f"at most {lds.MAX_PORTRAIT_BYTES}"):
        lds.dg2(large)
    png = cv2.imencode(".png", noise[:20, :20])[1].tobytes()
    with pytest.raises(BadRequest, match="neither JPEG"):
        lds.dg2(png)
    with pytest.raises(BadRequest, match="does not decode"):
        lds.dg2(b"\xff\xd8\xff" + b"\x00" * 40)


@pytest.mark.parametrize("size, length", [(0, "00"), (0x7F, "7F"), (0x80, "8180"), (0xFF, "81FF"),
                                          (0x100, "820100"), (70_000, "83011170")])
def test_tlv_lengths_round_trip(size, length):
    encoded = lds.tlv(0x5F2E, bytes(size))
    assert encoded[2:2 + len(length) // 2].hex().upper() == length
    assert lds.read_tlv(encoded) == (0x5F2E, bytes(size), len(encoded))


@pytest.mark.parametrize("damaged, why", [(bytes.fromhex("6105"), "claims 5 bytes"), (b"\x7f", "cut short"),
                                          (bytes.fromhex("618000"), "definite lengths"),
                                          (bytes.fromhex("6100 5F".replace(" ", "")), "cut short")])
def test_tlv_reader_names_what_is_wrong(damaged, why):
    with pytest.raises(lds.LdsError, match=why):
        lds.read_tlvs(damaged, "DG1")


def test_read_file_checks_the_tag_and_that_the_tlv_fills_the_file():
    with pytest.raises(lds.LdsError, match="starts with tag 61, an DG2 starts with 75"):
        lds.read_file("DG2", lds.tlv(0x61, b""))
    with pytest.raises(lds.LdsError, match="1 bytes follow"):
        lds.read_file("DG1", lds.tlv(0x61, b"") + b"\x00")


def test_file_table():
    table = {name: (f.file_id, f.sfi, f.tag) for name, f in lds.FILES.items()}
    assert table["EF.COM"] == (0x011E, 0x1E, 0x60)
    assert table["DG1"] == (0x0101, 0x01, 0x61)
    assert table["DG2"] == (0x0102, 0x02, 0x75)
    assert table["DG13"] == (0x010D, 0x0D, 0x6D)
    assert table["DG14"] == (0x010E, 0x0E, 0x6E)
    assert table["DG15"] == (0x010F, 0x0F, 0x6F)
    assert table["EF.SOD"] == (0x011D, 0x1D, 0x77)
    assert lds.AID.hex().upper() == "A0000002471001"


def test_an_ecdsa_active_authentication_key_comes_with_dg14_naming_its_algorithm(tmp_path):
    card = make_card()
    signer = pki.init_test(tmp_path / "pki").document_signer()
    files = lds.lds_files(card, chip_portrait_jp2(), signer, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert list(files) == ["EF.COM", "DG1", "DG2", "DG13", "DG14", "DG15", "EF.SOD"]
    assert lds.ef_com_data_groups(files["EF.COM"]) == [1, 2, 13, 14, 15]
    assert lds.aa_signature_algorithm(files["DG14"]) == lds.ECDSA_PLAIN_SHA256_OID
    # OpenSSL, which knows none of these OIDs, reads the SecurityInfos the same way: a SET of
    # one SEQUENCE { id-AA, INTEGER 1, ecdsa-plain-SHA256 }.
    (tmp_path / "dg14.der").write_bytes(lds.read_file("DG14", files["DG14"]))
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-in", str(tmp_path / "dg14.der")],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    items = [" ".join(line.split("prim:" if "prim:" in line else "cons:")[1].split()) for line in out.splitlines()]
    assert items == ["SET", "SEQUENCE", "OBJECT :2.23.136.1.1.5", "INTEGER :01", "OBJECT :0.4.0.127.0.7.1.1.4.1.3"], out
    assert lds.aa_signature_algorithm(lds.tlv(0x6E, lds.SecurityInfos([]).dump())) is None
    with pytest.raises(lds.LdsError, match="DG14"):
        lds.aa_signature_algorithm(lds.tlv(0x6E, b"\x31\x03\x02\x01\x01"))


def test_lds_files_of_a_card_with_active_authentication(tmp_path):
    card = make_card()
    signer = pki.init_test(tmp_path / "pki").document_signer()
    aa_key = rsa.generate_private_key(65537, 2048)
    files = lds.lds_files(card, chip_portrait_jp2(), signer, aa_key.public_key())
    assert list(files) == ["EF.COM", "DG1", "DG2", "DG13", "DG15", "EF.SOD"]
    assert lds.ef_com_data_groups(files["EF.COM"]) == [1, 2, 13, 15]
    assert files["DG1"] == lds.dg1(card_module.mrz_lines(card))
    spki = keys.PublicKeyInfo.load(lds.read_file("DG15", files["DG15"]))
    assert spki["public_key"].parsed["modulus"].native == aa_key.public_key().public_numbers().n
    assert "DG15" not in lds.lds_files(card, chip_portrait_jp2(), signer)
