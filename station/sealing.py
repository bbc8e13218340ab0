"""The sealed record: encrypted to central, signed by the station, checkable in transit.

A finished enrollment record leaves the station as one blob. Its plaintext is encrypted with
HPKE (RFC 9180, ML-KEM-768 + X25519, HKDF-SHA256, AES-256-GCM) to central's public key, so
only central can read it and a quantum-capable recorder of today's traffic cannot later.
A small canonical JSON header says what the blob is (station, record, content type, sizes,
SHA-256 of plaintext and ciphertext, which keys). Both an Ed25519 and an ML-DSA-65 signature
cover that header, and a blob is genuine only if BOTH verify: either algorithm alone being
broken does not let a forger through. Because the header carries the ciphertext hash, a
collector gateway without central's private key can still check who sealed a blob and that
its ciphertext arrived intact (``verify``); central then decrypts and checks the plaintext
against the signed hash (``open_sealed``). The byte layout is in docs/sealed-record.md.

Everything here is pure (bytes in, bytes out) and parsing never trusts its input: any
malformed blob raises ``SealError``, never another exception. Error codes:

  bad_format     the blob or a key bundle does not follow the format (truncated, garbage)
  bad_input      seal() was given an invalid record id, content type or oversize plaintext
  bad_key        a PEM key bundle does not parse or holds the wrong keys
  wrong_station  the blob names another station or another station key than the one given
  bad_signature  the Ed25519 or the ML-DSA-65 signature (or both) does not verify
  hash_mismatch  the ciphertext or decrypted plaintext does not match the signed header
  decrypt_failed sealed to another central key, or HPKE refused the ciphertext
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from station.errors import StationError

MAGIC = b"STNSEAL\n"
VERSION = 1
FORMAT_NAME = "station.sealed-record"
KEM_NAME, KDF_NAME, AEAD_NAME = "MLKEM768-X25519", "HKDF-SHA256", "AES-256-GCM"
SIGNATURES_NAME = "Ed25519+ML-DSA-65"
# Domain separation: these bytes never start any other message the station keys sign.
SIGN_DOMAIN = b"station.sealed-record/v1/header-signature\x00"
INFO_DOMAIN = b"station.sealed-record/v1/hpke-info\x00"

SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
ENC_BYTES = hpke.KEM.MLKEM768_X25519.enc_length()  # 1120: ML-KEM-768 ct (1088) + X25519 (32)
TAG_BYTES = 16
ED25519_SIG_BYTES = 64
MLDSA65_SIG_BYTES = 3309
# Bounds that make parsing cheap and safe: a header is ~700 bytes; records are ~1 MB and
# the transport (NATS) caps messages at a few MB.
MAX_HEADER_BYTES = 4096
MAX_PLAINTEXT_BYTES = 16 * 1024 * 1024

STATION_ID_RE = re.compile(r"[A-Za-z0-9-]{1,32}")
RECORD_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
_PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)
_PEM_KEY_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)


class SealError(StationError):
    """A sealed record (or a key for one) was refused; ``code`` says which check failed."""

    code = "bad_seal"


def valid_station_id(station_id: object) -> bool:
    return isinstance(station_id, str) and STATION_ID_RE.fullmatch(station_id) is not None


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _spki_pem(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pkcs8_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _key_id(*public_keys) -> str:
    """SHA-256 over the concatenated DER SubjectPublicKeyInfo of each key, in a fixed order.

    DER is self-delimiting, so the concatenation is unambiguous, and any tool that reads
    the PEM bundle can recompute it (e.g. ``openssl pkey -pubin -outform DER`` per block,
    OpenSSL >= 3.5 for the ML-DSA and ML-KEM keys, piped into ``sha256sum``).
    """
    return hashlib.sha256(b"".join(_spki(k) for k in public_keys)).hexdigest()


def _split_bundle(pem: bytes | str, what: str, names: tuple[str, ...] = ()) -> tuple[dict[str, str], list[bytes]]:
    """A text bundle's ``Name: value`` lines (only ``names`` allowed) and its PEM blocks."""
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    try:
        data.decode("ascii")
    except UnicodeDecodeError:
        raise SealError(f"{what}: not an ASCII PEM bundle", code="bad_key") from None
    blocks = [m.group(0) for m in _PEM_BLOCK_RE.finditer(data)]
    rest = _PEM_BLOCK_RE.sub(b"", data).decode("ascii")
    fields = {}
    for line in rest.splitlines():
        if line.strip():
            name, sep, value = line.partition(":")
            if not sep or name.strip() not in names or name.strip() in fields:
                raise SealError(f"{what}: unexpected line {line[:60]!r}; expected only "
                                f"{', '.join(names) or 'PEM blocks'}", code="bad_key")
            fields[name.strip()] = value.strip()
    return fields, blocks


