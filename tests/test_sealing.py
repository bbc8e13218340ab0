"""The sealed record: round trip, tamper at every region, hybrid signatures, bindings, parsing.

The tests read and rebuild blobs with their own parser of the layout in
docs/sealed-record.md, so a change to the layout that the doc does not follow fails here.
"""
import base64
import hashlib
import json
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from station.errors import StationError
from station.sealing import (MAGIC, MAX_PLAINTEXT_BYTES, SIGN_DOMAIN, CentralPrivateKey,
                             CentralPublicKey, SealError, SealedHeader, StationPublicKeys,
                             StationSigner, hpke_info, open_sealed, read_header, seal, verify)

pytestmark = pytest.mark.timeout(120)

SIGNER_A = StationSigner.generate("VN-HP-0001")
SIGNER_B = StationSigner.generate("VN-HP-0002")
CENTRAL = CentralPrivateKey.generate()
OTHER_CENTRAL = CentralPrivateKey.generate()
PAYLOAD = random.Random(7).randbytes(700_000)
SMALL = b'{"record":"small","portrait":"...","fingers":[1,2,3]}'


def _seal(plaintext=PAYLOAD, signer=SIGNER_A, central=CENTRAL, record_id="r-0001", **kw):
    return seal(plaintext, record_id=record_id, content_type="application/vnd.station.record+json",
                signer=signer, central=central.public(), **kw)


BLOB = _seal()
SMALL_BLOB = _seal(SMALL, record_id="r-small")
PARTS = ("header", "ed25519", "mldsa65", "ciphertext")


def split(blob: bytes) -> tuple[dict[str, bytes], dict[str, tuple[int, int]]]:
    """An independent reader of the documented layout: parts and the byte range of each region."""
    assert blob[:8] == b"STNSEAL\n" and int.from_bytes(blob[8:10], "big") == 1
    regions = {"magic": (0, 8), "version": (8, 10)}
    parts, offset = {}, 10
    for name in PARTS:
        length = int.from_bytes(blob[offset:offset + 4], "big")
        regions[f"{name}_length"] = (offset, offset + 4)
        regions[name] = (offset + 4, offset + 4 + length)
        parts[name] = blob[offset + 4:offset + 4 + length]
        offset += 4 + length
    assert offset == len(blob)
    start, end = regions.pop("ciphertext")
    regions.update(hpke_enc=(start, start + 1120), aead_body=(start + 1120, end - 16), aead_tag=(end - 16, end))
    return parts, regions


def build(header: bytes, ed_sig: bytes, ml_sig: bytes, ciphertext: bytes, version: int = 1) -> bytes:
    return b"STNSEAL\n" + version.to_bytes(2, "big") + b"".join(
        len(p).to_bytes(4, "big") + p for p in (header, ed_sig, ml_sig, ciphertext))


def canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def resign(blob: bytes, signer: StationSigner, ciphertext: bytes | None = None, **changes) -> bytes:
    """What a station holding ``signer``'s keys could produce from ``blob``: a new, validly signed header."""
    parts, _ = split(blob)
    ciphertext = parts["ciphertext"] if ciphertext is None else ciphertext
    header = json.loads(parts["header"])
    header.update(ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(), ciphertext_bytes=len(ciphertext))
    header.update(changes)
    raw = canonical(header)
    return build(raw, *signer.sign(SIGN_DOMAIN + raw), ciphertext)


def refused(blob: bytes, station=None, central=CENTRAL) -> str:
    """The code ``open_sealed`` refuses ``blob`` with (it must refuse)."""
    with pytest.raises(SealError) as info:
        open_sealed(blob, central, station or SIGNER_A.public())
    return info.value.code


# -- round trip ------------------------------------------------------------------------------

def test_round_trip_of_a_700_kb_record():
    header = verify(BLOB, SIGNER_A.public())
    assert header == read_header(BLOB)
    assert (header.station_id, header.record_id, header.version) == ("VN-HP-0001", "r-0001", 1)
    assert header.content_type == "application/vnd.station.record+json"
    assert header.plaintext_bytes == len(PAYLOAD)
    assert header.plaintext_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert header.central_key_id == CENTRAL.key_id and header.station_key_id == SIGNER_A.public().key_id
    opened, plaintext = open_sealed(BLOB, CENTRAL, SIGNER_A.public())
    assert plaintext == PAYLOAD and opened == header
    assert len(BLOB) - len(PAYLOAD) < 6000  # header + 2 signatures + HPKE enc + tag
    assert PAYLOAD[:4096] not in BLOB


def test_layout_matches_the_document():
    parts, regions = split(BLOB)
    assert len(parts["ed25519"]) == 64 and len(parts["mldsa65"]) == 3309
    assert len(parts["ciphertext"]) == len(PAYLOAD) + 1120 + 16
    header = json.loads(parts["header"])
    assert parts["header"] == canonical(header)
    assert set(header) == {"format", "version", "station_id", "record_id", "content_type", "created_ns",
                           "kem", "kdf", "aead", "signatures", "plaintext_sha256", "plaintext_bytes",
                           "ciphertext_sha256", "ciphertext_bytes", "central_key_id", "station_key_id"}
    assert (header["format"], header["kem"], header["kdf"], header["aead"], header["signatures"]) == (
        "station.sealed-record", "MLKEM768-X25519", "HKDF-SHA256", "AES-256-GCM", "Ed25519+ML-DSA-65")
    assert header["ciphertext_sha256"] == hashlib.sha256(parts["ciphertext"]).hexdigest()
    message = SIGN_DOMAIN + parts["header"]
    SIGNER_A.public().ed25519.verify(parts["ed25519"], message)
    SIGNER_A.public().mldsa65.verify(parts["mldsa65"], message)
    assert build(*(parts[name] for name in PARTS)) == BLOB


def test_hpke_info_encoding_is_fixed():
    assert hpke_info(1, "VN-HP-0001", "r-1", "a/b") == (
        b"station.sealed-record/v1/hpke-info\x00" + b"\x00\x01"
        + b"\x00\x0aVN-HP-0001" + b"\x00\x03r-1" + b"\x00\x03a/b")
    # lengths make the fields unambiguous: moving a character between fields changes info
    assert hpke_info(1, "A-B", "C", "a/b") != hpke_info(1, "A", "B-C", "a/b")


def test_sealing_is_randomised_and_timestamped():
    first, second = _seal(SMALL, record_id="same"), _seal(SMALL, record_id="same", created_ns=42)
    assert split(first)[0]["ciphertext"] != split(second)[0]["ciphertext"]
    assert read_header(second).created_ns == 42 and read_header(first).created_ns > 1_600_000_000 * 10**9
    assert open_sealed(second, CENTRAL, SIGNER_A.public())[1] == SMALL


def test_empty_plaintext_round_trips():
    blob = _seal(b"", record_id="empty")
    assert open_sealed(blob, CENTRAL, SIGNER_A.public())[1] == b""


# -- tampering --------------------------------------------------------------------------------

EXPECTED_CODES = {
    "magic": {"bad_format"}, "version": {"bad_format"},
    "header_length": {"bad_format"}, "ed25519_length": {"bad_format"},
    "mldsa65_length": {"bad_format"}, "ciphertext_length": {"bad_format"},
    "header": {"bad_format", "bad_signature", "wrong_station"},
    "ed25519": {"bad_signature"}, "mldsa65": {"bad_signature"},
    "hpke_enc": {"hash_mismatch"}, "aead_body": {"hash_mismatch"}, "aead_tag": {"hash_mismatch"},
}