def _load_keys(blocks: list[bytes], kinds: tuple[type, ...], private: bool, what: str) -> list:
    """Exactly one key of each kind, in ``kinds`` order, or SealError naming what is wrong."""
    loaded = []
    for block in blocks:
        try:
            if private:
                loaded.append(serialization.load_pem_private_key(block, password=None))
            else:
                loaded.append(serialization.load_pem_public_key(block))
        except _PEM_KEY_ERRORS as exc:
            hint = " (this is a private key; give the public key bundle)" if b"PRIVATE" in block and not private else ""
            raise SealError(f"{what}: a PEM block does not parse{hint}: {exc}", code="bad_key") from None
    found = []
    for kind in kinds:
        matches = [k for k in loaded if isinstance(k, kind)]
        if len(matches) != 1:
            raise SealError(f"{what}: expected one {kind.__name__}, found {len(matches)}", code="bad_key")
        found.append(matches[0])
    if len(loaded) != len(kinds):
        raise SealError(f"{what}: expected {len(kinds)} PEM blocks, found {len(loaded)}", code="bad_key")
    return found


_CURVE_KEY_RE = re.compile(r"[0-9a-zA-Z.:+=^!/*?&<>()\[\]{}@%$#-]{40}")


def _check_station_id(fields: dict[str, str], what: str) -> str:
    station_id = fields.get("Station-Id")
    if not valid_station_id(station_id):
        raise SealError(f"{what}: missing or invalid 'Station-Id:' line", code="bad_key")
    return station_id