def _tamper_positions(regions: dict[str, tuple[int, int]], total: int) -> list[int]:
    every_kth = range(0, total, total // 300)
    edges = [p for start, end in regions.values() for p in (start, end - 1, (start + end) // 2)]
    small = [p for start, end in regions.values() if end - start <= 8 for p in range(start, end)]
    return sorted(set(every_kth) | set(edges) | set(small))


def test_one_flipped_byte_anywhere_is_refused():
    _, regions = split(BLOB)
    positions = _tamper_positions(regions, len(BLOB))
    assert len(positions) > 300
    codes: dict[str, set[str]] = {name: set() for name in regions}
    for pos in positions:
        tampered = bytearray(BLOB)
        tampered[pos] ^= 1 << (pos % 8)
        with pytest.raises(SealError) as gateway:
            verify(bytes(tampered), SIGNER_A.public())
        region = next(name for name, (start, end) in regions.items() if start <= pos < end)
        codes[region].add(gateway.value.code)
        assert refused(bytes(tampered)) == gateway.value.code
    for region, seen in codes.items():
        assert seen, f"no position tested in {region}"
        assert seen <= EXPECTED_CODES[region], (region, seen)


@pytest.mark.parametrize("region", ["hpke_enc", "aead_body", "aead_tag"])
def test_hpke_refuses_a_corrupt_ciphertext_even_when_signed(region):
    """A station that signs a corrupted ciphertext: signatures pass, HPKE's own tag does not."""
    parts, regions = split(BLOB)
    start, end = regions[region]
    base = regions["hpke_enc"][0]
    for pos in (start, (start + end) // 2, end - 1):
        ciphertext = bytearray(parts["ciphertext"])
        ciphertext[pos - base] ^= 0x80
        blob = resign(BLOB, SIGNER_A, ciphertext=bytes(ciphertext))
        verify(blob, SIGNER_A.public())
        assert refused(blob) == "decrypt_failed"


def test_signed_plaintext_hash_is_checked_after_decryption():
    blob = resign(BLOB, SIGNER_A, plaintext_sha256="0" * 64)
    verify(blob, SIGNER_A.public())
    assert refused(blob) == "hash_mismatch"


# -- hybrid signatures and station identity -----------------------------------------------------

def test_another_stations_keys_claiming_station_a_are_refused():
    impostor = StationSigner("VN-HP-0001", ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate())
    blob = _seal(SMALL, signer=impostor)
    assert read_header(blob).station_id == "VN-HP-0001"
    with pytest.raises(SealError) as info:
        verify(blob, SIGNER_A.public())
    assert info.value.code == "wrong_station"
    # ... and claiming A's key id too only moves the refusal to the signatures
    forged = resign(blob, impostor, station_key_id=SIGNER_A.public().key_id)
    assert refused(forged) == "bad_signature"
    # a record of station B checked against A's keys
    with pytest.raises(SealError) as info:
        verify(_seal(SMALL, signer=SIGNER_B), SIGNER_A.public())
    assert info.value.code == "wrong_station" and "VN-HP-0002" in info.value.message


def _with_signatures(ed_sig: bytes | None = None, ml_sig: bytes | None = None) -> bytes:
    parts, _ = split(SMALL_BLOB)
    return build(parts["header"], ed_sig or parts["ed25519"], ml_sig or parts["mldsa65"], parts["ciphertext"])


def test_both_signatures_are_required():
    parts, _ = split(SMALL_BLOB)
    message = SIGN_DOMAIN + parts["header"]
    other_ed, other_ml = StationSigner.generate("VN-HP-0001").sign(message)
    a_ed_elsewhere, a_ml_elsewhere = SIGNER_A.sign(SIGN_DOMAIN + split(BLOB)[0]["header"])
    a_ed_nodomain, a_ml_nodomain = SIGNER_A.sign(parts["header"])
    cases = {
        "Ed25519": [other_ed, a_ed_elsewhere, a_ed_nodomain],
        "ML-DSA-65": [other_ml, a_ml_elsewhere, a_ml_nodomain],
    }
    assert _with_signatures() == SMALL_BLOB and verify(SMALL_BLOB, SIGNER_A.public())
    for which, sigs in cases.items():
        for sig in sigs:
            blob = _with_signatures(ed_sig=sig) if which == "Ed25519" else _with_signatures(ml_sig=sig)
            with pytest.raises(SealError) as info:
                verify(blob, SIGNER_A.public())
            assert info.value.code == "bad_signature"
            assert which in info.value.message and " and " not in info.value.message
            assert refused(blob) == "bad_signature"


def test_changing_the_record_id_is_refused():
    parts, _ = split(SMALL_BLOB)
    header = json.loads(parts["header"])
    header["record_id"] = "r-other"
    unsigned = build(canonical(header), parts["ed25519"], parts["mldsa65"], parts["ciphertext"])
    assert read_header(unsigned).record_id == "r-other"
    assert refused(unsigned) == "bad_signature"
    # even the station's own keys cannot move a ciphertext to another record id: HPKE info binds it
    resigned = resign(SMALL_BLOB, SIGNER_A, record_id="r-other")
    assert verify(resigned, SIGNER_A.public()).record_id == "r-other"
    assert refused(resigned) == "decrypt_failed"


def test_ciphertext_is_bound_to_station_and_content_type():
    b_key = SIGNER_B.public().key_id
    stolen = resign(SMALL_BLOB, SIGNER_B, station_id="VN-HP-0002", station_key_id=b_key)
    assert verify(stolen, SIGNER_B.public()).station_id == "VN-HP-0002"
    assert refused(stolen, SIGNER_B.public()) == "decrypt_failed"
    relabelled = resign(SMALL_BLOB, SIGNER_A, content_type="image/jpeg")
    assert refused(relabelled) == "decrypt_failed"


def test_wrong_central_key_does_not_decrypt():
    with pytest.raises(SealError) as info:
        open_sealed(BLOB, OTHER_CENTRAL, SIGNER_A.public())
    assert info.value.code == "decrypt_failed" and OTHER_CENTRAL.key_id[:16] in info.value.message
    # naming the other key in a signed header reaches HPKE, which refuses too
    renamed = resign(SMALL_BLOB, SIGNER_A, central_key_id=OTHER_CENTRAL.key_id)
    assert refused(renamed, central=OTHER_CENTRAL) == "decrypt_failed"


# -- strict parsing -----------------------------------------------------------------------------

def _format_error(blob) -> str:
    with pytest.raises(SealError) as info:
        read_header(blob)
    assert info.value.code == "bad_format"
    with pytest.raises(SealError):
        verify(blob, SIGNER_A.public())
    return info.value.message


def test_truncated_blobs_are_bad_format():
    for length in list(range(0, 40)) + list(range(40, len(SMALL_BLOB), 97)) + [len(SMALL_BLOB) - 1]:
        _format_error(SMALL_BLOB[:length])
    assert "trailing" in _format_error(SMALL_BLOB + b"\x00")


def test_huge_or_wrong_length_prefixes_are_bad_format():
    _, regions = split(SMALL_BLOB)
    for name in PARTS:
        start, _ = regions[f"{name}_length"]
        for value in (0, 1, 0x7FFFFFFF, 0xFFFFFFFF):
            blob = SMALL_BLOB[:start] + value.to_bytes(4, "big") + SMALL_BLOB[start + 4:]
            _format_error(blob)


def test_other_versions_and_garbage_are_bad_format():
    parts, _ = split(SMALL_BLOB)
    assert "version 2" in _format_error(build(*(parts[n] for n in PARTS), version=2))
    assert "magic" in _format_error(b"PK\x03\x04" + SMALL_BLOB[4:])
    _format_error(b"")
    _format_error(random.Random(1).randbytes(10_000))
    _format_error("not bytes")
    _format_error(MAGIC + b"\x00\x01" + (5).to_bytes(4, "big") + b"[[[[[")
    deep = b"[" * 4000  # deeper than the JSON parser's recursion limit
    _format_error(build(deep, parts["ed25519"], parts["mldsa65"], parts["ciphertext"]))


@pytest.mark.parametrize("edit", [
    lambda h: h.replace(b",", b", ", 1),                              # whitespace
    lambda h: b'{"version":1,' + h[1:],                                # duplicate key
    lambda h: h.replace(b'"version":1', b'"version":1.0'),             # float
    lambda h: h.replace(b'"version":1', b'"version":true'),            # bool
    lambda h: h.replace(b'"record_id":"r-small"', b'"record_id":"../x"'),
    lambda h: h.replace(b'"kem":"MLKEM768-X25519"', b'"kem":"X25519"'),
    lambda h: h.replace(b'"plaintext_bytes":', b'"plaintext_bytes":1'),  # sizes inconsistent
    lambda h: h[:-1] + b',"extra":1}',
    lambda h: b"[" + h + b"]",
    lambda h: h.replace(b"VN-HP-0001", "VN-HP-000\u0661".encode()),  # not ASCII
])
def test_non_canonical_or_invalid_headers_are_refused_even_when_signed(edit):
    parts, _ = split(SMALL_BLOB)
    header = edit(parts["header"])
    assert header != parts["header"]
    blob = build(header, *SIGNER_A.sign(SIGN_DOMAIN + header), parts["ciphertext"])
    _format_error(blob)


def _json_values():
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                        max_leaves=6)


def _only_seal_errors(blob) -> None:
    try:
        read_header(blob)
    except SealError:
        pass
    with pytest.raises(SealError):
        verify(blob, SIGNER_A.public())


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=6000), st.binary(max_size=6000).map(lambda b: MAGIC + b"\x00\x01" + b)))
def test_arbitrary_bytes_raise_only_seal_error(blob):
    _only_seal_errors(blob)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_blobs_raise_only_seal_error(data):
    blob = bytearray(SMALL_BLOB)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set_length"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del blob[pos:pos + data.draw(st.integers(1, 64))]
        elif kind == "truncate":
            del blob[pos:]
        elif kind == "set_length" and len(blob) >= pos + 4:
            blob[pos:pos + 4] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    assume(bytes(blob) != SMALL_BLOB)
    _only_seal_errors(bytes(blob))


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(sorted(json.loads(split(SMALL_BLOB)[0]["header"]))), _json_values(), st.booleans())
def test_fuzzed_header_fields_raise_only_seal_error(name, value, delete):
    parts, _ = split(SMALL_BLOB)
    header = json.loads(parts["header"])
    if delete:
        del header[name]
    else:
        header[name] = value
    raw = canonical(header)
    assume(raw != parts["header"])
    _only_seal_errors(build(raw, parts["ed25519"], parts["mldsa65"], parts["ciphertext"]))


# -- seal's own checks ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"record_id": ""}, {"record_id": "../etc"}, {"record_id": "x" * 65}, {"record_id": "r\n"},
    {"content_type": "json"}, {"content_type": "a/b c"}, {"content_type": ""},
])
def test_seal_refuses_bad_ids_before_encrypting(kwargs):
    args = {"record_id": "r-1", "content_type": "application/json", **kwargs}
    with pytest.raises(SealError) as info:
        seal(b"x", signer=SIGNER_A, central=CENTRAL.public(), **args)
    assert info.value.code == "bad_input"


def test_seal_refuses_oversize_plaintext():
    with pytest.raises(SealError) as info:
        _seal(bytes(MAX_PLAINTEXT_BYTES + 1))
    assert info.value.code == "bad_input" and str(MAX_PLAINTEXT_BYTES) in info.value.message


def test_station_ids_are_checked():
    for bad in ("", "VN HP", "x" * 33, "VN_HP", "VN-HP-0001\n"):
        with pytest.raises(SealError):
            StationSigner.generate(bad)
    assert StationSigner.generate("x" * 32).station_id == "x" * 32


# -- keys and PEM bundles -----------------------------------------------------------------------

def _der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_key_ids_are_sha256_of_the_der_public_keys():
    a = SIGNER_A.public()
    assert a.key_id == hashlib.sha256(_der(a.ed25519) + _der(a.mldsa65)).hexdigest()
    c = CENTRAL.public()
    assert c.key_id == CENTRAL.key_id == hashlib.sha256(_der(c.mlkem768) + _der(c.x25519)).hexdigest()
    assert SIGNER_B.public().key_id != a.key_id and OTHER_CENTRAL.key_id != CENTRAL.key_id


def test_station_bundles_round_trip():
    pem = SIGNER_A.public().to_pem()
    assert pem.startswith("Station-Id: VN-HP-0001\nKey-Id: " + SIGNER_A.public().key_id + "\n")
    assert pem.count("-----BEGIN PUBLIC KEY-----") == 2
    assert StationPublicKeys.from_pem(pem) == SIGNER_A.public()
    assert StationPublicKeys.from_pem(pem.encode()).key_id == SIGNER_A.public().key_id
    again = StationSigner.from_pem(SIGNER_A.to_pem())
    assert again.public() == SIGNER_A.public()
    assert verify(_seal(SMALL, signer=again), SIGNER_A.public()).station_id == "VN-HP-0001"
    assert b"PRIVATE KEY" in SIGNER_A.to_pem() and b"PRIVATE KEY" not in pem.encode()