@dataclass(frozen=True)
class StationPublicKeys:
    """What central and the gateway need to recognise one station: its two signing keys
    and, for the collector's allowlist, its uplink's CURVE public key (Z85, not signed
    over: it names the connection, the signatures name the records)."""

    station_id: str
    ed25519: ed25519.Ed25519PublicKey = field(compare=False, repr=False)
    mldsa65: mldsa.MLDSA65PublicKey = field(compare=False, repr=False)
    curve_key: str = field(default="", compare=False)
    key_id: str = field(init=False, compare=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", _key_id(self.ed25519, self.mldsa65))

    def verify(self, message: bytes, ed25519_sig: bytes, mldsa65_sig: bytes) -> None:
        """Both signatures over ``message`` must verify; says which one failed."""
        failed = []
        try:
            self.ed25519.verify(ed25519_sig, message)
        except InvalidSignature:
            failed.append("Ed25519")
        try:
            self.mldsa65.verify(mldsa65_sig, message)
        except InvalidSignature:
            failed.append("ML-DSA-65")
        if failed:
            raise SealError(f"{' and '.join(failed)} signature of station {self.station_id} "
                            f"(key {self.key_id[:16]}) does not verify", code="bad_signature")

    def to_pem(self) -> str:
        curve = f"Curve-Key: {self.curve_key}\n" if self.curve_key else ""
        return (f"Station-Id: {self.station_id}\nKey-Id: {self.key_id}\n{curve}"
                + (_spki_pem(self.ed25519) + _spki_pem(self.mldsa65)).decode("ascii"))

    @classmethod
    def from_pem(cls, pem: bytes | str) -> "StationPublicKeys":
        fields, blocks = _split_bundle(pem, "station public key bundle", ("Station-Id", "Key-Id", "Curve-Key"))
        station_id = _check_station_id(fields, "station public key bundle")
        ed, ml = _load_keys(blocks, (ed25519.Ed25519PublicKey, mldsa.MLDSA65PublicKey), False,
                            "station public key bundle")
        curve = fields.get("Curve-Key", "")
        if curve and not _CURVE_KEY_RE.fullmatch(curve):
            raise SealError("station public key bundle: 'Curve-Key:' is not a 40-character Z85 key", code="bad_key")
        keys = cls(station_id, ed, ml, curve)
        if "Key-Id" in fields and fields["Key-Id"] != keys.key_id:
            raise SealError(f"station public key bundle: Key-Id {fields['Key-Id']} does not match "
                            f"its keys ({keys.key_id})", code="bad_key")
        return keys


class StationSigner:
    """A station's two signing keys and the id it signs as; signs exactly the bytes given."""

    def __init__(self, station_id: str, ed25519_key: ed25519.Ed25519PrivateKey,
                 mldsa65_key: mldsa.MLDSA65PrivateKey):
        if not valid_station_id(station_id):
            raise SealError(f"invalid station id {station_id!r}: use 1-32 letters, digits or '-'",
                            code="bad_input")
        self.station_id = station_id
        self._ed25519 = ed25519_key
        self._mldsa65 = mldsa65_key
        self._public = StationPublicKeys(station_id, ed25519_key.public_key(), mldsa65_key.public_key())

    @classmethod
    def generate(cls, station_id: str) -> "StationSigner":
        return cls(station_id, ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate())

    def public(self) -> StationPublicKeys:
        return self._public

    def sign(self, message: bytes) -> tuple[bytes, bytes]:
        """(Ed25519, ML-DSA-65) signatures; callers put a domain prefix in ``message``."""
        return self._ed25519.sign(message), self._mldsa65.sign(message)

    def to_pem(self) -> bytes:
        """The private bundle: ``Station-Id:`` line and both PKCS8 blocks, one atomic file."""
        return (f"Station-Id: {self.station_id}\n".encode("ascii")
                + _pkcs8_pem(self._ed25519) + _pkcs8_pem(self._mldsa65))

    @classmethod
    def from_pem(cls, pem: bytes | str) -> "StationSigner":
        fields, blocks = _split_bundle(pem, "station private key bundle", ("Station-Id",))
        station_id = _check_station_id(fields, "station private key bundle")
        ed, ml = _load_keys(blocks, (ed25519.Ed25519PrivateKey, mldsa.MLDSA65PrivateKey), True,
                            "station private key bundle")
        return cls(station_id, ed, ml)


@dataclass(frozen=True)
class CentralPublicKey:
    """Central's HPKE recipient key: ML-KEM-768 and X25519, combined by the HPKE KEM."""

    mlkem768: mlkem.MLKEM768PublicKey = field(compare=False, repr=False)
    x25519: x25519.X25519PublicKey = field(compare=False, repr=False)
    key_id: str = field(init=False, compare=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", _key_id(self.mlkem768, self.x25519))

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        return hpke.MLKEM768X25519PublicKey(self.mlkem768, self.x25519)

    def to_pem(self) -> bytes:
        return _spki_pem(self.mlkem768) + _spki_pem(self.x25519)

    @classmethod
    def from_pem(cls, pem: bytes | str) -> "CentralPublicKey":
        _, blocks = _split_bundle(pem, "central public key")
        return cls(*_load_keys(blocks, (mlkem.MLKEM768PublicKey, x25519.X25519PublicKey), False,
                               "central public key"))


class CentralPrivateKey:
    """Central's decryption key. Outside tests it lives in central's HSM, never on a station."""

    def __init__(self, mlkem768: mlkem.MLKEM768PrivateKey, x25519_key: x25519.X25519PrivateKey):
        self._mlkem768 = mlkem768
        self._x25519 = x25519_key
        self._public = CentralPublicKey(mlkem768.public_key(), x25519_key.public_key())
        self.key_id = self._public.key_id

    @classmethod
    def generate(cls) -> "CentralPrivateKey":
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    def public(self) -> CentralPublicKey:
        return self._public

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(self._mlkem768, self._x25519)

    def to_pem(self) -> bytes:
        return _pkcs8_pem(self._mlkem768) + _pkcs8_pem(self._x25519)

    @classmethod
    def from_pem(cls, pem: bytes | str) -> "CentralPrivateKey":
        _, blocks = _split_bundle(pem, "central private key")
        return cls(*_load_keys(blocks, (mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey), True,
                               "central private key"))


@dataclass(frozen=True)
class SealedHeader:
    """The signed, cleartext description of a sealed record; fields are the JSON keys."""

    version: int
    station_id: str
    record_id: str
    content_type: str
    created_ns: int
    plaintext_sha256: str
    plaintext_bytes: int
    ciphertext_sha256: str
    ciphertext_bytes: int
    central_key_id: str
    station_key_id: str
    format: str = FORMAT_NAME
    kem: str = KEM_NAME
    kdf: str = KDF_NAME
    aead: str = AEAD_NAME
    signatures: str = SIGNATURES_NAME

    def to_json(self) -> bytes:
        """Canonical form: sorted keys, no whitespace, ASCII. Parsing insists on this form."""
        return _canonical_json(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> "SealedHeader":
        try:
            value = json.loads(raw.decode("ascii"))
        except (ValueError, RecursionError) as exc:
            raise _format_error(f"header is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _format_error("header is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(value) != names:
            raise _format_error(f"header keys differ: missing {sorted(names - set(value))}, "
                                f"unknown {sorted(set(value) - names)[:5]}")
        for name, check in _HEADER_CHECKS.items():
            if not check(value[name]):
                raise _format_error(f"header field {name} has an invalid value {str(value[name])[:40]!r}")
        if _canonical_json(value) != bytes(raw):  # the checked fields, as to_json would write them
            raise _format_error("header is not in canonical form")
        header = cls(**value)
        if header.ciphertext_bytes != header.plaintext_bytes + ENC_BYTES + TAG_BYTES:
            raise _format_error("header ciphertext_bytes does not follow from plaintext_bytes")
        return header


def _canonical_json(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _int_in(low: int, high: int):
    return lambda v: type(v) is int and low <= v <= high


def _const(expected):
    return lambda v: type(v) is type(expected) and v == expected


def _matches(pattern: re.Pattern):
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


_HEADER_CHECKS = {
    "format": _const(FORMAT_NAME), "version": _const(VERSION),
    "kem": _const(KEM_NAME), "kdf": _const(KDF_NAME), "aead": _const(AEAD_NAME),
    "signatures": _const(SIGNATURES_NAME),
    "station_id": _matches(STATION_ID_RE), "record_id": _matches(RECORD_ID_RE),
    "content_type": _matches(CONTENT_TYPE_RE), "created_ns": _int_in(0, 2**63 - 1),
    "plaintext_sha256": _matches(HEX64_RE), "plaintext_bytes": _int_in(0, MAX_PLAINTEXT_BYTES),
    "ciphertext_sha256": _matches(HEX64_RE),
    "ciphertext_bytes": _int_in(ENC_BYTES + TAG_BYTES, MAX_PLAINTEXT_BYTES + ENC_BYTES + TAG_BYTES),
    "central_key_id": _matches(HEX64_RE), "station_key_id": _matches(HEX64_RE),
}


def _format_error(reason: str) -> SealError:
    return SealError(f"not a valid sealed record: {reason}", code="bad_format")


def hpke_info(version: int, station_id: str, record_id: str, content_type: str) -> bytes:
    """HPKE ``info``: binds the ciphertext to its station, record and content type.

    Re-signing a captured ciphertext under another station or record id therefore makes it
    undecryptable. Each field is a 2-byte big-endian length then ASCII bytes.
    """
    parts = [station_id.encode("ascii"), record_id.encode("ascii"), content_type.encode("ascii")]
    return INFO_DOMAIN + struct.pack(">H", version) + b"".join(struct.pack(">H", len(p)) + p for p in parts)


def seal(plaintext: bytes, *, record_id: str, content_type: str, signer: StationSigner,
         central: CentralPublicKey, created_ns: int | None = None) -> bytes:
    """Encrypt ``plaintext`` to central and sign its header with both station keys."""
    if not RECORD_ID_RE.fullmatch(record_id):
        raise SealError(f"invalid record id {record_id!r}: use 1-64 letters, digits, '-' or '_'",
                        code="bad_input")
    if not CONTENT_TYPE_RE.fullmatch(content_type):
        raise SealError(f"invalid content type {content_type!r}: expected type/subtype", code="bad_input")
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise SealError(f"record {record_id} is {len(plaintext)} bytes; a sealed record holds at most "
                        f"{MAX_PLAINTEXT_BYTES}", code="bad_input")
    info = hpke_info(VERSION, signer.station_id, record_id, content_type)
    ciphertext = SUITE.encrypt(plaintext, central.hpke_key, info=info)
    header = SealedHeader(
        version=VERSION, station_id=signer.station_id, record_id=record_id, content_type=content_type,
        created_ns=time.time_ns() if created_ns is None else created_ns,
        plaintext_sha256=hashlib.sha256(plaintext).hexdigest(), plaintext_bytes=len(plaintext),
        ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(), ciphertext_bytes=len(ciphertext),
        central_key_id=central.key_id, station_key_id=signer.public().key_id,
    ).to_json()
    ed_sig, ml_sig = signer.sign(SIGN_DOMAIN + header)
    return pack(header, ed_sig, ml_sig, ciphertext)


def pack(header_json: bytes, ed25519_sig: bytes, mldsa65_sig: bytes, ciphertext: bytes) -> bytes:
    """The v1 byte layout: magic, version, then four u32-length-prefixed parts."""
    parts = (header_json, ed25519_sig, mldsa65_sig, ciphertext)
    return MAGIC + struct.pack(">H", VERSION) + b"".join(struct.pack(">I", len(p)) + p for p in parts)


@dataclass(frozen=True)
class _Parts:
    header: SealedHeader
    header_json: bytes
    ed25519_sig: bytes
    mldsa65_sig: bytes
    ciphertext: memoryview


def _unpack(blob: bytes) -> _Parts:
    """Strict parse: exact magic and version, bounded lengths, no trailing bytes."""
    try:
        view = memoryview(blob).cast("B")
    except TypeError:
        raise _format_error(f"expected bytes, got {type(blob).__name__}") from None
    if len(view) < len(MAGIC) + 2 or view[:len(MAGIC)] != MAGIC:
        raise _format_error("missing magic bytes")
    (version,) = struct.unpack_from(">H", view, len(MAGIC))
    if version != VERSION:
        raise _format_error(f"format version {version}, this station reads version {VERSION}")
    offset = len(MAGIC) + 2
    parts = []
    limits = [("header", 2, MAX_HEADER_BYTES), ("Ed25519 signature", ED25519_SIG_BYTES, ED25519_SIG_BYTES),
              ("ML-DSA-65 signature", MLDSA65_SIG_BYTES, MLDSA65_SIG_BYTES),
              ("ciphertext", ENC_BYTES + TAG_BYTES, MAX_PLAINTEXT_BYTES + ENC_BYTES + TAG_BYTES)]
    for name, low, high in limits:
        if len(view) - offset < 4:
            raise _format_error(f"truncated before the {name} length")
        (length,) = struct.unpack_from(">I", view, offset)
        offset += 4
        if not low <= length <= high:
            raise _format_error(f"{name} length {length} outside {low}..{high}")
        if len(view) - offset < length:
            raise _format_error(f"truncated {name}: {len(view) - offset} of {length} bytes")
        parts.append(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise _format_error(f"{len(view) - offset} trailing bytes")
    header_json, ed_sig, ml_sig, ciphertext = bytes(parts[0]), *parts[1:]
    header = SealedHeader.from_json(header_json)
    if header.ciphertext_bytes != len(ciphertext):
        raise _format_error(f"header says {header.ciphertext_bytes} ciphertext bytes, blob has {len(ciphertext)}")
    return _Parts(header, header_json, bytes(ed_sig), bytes(ml_sig), ciphertext)


def read_header(blob: bytes) -> SealedHeader:
    """The header, parsed strictly but NOT authenticated: for routing and logs only."""
    return _unpack(blob).header


def _verify_parts(parts: _Parts, station: StationPublicKeys) -> None:
    header = parts.header
    if header.station_id != station.station_id:
        raise SealError(f"record {header.record_id} names station {header.station_id}, "
                        f"checked against the keys of {station.station_id}", code="wrong_station")
    if header.station_key_id != station.key_id:
        raise SealError(f"record {header.record_id} was signed with station key {header.station_key_id[:16]}, "
                        f"station {station.station_id} has key {station.key_id[:16]} (rotated keys?)",
                        code="wrong_station")
    station.verify(SIGN_DOMAIN + parts.header_json, parts.ed25519_sig, parts.mldsa65_sig)
    if hashlib.sha256(parts.ciphertext).hexdigest() != header.ciphertext_sha256:
        raise SealError(f"record {header.record_id}: ciphertext does not match its signed hash",
                        code="hash_mismatch")


def verify(blob: bytes, station: StationPublicKeys) -> SealedHeader:
    """Who sealed it and that the ciphertext is intact, without central's private key.

    Order: layout and header, station id and key id, both signatures, ciphertext hash.
    """
    parts = _unpack(blob)
    _verify_parts(parts, station)
    return parts.header


def open_sealed(blob: bytes, central: CentralPrivateKey, station: StationPublicKeys) -> tuple[SealedHeader, bytes]:
    """Verify as the gateway does, then decrypt and check the plaintext against the header."""
    parts = _unpack(blob)
    _verify_parts(parts, station)
    header = parts.header
    if header.central_key_id != central.key_id:
        raise SealError(f"record {header.record_id} is sealed to central key {header.central_key_id[:16]}, "
                        f"not {central.key_id[:16]}", code="decrypt_failed")
    info = hpke_info(header.version, header.station_id, header.record_id, header.content_type)
    try:
        plaintext = SUITE.decrypt(parts.ciphertext, central.hpke_key, info=info)
    except InvalidTag:
        raise SealError(f"record {header.record_id}: HPKE decryption failed", code="decrypt_failed") from None
    if len(plaintext) != header.plaintext_bytes or hashlib.sha256(plaintext).hexdigest() != header.plaintext_sha256:
        raise SealError(f"record {header.record_id}: plaintext does not match its signed hash",
                        code="hash_mismatch")
    return header, plaintext