def test_central_bundles_round_trip():
    private = CentralPrivateKey.from_pem(CENTRAL.to_pem())
    public = CentralPublicKey.from_pem(CENTRAL.public().to_pem())
    assert private.key_id == public.key_id == CENTRAL.key_id
    blob = seal(SMALL, record_id="r-pem", content_type="application/json", signer=SIGNER_A, central=public)
    assert open_sealed(blob, private, SIGNER_A.public())[1] == SMALL


def _bad_key(parse, pem) -> str:
    with pytest.raises(SealError) as info:
        parse(pem)
    assert info.value.code == "bad_key" and isinstance(info.value, StationError)
    return info.value.message


def test_bundles_that_do_not_fit_are_refused():
    a_pem, b_pem = SIGNER_A.public().to_pem(), SIGNER_B.public().to_pem()
    assert "private key" in _bad_key(CentralPublicKey.from_pem, CENTRAL.to_pem())
    _bad_key(CentralPublicKey.from_pem, SIGNER_A.public().to_pem())
    _bad_key(CentralPrivateKey.from_pem, CENTRAL.public().to_pem())
    _bad_key(StationPublicKeys.from_pem, a_pem.replace("VN-HP-0001", "VN HP 1"))
    a_ed, b_ml = a_pem[:a_pem.rindex("-----BEGIN")], b_pem[b_pem.rindex("-----BEGIN"):]
    assert "does not match" in _bad_key(StationPublicKeys.from_pem, a_ed + b_ml)  # A's Key-Id, mixed keys
    assert "Key-Id" in _bad_key(StationPublicKeys.from_pem, a_pem.replace(SIGNER_A.public().key_id, "0" * 64))
    _bad_key(StationPublicKeys.from_pem, a_pem.replace("Station-Id", "Station-ID"))
    _bad_key(StationPublicKeys.from_pem, a_pem + a_pem.split("\n", 2)[2])     # four blocks
    _bad_key(StationPublicKeys.from_pem, a_pem[:a_pem.rindex("-----BEGIN")])  # one block
    _bad_key(StationPublicKeys.from_pem, a_pem.replace("MC", "M!", 1))
    _bad_key(StationPublicKeys.from_pem, b"\xff\xfe garbage")
    _bad_key(StationSigner.from_pem, a_pem)


# -- golden record: v1 records sealed today must open with tomorrow's code ----------------------

def _seeded(label: str, n: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


GOLDEN_SIGNER = StationSigner("VN-TEST-0001", ed25519.Ed25519PrivateKey.from_private_bytes(_seeded("golden ed25519", 32)),
                              mldsa.MLDSA65PrivateKey.from_seed_bytes(_seeded("golden mldsa65", 32)))
GOLDEN_CENTRAL = CentralPrivateKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(_seeded("golden mlkem768", 64)),
                                   x25519.X25519PrivateKey.from_private_bytes(_seeded("golden x25519", 32)))


def test_golden_v1_record_opens():
    blob = base64.b64decode("".join(GOLDEN_V1.split()))
    header, plaintext = open_sealed(blob, GOLDEN_CENTRAL, GOLDEN_SIGNER.public())
    assert plaintext == b'{"record":"golden","fingers":10}'
    assert header == SealedHeader(
        version=1, station_id="VN-TEST-0001", record_id="golden-0001", content_type="application/json",
        created_ns=1767225600000000000, plaintext_sha256=hashlib.sha256(plaintext).hexdigest(),
        plaintext_bytes=32, ciphertext_sha256=header.ciphertext_sha256, ciphertext_bytes=32 + 1120 + 16,
        central_key_id="89057e872ece7c4e6ab27cec64fc12fcb1659d60f1094963d3fb558064f615fb",
        station_key_id="c91c7cc87293b21bf33193e45f8a0a76f9d4bc2e6bec37ec8a7bd1ff42ffd43b")
    assert GOLDEN_SIGNER.public().key_id == header.station_key_id and GOLDEN_CENTRAL.key_id == header.central_key_id


GOLDEN_V1 = """
U1ROU0VBTAoAAQAAAot7ImFlYWQiOiJBRVMtMjU2LUdDTSIsImNlbnRyYWxfa2V5X2lkIjoiODkwNTdlODcyZWNlN2M0ZTZh
YjI3Y2VjNjRmYzEyZmNiMTY1OWQ2MGYxMDk0OTYzZDNmYjU1ODA2NGY2MTVmYiIsImNpcGhlcnRleHRfYnl0ZXMiOjExNjgs
ImNpcGhlcnRleHRfc2hhMjU2IjoiN2FiYTJlNDhhM2MyMTQ1YzVkNDMzYzBhNWI5M2U2MmQ4YzBmYWQwNmJhNWNmYmY5MjUy
ZTBmNTMwMGM3ZjdjZiIsImNvbnRlbnRfdHlwZSI6ImFwcGxpY2F0aW9uL2pzb24iLCJjcmVhdGVkX25zIjoxNzY3MjI1NjAw
MDAwMDAwMDAwLCJmb3JtYXQiOiJzdGF0aW9uLnNlYWxlZC1yZWNvcmQiLCJrZGYiOiJIS0RGLVNIQTI1NiIsImtlbSI6Ik1M
S0VNNzY4LVgyNTUxOSIsInBsYWludGV4dF9ieXRlcyI6MzIsInBsYWludGV4dF9zaGEyNTYiOiI1YmIwNTNmNTgxYTQzMWI4
ZWMzNDk4YTg4ZjFhNmE5NDY3NTMzMGI4YzUyOGZkYzFlMWFkNzE2YmQ5NzVhYjI4IiwicmVjb3JkX2lkIjoiZ29sZGVuLTAw
MDEiLCJzaWduYXR1cmVzIjoiRWQyNTUxOStNTC1EU0EtNjUiLCJzdGF0aW9uX2lkIjoiVk4tVEVTVC0wMDAxIiwic3RhdGlv
bl9rZXlfaWQiOiJjOTFjN2NjODcyOTNiMjFiZjMzMTkzZTQ1ZjhhMGE3NmY5ZDRiYzJlNmJlYzM3ZWM4YTdiZDFmZjQyZmZk
NDNiIiwidmVyc2lvbiI6MX0AAABAOcH3Vr/rPdSD31FGzimJnLrSV+UryrPkBKKqoJEBfK+MqyPfBuYdIffGp02KOfnKysPp
4adxOKUYZzRrJiJSAgAADO1goUOcvusI1MkT9qRzQLFsfxj+ZDyFx68MUbwtySAQZhFBOr4VJiGkV0/hGxXpQDCnTJ189ssO
J+tfy5s+YtNtMl6pX9oA3O9Up21agj1AB/WzqXrI88tawaVDIo4aksgoMuPgfttfPhxlq/UABakGG+9RwwytEmAoUXptfRRS
+bvmfTGeSDJ60kTL+S8ZH95lRVKFmETpa7LcOCPR77ErME5j2McsSZ4E8D4IWGjxoFpKOOdCVsNDkU++FroxGjP+GXXW9syl
JyXF/wW0MHzEJzXl0mjBId13LOHgN4CGQdCukF6DZDCiXC0k/P88EM+inXJgCjhJkInd87fr6MTcZaZ/qHWezaUxE+qCOOMM
aTvqkXfpwy8OFe05lVKgQZrLWSVBDDDyM6Az/IOPTEVnZJuEhNviLkhgK0r7IScNykgDIUFsMDz8xvNWEdqdj7X7Zu//Yih/
+GT3FDzv856oYtQFJhDP9Zoksy+rZ1inOyyz/6rPK0gq/Z13G8oFDm3a02s6Qw/olNW95/Et5W5kwrKfNMHOimGEsDtogU8R
h9d0gTzs4StyxsOMrBbvsPPenutc56nSknryEMN9z7VbS62uYE6QnrGkuTcJNfZWTn7kbFMKy42INGxyFLmMsqoZLKUPK4Dw
Hx2OHJwTJtErA7juuFDlLHemwt2n0Ubzusc+giOgn9luf0dJBTa0exBPb5bylxL/PfB5CH9+6tdRE+Xjy9wnFhL1MJFwDBZt
nexiqStSGZ7GnfwypGc4gEmZ8WwMGpavCaopf4qH3OUfVJ5hbq7gzSrZTfioAptv5HG5jrUGAGNVsy6s215ipuLU/ufukYnA
osxpqmh7AHzcVHgaNifg60M67p/vN3MtNh2FcXF2U+BS4kpXgsnSMJtHDkbncys1AeYa8Xqnram2DP5X62dI8QTFQ8qdPfcA
wgcXXnNZSP3N8X6E1OljyrsqUjb+q/Y4k3IiCN31GNvmNsFmehT7kEc3TdYqmDpjP+9HBR5czJ8I28Fgr7xHmooDPpUICTNC
DEi5tBU4bhknGEihA0M0ppsA4hwTsFrbZZ1OqgnuL2rnpS1oA9sG3m7FX2FsrYbJhhHsN1u5wFGvHRZ8l0v28M1AHNYr3WIX
whVHACMytQ5vIHaHA2E+VyoKVp8VzkmkJUaAErcpoRddGEcpIUUgB9e7MYSbuG8N0N4oIeVV+3ldcCvFmnXU9wx0g+JV3Hwd
UL5syUHg/SB2CVsnoUo6v3LxQXt6nzvf0FsecKut+ZEUBGI9DPabbwt0wpFfNDd16V1t01CuU6kNN6rkWI4+CQK6jUPxHcGW
Tk6mnEQq/uqd1RYXSvVsXCmOJ9LeSwXMX0cdh1v1sCk3E1z4BZfJM3foCBr8fqO7bHEwyetJvADHeLuQU//L1z/oISGVRpSi
mWpeToWSURywAxA5IRJxnSWEg4LLZERBqKiACXkEB2lAl81PrZ1qsmkQAZMjhVNSu5cMRdwSwxxytNe7uhg4+aBYCtHAnfsg
KxOTZje65I9uFZID9RJ3NFWBDjMi9PK7/Mazp0C2U10/SVDTDTJw2wXvYCelQMg6Zf6GtSiz6FsMNwthdVa28WvbC4YBRSwR
+k7qW3XzjDy2Zuf5R/lxQodSRBS7+yI3Q7zsilFzJMV2VL4N+gdr0FPal4Q5hvfVf1lktJnK/SQ9WlorL8acwX4FwdjKLsDx
Qtm0EBx8PLQ+uyL8qnm/gPasiXtHOhJPTx+dDYBTP7MOr/6ZWDZ/0j/juJwCa0UESULtYEvt7mo4az3miuPtXT51HHc4bRNc
+S4VUcGc0er8eC6zjmr8sc/Gg5GQjedZgM+KrLbNd+p5v5wqLGJE76iI7KUuAvcdaGKiGXU33+hDtzTll6tS78BE8fqIm8di
HHd6SMexPE1vSwjI3e+4xiijrOWgRca9atzyQ+U7/aOmhN4E3Mk9OwNLMBnwU1Dpfr+ugFWSWAU1f0SxWQjetxG3iB5uKCOd
7acAp2xYthVnzvLtp58/YB2gMJOHSO6lCNitZcFl65fSx2P03WR0YqWjJ3n/vP3RjYnikYE2JPE1JTlD9W6loXeTUGCYJF0H
qJoaml5XElvQqOHrPxdoVjeP+meaRW7COW74vVaXY0zBGKvHqSE7cjoREbOzoGLmXviBAQ8oG5Wk8nZl5SlTlcbF+8WKMXde
aOhtxk1DGRc7rU9zNke/c5n9lr3E6wKU1/0RP5WSWnA+o2CMuoOeLsmCP8lWa4PxMe4xZg1RXPFGvhKUG81V+EkHBJvJbd6E
BLA3EGMFjbM9nAkCOWhI8no103bMk5C64nqT8zNPImfxcmEIlBBPY1sh5uscPHLoyCklVzbQlEO7/bqb8CznohC/b7RcZfpH
+fGkC5M6Dxz+xu7t+QL3TVhIpHpMQ5W1yncIGBSBcFFOxA7FDV+yauwFoSsVBjbCYuTkyCKAffasMEF7M0fSsTFhK/N8Xgl8
Kksbg5ePiWp4dNsJdvSuOMd6lKccBBYlwtuzZFQ5ETZiXIWAfahmMuYFxSrX7uTcJws9TyqMyt8wYKtPmR2baQrNSv5bGpQ1
Ti7ddHWkXNy3tSuamn4vlDM8/+FxIR12ZBSpot6rvVIQ1LUuZZ+JJ8lilFwneGNXWwCMHYIhSmGKmlOsDUbQTdlAVX7al0o7
LiJhald8u+kK6XrA9HH5XjLPB4yQmbyo5n4u/EvibnRaMf/418pUrUIDCLIxO2uNK7F6iQy3TwnIk44+/YuwYwlsKg9QSYx2
aUv8x++Nqjy6PIQziZ9W8NAPf1AyCDxlhb070RTDXupmYXg7ABhf7kzsCGj3iS0+prOJH+eTucepGIWLmrZtVYsYsfzp444v
dIzTul4XJsNTELs9XuVfGApVHxm8KUnQld8suzmnIhttKd6NgFFFtZrHNlWD8c2DiSiSfaWR8UC815kRqn9nB/Bfc7GhLXee
hEuyJimJfI3Z0AxqFqjLU0UW4Qj6MtuQKMMsb6kyabOUTy5sH+gsr+OwIc9aLmj568JWAk7VpKecxifLhlo8andZisXUnI4l
OMzkXnbXED83P2KtCiBBDjZjCxeaucYu8at4xdZ4DmD9h6L8q0+hHVk4z+ZxEtwVfRyPgNv1yOqh5vh2z8NdJPyF68rNsEkX
KeMug3nC4yERokGBcAJqgHr1PHkL6AKREMseboyqJO6iXp0x963UFjWu63D5IUc2zAUqaoZm7ZR9eoH0nHI9EO/tJXVO0VdN
q9+yorIkEM99kcxhP+7joahLtllswFvwMsMAoQ8DVfxIe3PHS5a2LUsKdu4RB+CkR5bKVTv9yrwSu6utBJpeoUbo+gJzKwgB
kyyQ7TQTkIdL70yi7Xr7DYaROH7m2b8bNu1Z8YaDVj6muPMhx6Q1bJyF/nGqw4UgM11hZQXrqr3NBsHwjO1DNgN+H/O0T7e6
iP4sBszvBv7BvWY5VufxWZldzDwNVtam744c2U1l+OzSRQ0ZbnFuzVMImphDjHHhajgvXgjqSF3K8op11XHR9L30ngMsMgOR
Jk9URO4rb5sEwi9Kx1YSDQ9vbLR3ANbn6ApF9fYCeCab0aWezqdNmx0rTooig0zkyYr1s6GZf/ZdLcyWOJ32FkjGxbXXJO6a
2WBZnDd6+A/Zemr2whjcRMtzAy8kCIn6P1TPV/N7CtQO1HZHtys4WOV1gKUAwdUGqZXDD2xLBlqWvH2JKZNSO+DLoGES2DN4
nih+FFsZgule1U0iOLv2ucqV1NpXCwPqp+b6wRkz+xw3hwl4u8ZDGjqa16fe5h5yhSpPPinLqnCrGIUH03ROZyNIkruF4uy9
tx7Oat7H9uT/r2935pSUuOd52MccUBoxTryLm7aeNUOcbjaCBv7kdtiYL1KR6GiwzuKfUBIKnrpb7dJq5AagCfVvFQoq9vkP
usb++ffO+8Te7cwpUFpIgDyiaDzrVUo3+tPhhQ9mMz39RVjcXIwtLBMo1ZgOgs2WGb989n6eLaXXKnEL3fxKRHZbb488zxps
y5MKNiqObzappOKb/IpOX7Vr2yqtu4c1M6YWEDyl8BhkZnxs+aFQVgLH7pGZiF8gKzPImrLPMVAuxR/4YzlKIh88nT2ne6/4
w9j4wyh/vvWhkmb7dX/IfqpY4Twi/L1K/Tx9d7ehPZwVWKnMj/NusMCQaoHnjcCT5mC1Rpp8McYYuNS24mTsF5Lta4S8VO73
GomumLjsSZXEsju6eGt5OUQuaCAR+1kgvl9iEL6KtILiU3vssGlxCOGQ88erIjzdTb8QSaKh3Fzzkd027kumXy9emILEuawt
O7xOJ1+UsqT43n5sTvL0NUkgLzBUXYFHYBMmQUdUxOv6FTdFVn+V6fkIIChMoN06Pk5aYm1v0VJ7l6H7EkZMiZu2wdEAAAAA
AAAAAAAAAAAIEBYeIysAAASQWuOwGJMwig84LbCxLj/xH4MvnNVa8+ijPuoOQ6Ii+KdXUGcfOZXa+vPtbgt8tbBQ30wBFXYI
lnw/KNk4S5pw3rXm4hoDeuTWBRvBK+m4eS/EJPY385PxTmisYMzRNozAF9ikMQqrSuOvbfgEugU+C9yBwcGGkVIioepgvi0A
1+gJFXEiV0sRtihW+M68YXxFvU70oADUgVSrfbrb9tDXQ+uJy7hzbaTcinQAESFSbK5+l/xJGkhv6tJ4FAR7L/IPo23YRwBD
ZD79teP+xG3yWBkQofbJvzvYSLboYNbZoA33jcZDVl6EnZvL8rUfqxzPrCw+tCWnRgSUdJ/YNiYYQmFA04FUVOCVJ4UA4Atm
ge75BrqzCuHQREXGiC9lH1wxYNuZSUzwzsrVsHQ5KV/mrZcY+xCpY8+JO4CEXZqd0A/joBv0wVo3xfauYSDLNeF4MfXZ3Z5u
v75WN54QOCr9SJCHA3bRN/p8VJ+dIS2C4rs8i/xcA+zZ2YxmgR9R31hgN644/00iToIvbrrxIkCte73JiqyeBFVffzjddDOL
4p8PMEzhH8sqnuQeSb+qdBJztiCxvxgpgxDtkUJhM0waZzErSduaD2S6pIwIo3Yi/waHCQ+nWkKF31FAAKYJrOWGhB9wsA1D
Mod5zU0y2+jkWAQCmWEMRzHjsJaJ+bJphAANfE54UCe0FpsmenIuW0lmZTMCQpBCzigo3tn+HRgzVoPqqfSr6suWfy7MPaBz
fUzOlvQPxIrrFM/ddax0zP/NRnK/71oGNFSBeB/Vwz75e1z8hnc8xcJTlT5gOXuJT5SO1RwOkCqUSpWmfUxKL4quMo22Wy3H
XaRnl/STwbcLoCobEAKQgJeXnkzgV6xDHo6kD9C6Qsub69ukZgxusOw8RU3qQTMcNGi6UvSsTby9N3mNbkWShhCuAU+gn5SV
QOKstRxgBxHGF+ociAOWZsYlNNxf0BuY12YkfzcauApz9KkG3PHH8VcFZVnAra0sEJitPXSXivBD9amlA7ZvcAcrbemBWlK1
aVetypvLJ/wRV2mS3dqYxGowF43dRxvf1Rr/58SoXCkjVq+w6MT03Sqns4iMC47oV89vQviy4gOEEs7bm/ktQES+aTc3ytYI
0BWlEC7r/+zMx+UPxE10RvhwwBowhb5sSlYNA4WeVo0WyHu2QhdaQ5yp27UjQsgNS9Rwv0D7UWkY/RjKinFYkwUFWL1tcZ7w
P3aTsgatSGr0awWu1JvwLlV7I414xsnhZCX1D3mUKsM/EZ44zKVoUKBnKRNQ3iJ9EhdmbvyQMm5eZuIaGXyLDJcMSojwVicU
GcSx4kjolbFJPEMmdfEWJLKb4kI73Ji7IaO/XHaO3KMdfNtNH7NUjuOPbO4+mmdOAXPBehFIXjiv7xk1gm6JVhHq91hy4jVq
NCKaa1ZEZ6diD8EXiAQ6nvXdAX5uGKY4EY3xxNmH5bqvKyvIPC/OP3FLaCUnVl9zbaFGYKCGpqTEKZ3gUKqHqrsi/zNuWgMJ
sUi6AX04Hp8vSekXS68NKW6FV+2VF8BvO9NHwxPOOt44Tw==
"""
