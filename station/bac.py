"""Basic Access Control and 3DES secure messaging, ICAO Doc 9303 Part 11 §4.3 and §9.8.

Pure: keys and APDUs in, keys and APDUs out; the randomness BAC needs is drawn here only
when the caller does not give it (tests and golden transcripts give it). Both ends use this
module: the station (the terminal, "IFD") with ``TerminalAuthentication`` and
``SecureChannel``; a card emulator (the chip, "IC") with ``ChipAuthentication`` and
``ChipChannel``. The worked example of Doc 9303-11 Appendix D pins every byte
(``tests/chip/test_bac.py``).

BAC, after GET CHALLENGE gave RND.IC (8 bytes)::

    K_seed  = SHA-1(MRZ information)[:16]     document number+check, birth+check, expiry+check
    K_enc   = KDF(K_seed, 1), K_mac = KDF(K_seed, 2)
    KDF(K, c) = SHA-1(K || c as 4 bytes)[:16], DES parity adjusted; 3DES keys are K1 || K2
    terminal: S = RND.IFD || RND.IC || K.IFD, E_IFD = 3DES-CBC(K_enc, S), M_IFD = MAC(K_mac, E_IFD)
              EXTERNAL AUTHENTICATE with E_IFD || M_IFD
    chip:     checks M_IFD and RND.IC, answers R = RND.IC || RND.IFD || K.IC as E_IC || M_IC
    both:     KS_enc = KDF(K.IFD xor K.IC, 1), KS_mac = KDF(K.IFD xor K.IC, 2),
              SSC = RND.IC[4:] || RND.IFD[4:]

3DES-CBC has a zero IV; MAC is ISO/IEC 9797-1 MAC algorithm 3 (retail MAC: single-DES CBC
with K1, 3DES on the last block) over the message padded by method 2 (``80 00 ..``).

Secure messaging, with the SSC incremented before each command and before each response::

    command  CLA|0C INS P1 P2 Lc' [DO'87' 01 || enc(pad(data))] [DO'97' Le] DO'8E' MAC 00
             (DO'85' enc(pad(data)), without the 01, for an odd INS)
             MAC over SSC || pad(CLA|0C INS P1 P2) || DO'87' || DO'97'
    response [DO'87' 01 || enc(pad(data))] DO'99' SW DO'8E' MAC SW
             MAC over SSC || DO'87' || DO'99'

A protected APDU that does not verify raises ``SecureMessagingError`` (a ``ProtocolError``)
and ends the channel: both ends drop the session keys, as Doc 9303-11 asks, and BAC must be
run again. Its ``status`` is the status word a chip answers, without secure messaging:
6987 for missing data objects, 6988 for incorrect ones, 6300 for a failed authentication.
"""
from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import NoReturn

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from station.apdu import (
    CHALLENGE_LENGTH,
    MUTUAL_AUTHENTICATE_LENGTH,
    Command,
    Response,
    Status,
    data_object,
    data_objects,
    describe,
    external_authenticate,
    shown,
)
from station.errors import BadRequest, ProtocolError
from station.mrz import FILLER, check_digit

ENC_COUNTER = 1  # KDF counter for the encryption key
MAC_COUNTER = 2  # KDF counter for the MAC key
KEY_LENGTH = 16  # two-key 3DES
BLOCK = 8
MAC_LENGTH = 8
SSC_MODULUS = 1 << 64

TAG_PADDED_CRYPTOGRAM = 0x87  # padding-content indicator byte, then the cryptogram
TAG_CRYPTOGRAM = 0x85  # cryptogram without indicator, for an odd INS
TAG_LE = 0x97
TAG_STATUS = 0x99
TAG_MAC = 0x8E
PADDING_INDICATOR = 0x01  # ISO/IEC 9797-1 padding method 2
SM_CLA_BITS = 0x0C  # secure messaging, command header authenticated

_DOCUMENT_NUMBER = re.compile(r"[0-9A-Z<]+")
_MRZ_DATE = re.compile(r"[0-9<]{6}")


class SecureMessagingError(ProtocolError):
    """A protected APDU or a BAC cryptogram did not verify; the channel has ended.

    ``status`` is the status word a chip answers to it, without secure messaging.
    """

    def __init__(self, message: str, *, status: int = Status.SM_DATA_OBJECTS_INCORRECT):
        super().__init__(message)
        self.status = int(status)


class AuthenticationFailed(SecureMessagingError):
    """BAC's mutual authentication failed: the other side does not hold the same MRZ keys.

    Retrying with the same keys gives the same answer, hence not retryable.
    """

    retryable = False

    def __init__(self, message: str, *, status: int = Status.AUTHENTICATION_FAILED):
        super().__init__(message, status=status)


# --- the primitives, from `cryptography` ------------------------------------------------


def _sha1(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA1())
    digest.update(data)
    return digest.finalize()


def _check_key(key: bytes) -> bytes:
    if len(key) != KEY_LENGTH:
        raise BadRequest(f"3DES key is {len(key)} bytes; BAC keys are {KEY_LENGTH} (K1 || K2)")
    return bytes(key)


def _tdes(key: bytes) -> TripleDES:
    """Two-key 3DES (K1, K2, K1), spelt out as 24 bytes as `cryptography` asks."""
    key = _check_key(key)
    return TripleDES(key + key[:BLOCK])


def pad(data: bytes) -> bytes:
    """ISO/IEC 9797-1 padding method 2: ``80``, then ``00`` up to a multiple of 8 bytes."""
    data = bytes(data) + b"\x80"
    return data + bytes(-len(data) % BLOCK)


def unpad(data: bytes) -> bytes:
    """The data before method 2 padding; ``SecureMessagingError`` (6988) if there is none."""
    stripped = bytes(data).rstrip(b"\x00")
    if not stripped.endswith(b"\x80") or len(data) - len(stripped) >= BLOCK:
        raise SecureMessagingError(f"decrypted data {shown(data)} does not end in ISO/IEC "
                                   f"9797-1 method 2 padding (80 00 ..)")
    return stripped[:-1]


def encrypt(key: bytes, data: bytes) -> bytes:
    """3DES-CBC with a zero IV over ``data``, a multiple of 8 bytes (pad it first)."""
    encryptor = Cipher(_tdes(key), modes.CBC(bytes(BLOCK))).encryptor()
    return encryptor.update(bytes(data)) + encryptor.finalize()


def decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) % BLOCK:
        raise SecureMessagingError(f"cryptogram of {len(data)} bytes is not whole 8-byte blocks")
    decryptor = Cipher(_tdes(key), modes.CBC(bytes(BLOCK))).decryptor()
    return decryptor.update(bytes(data)) + decryptor.finalize()


def retail_mac(key: bytes, message: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 with padding method 2 over ``message`` (padded here)."""
    key = _check_key(key)
    padded = pad(message)
    k1 = key[:BLOCK]
    chain = bytes(BLOCK)
    if len(padded) > BLOCK:
        single_des = Cipher(TripleDES(k1 * 3), modes.CBC(bytes(BLOCK))).encryptor()
        chain = single_des.update(padded[:-BLOCK])[-BLOCK:]
    last = bytes(a ^ b for a, b in zip(padded[-BLOCK:], chain))
    # E_K1(D_K2(E_K1(last))) is the final block's single DES then the output transformation.
    return Cipher(_tdes(key), modes.ECB()).encryptor().update(last)


def adjust_parity(key: bytes) -> bytes:
    """Each byte with odd parity in its low bit, as DES keys are written."""
    return bytes(b & 0xFE | (bin(b & 0xFE).count("1") + 1) % 2 for b in key)


def derive_key(seed: bytes, counter: int) -> bytes:
    """Doc 9303-11 §9.7.1 KDF for 3DES: SHA-1(seed || counter)[:16], parity adjusted."""
    return adjust_parity(_sha1(bytes(seed) + counter.to_bytes(4, "big"))[:KEY_LENGTH])


# --- the document basic access keys -----------------------------------------------------


def mrz_information(document_number: str, birth_date: str, expiry_date: str) -> str:
    """The MRZ characters BAC keys come from: each field as printed, with its check digit.

    ``document_number`` is padded with ``<`` to 9 characters (a longer one is used whole);
    the dates are YYMMDD as the MRZ writes them.
    """
    if not _DOCUMENT_NUMBER.fullmatch(document_number):
        raise BadRequest(f"BAC document number {document_number!r}: allowed: 0-9, A-Z and '<'")
    for label, value in (("birth date", birth_date), ("expiry date", expiry_date)):
        if not _MRZ_DATE.fullmatch(value):
            raise BadRequest(f"BAC {label} {value!r} is not YYMMDD as printed in the MRZ")
    number = document_number.ljust(9, FILLER)
    return (number + check_digit(number) + birth_date + check_digit(birth_date)
            + expiry_date + check_digit(expiry_date))


def mrz_information_from_td1(line1: str, line2: str) -> str:
    """The MRZ information read off the first two lines of a TD1 MRZ."""
    if len(line1) != 30 or len(line2) != 30:
        raise BadRequest("TD1 MRZ lines are 30 characters each")
    if line1[14] == FILLER:
        raise BadRequest("TD1 MRZ with a long document number (check digit in optional data) "
                         "is not supported")
    return line1[5:15] + line2[0:7] + line2[8:15]


@dataclass(frozen=True)
class AccessKeys:
    """K_seed, K_enc and K_mac of one document, from its MRZ."""

    k_seed: bytes = field(repr=False)
    k_enc: bytes = field(repr=False)
    k_mac: bytes = field(repr=False)

    @classmethod
    def from_mrz_information(cls, information: str) -> AccessKeys:
        seed = _sha1(information.encode("ascii"))[:KEY_LENGTH]
        return cls(seed, derive_key(seed, ENC_COUNTER), derive_key(seed, MAC_COUNTER))


def session_keys(k_ifd: bytes, k_ic: bytes) -> tuple[bytes, bytes]:
    """(KS_enc, KS_mac) from the two key halves the sides exchanged."""
    seed = bytes(a ^ b for a, b in zip(k_ifd, k_ic, strict=True))
    return derive_key(seed, ENC_COUNTER), derive_key(seed, MAC_COUNTER)


def initial_ssc(rnd_ic: bytes, rnd_ifd: bytes) -> int:
    """The send sequence counter after BAC: the low halves of both challenges."""
    return int.from_bytes(rnd_ic[4:8] + rnd_ifd[4:8], "big")


def _random(length: int) -> bytes:
    return secrets.token_bytes(length)


def _require(label: str, value: bytes, length: int) -> bytes:
    if len(value) != length:
        raise BadRequest(f"BAC {label} is {len(value)} bytes; it must be {length}")
    return bytes(value)


# --- mutual authentication ---------------------------------------------------------------


@dataclass(frozen=True)
class TerminalAuthentication:
    """The station's half of BAC, from the chip's RND.IC to an open ``SecureChannel``.

    ``rnd_ifd`` and ``k_ifd`` are fresh random values unless given (tests give the
    published ones).
    """

    keys: AccessKeys
    rnd_ic: bytes
    rnd_ifd: bytes = field(default_factory=lambda: _random(CHALLENGE_LENGTH), repr=False)
    k_ifd: bytes = field(default_factory=lambda: _random(KEY_LENGTH), repr=False)

    def __post_init__(self) -> None:
        if len(self.rnd_ic) != CHALLENGE_LENGTH:
            raise ProtocolError(f"GET CHALLENGE answered {len(self.rnd_ic)} bytes "
                                f"({shown(self.rnd_ic)}); RND.IC is {CHALLENGE_LENGTH}")
        _require("RND.IFD", self.rnd_ifd, CHALLENGE_LENGTH)
        _require("K.IFD", self.k_ifd, KEY_LENGTH)

    @property
    def s(self) -> bytes:
        return self.rnd_ifd + self.rnd_ic + self.k_ifd

    @property
    def e_ifd(self) -> bytes:
        return encrypt(self.keys.k_enc, self.s)

    @property
    def m_ifd(self) -> bytes:
        return retail_mac(self.keys.k_mac, self.e_ifd)

    @property
    def command_data(self) -> bytes:
        """E_IFD || M_IFD, the data of EXTERNAL AUTHENTICATE."""
        e_ifd = self.e_ifd
        return e_ifd + retail_mac(self.keys.k_mac, e_ifd)

    def command(self) -> Command:
        return external_authenticate(self.command_data)

    def open_channel(self, response_data: bytes) -> SecureChannel:
        """Check the chip's E_IC || M_IC and open the session it proves it shares."""
        response_data = bytes(response_data)
        if len(response_data) != MUTUAL_AUTHENTICATE_LENGTH:
            raise AuthenticationFailed(f"EXTERNAL AUTHENTICATE answered {len(response_data)} "
                                       f"bytes; BAC expects E_IC || M_IC, "
                                       f"{MUTUAL_AUTHENTICATE_LENGTH}")
        e_ic, m_ic = response_data[:32], response_data[32:]
        if not hmac.compare_digest(retail_mac(self.keys.k_mac, e_ic), m_ic):
            raise AuthenticationFailed("the chip's M_IC does not verify with K_mac: the chip "
                                       "does not hold this document's keys, or the answer was "
                                       "altered")
        r = decrypt(self.keys.k_enc, e_ic)
        if r[:8] != self.rnd_ic or r[8:16] != self.rnd_ifd:
            raise AuthenticationFailed("the chip's answer does not carry this session's RND.IC "
                                       "and RND.IFD: a replayed or misrouted answer")
        ks_enc, ks_mac = session_keys(self.k_ifd, r[16:])
        return SecureChannel(ks_enc, ks_mac, initial_ssc(self.rnd_ic, self.rnd_ifd))


@dataclass(frozen=True)
class ChipAuthentication:
    """The chip's half of BAC, for a card emulator: ``rnd_ic`` is what it answered to GET
    CHALLENGE; ``k_ic`` is fresh unless given."""

    keys: AccessKeys
    rnd_ic: bytes
    k_ic: bytes = field(default_factory=lambda: _random(KEY_LENGTH), repr=False)

    def __post_init__(self) -> None:
        _require("RND.IC", self.rnd_ic, CHALLENGE_LENGTH)
        _require("K.IC", self.k_ic, KEY_LENGTH)

    def answer(self, command_data: bytes) -> tuple[bytes, ChipChannel]:
        """Check the terminal's E_IFD || M_IFD; the chip's E_IC || M_IC and its channel."""
        command_data = bytes(command_data)
        if len(command_data) != MUTUAL_AUTHENTICATE_LENGTH:
            raise AuthenticationFailed(f"EXTERNAL AUTHENTICATE carries {len(command_data)} bytes; "
                                       f"BAC sends {MUTUAL_AUTHENTICATE_LENGTH}",
                                       status=Status.WRONG_LENGTH)
        e_ifd, m_ifd = command_data[:32], command_data[32:]
        if not hmac.compare_digest(retail_mac(self.keys.k_mac, e_ifd), m_ifd):
            raise AuthenticationFailed("the terminal's M_IFD does not verify: its keys come from "
                                       "another MRZ")
        s = decrypt(self.keys.k_enc, e_ifd)
        if s[8:16] != self.rnd_ic:
            raise AuthenticationFailed("the terminal's cryptogram answers another challenge than "
                                       "this chip's RND.IC")
        rnd_ifd, k_ifd = s[:8], s[16:]
        e_ic = encrypt(self.keys.k_enc, self.rnd_ic + rnd_ifd + self.k_ic)
        ks_enc, ks_mac = session_keys(k_ifd, self.k_ic)
        channel = ChipChannel(ks_enc, ks_mac, initial_ssc(self.rnd_ic, rnd_ifd))
        return e_ic + retail_mac(self.keys.k_mac, e_ic), channel


# --- secure messaging ---------------------------------------------------------------------


class _Session:
    """KS_enc, KS_mac and the send sequence counter one end holds."""

    def __init__(self, ks_enc: bytes, ks_mac: bytes, ssc: int):
        self._ks_enc = _check_key(ks_enc)
        self._ks_mac = _check_key(ks_mac)
        if not 0 <= ssc < SSC_MODULUS:
            raise BadRequest(f"SSC {ssc!r} does not fit 8 bytes")
        self._ssc = ssc
        self._ended: str | None = None

    def __repr__(self) -> str:
        state = f"ended: {self._ended}" if self._ended else "open"
        return f"<{type(self).__name__} SSC {self._ssc:016X} {state}>"

    @property
    def ks_enc(self) -> bytes:
        return self._ks_enc

    @property
    def ks_mac(self) -> bytes:
        return self._ks_mac

    @property
    def ssc(self) -> int:
        return self._ssc

    @property
    def ended(self) -> str | None:
        """Why the channel ended (a protected APDU did not verify), or None while open."""
        return self._ended

    def _next_ssc(self) -> bytes:
        if self._ended:
            raise SecureMessagingError(f"secure messaging ended ({self._ended}); run BAC again",
                                       status=Status.SM_DATA_OBJECTS_MISSING)
        self._ssc = (self._ssc + 1) % SSC_MODULUS
        return self._ssc.to_bytes(8, "big")

    def _fail(self, message: str, status: int = Status.SM_DATA_OBJECTS_INCORRECT) -> NoReturn:
        self._ended = message
        raise SecureMessagingError(message, status=status)

    def _mac(self, ssc: bytes, message: bytes) -> bytes:
        return retail_mac(self._ks_mac, ssc + message)

    def _check_mac(self, ssc: bytes, message: bytes, mac: bytes, what: str) -> None:
        if not hmac.compare_digest(self._mac(ssc, message), mac):
            self._fail(f"{what}: DO'8E' MAC does not verify (SSC {ssc.hex().upper()}): altered "
                       f"on the way, or the two ends' counters differ")

    def _cryptogram(self, data: bytes, odd_ins: bool) -> bytes:
        cryptogram = encrypt(self._ks_enc, pad(data))
        if odd_ins:
            return data_object(TAG_CRYPTOGRAM, cryptogram)
        return data_object(TAG_PADDED_CRYPTOGRAM, bytes((PADDING_INDICATOR,)) + cryptogram)

    def _plain(self, tag: int, value: bytes, what: str) -> bytes:
        if tag == TAG_PADDED_CRYPTOGRAM:
            if not value or value[0] != PADDING_INDICATOR:
                self._fail(f"{what}: DO'87' padding indicator is "
                           f"{value[:1].hex() or 'missing'}, not 01")
            value = value[1:]
        if not value or len(value) % BLOCK:
            self._fail(f"{what}: cryptogram of {len(value)} bytes is not whole 8-byte blocks")
        try:
            return unpad(decrypt(self._ks_enc, value))
        except SecureMessagingError as exc:
            self._fail(f"{what}: {exc.message}")

    def _split(self, data: bytes, what: str) -> tuple[list[tuple[int, bytes]], bytes, bytes]:
        """(data objects before DO'8E', their raw bytes, the MAC) of a protected body."""
        if len(data) < 2 + MAC_LENGTH or data[-10:-8] != bytes((TAG_MAC, MAC_LENGTH)):
            self._fail(f"{what}: no DO'8E' (MAC) at the end of {shown(data)}",
                       Status.SM_DATA_OBJECTS_MISSING)
        body, mac = data[:-10], data[-8:]
        try:
            return data_objects(body), body, mac
        except ProtocolError as exc:
            self._fail(f"{what}: {exc.message}")


class SecureChannel(_Session):
    """The station's end of a secure messaging session: protect commands, unprotect answers."""

    def protect(self, command: Command) -> Command:
        if command.cla & SM_CLA_BITS:
            raise BadRequest(f"command {command.header.hex()} has secure messaging bits in its "
                             f"CLA already; give the plain command")
        ssc = self._next_ssc()
        header = bytes((command.cla | SM_CLA_BITS, command.ins, command.p1, command.p2))
        objects = self._cryptogram(command.data, bool(command.ins & 1)) if command.data else b""
        if command.le is not None:
            le = (command.le % 65536).to_bytes(2, "big") if command.extended \
                else bytes((command.le % 256,))
            objects += data_object(TAG_LE, le)
        body = objects + data_object(TAG_MAC, self._mac(ssc, pad(header) + objects))
        extended = command.extended or len(body) > 255
        return Command(header[0], command.ins, command.p1, command.p2, body,
                       le=65536 if extended else 256)

    def unprotect(self, response: Response) -> Response:
        """The plain answer; ``SecureMessagingError`` if it does not verify or the chip ended
        secure messaging (a bare status word: 6987/6988, or any status without a MAC)."""
        ssc = self._next_ssc()
        what = f"response {describe(response.sw)}"
        if not response.data:
            self._fail(f"the chip answered {describe(response.sw)} without secure messaging; "
                       f"its session keys are gone", response.sw)
        objects, body, mac = self._split(response.data, what)
        self._check_mac(ssc, body, mac, what)
        tags = [tag for tag, _ in objects]
        if tags not in ([TAG_STATUS], [TAG_PADDED_CRYPTOGRAM, TAG_STATUS],
                        [TAG_CRYPTOGRAM, TAG_STATUS]):
            self._fail(f"{what}: data objects {' '.join(f'{t:02X}' for t in tags)}; expected "
                       f"[87|85] 99 8E")
        status = objects[-1][1]
        if len(status) != 2 or status != bytes((response.sw1, response.sw2)):
            self._fail(f"{what}: DO'99' {status.hex()} differs from the status word outside it")
        data = self._plain(*objects[0], what) if len(objects) == 2 else b""
        return Response(data, status[0], status[1])


class ChipChannel(_Session):
    """The chip's end, for a card emulator: unprotect commands, protect answers.

    On ``SecureMessagingError`` the emulator answers ``Response.status(exc.status)`` without
    secure messaging and treats the terminal as unauthenticated from then on.
    """

    def __init__(self, ks_enc: bytes, ks_mac: bytes, ssc: int):
        super().__init__(ks_enc, ks_mac, ssc)
        self._odd_ins = False

    def unprotect(self, command: Command) -> Command:
        ssc = self._next_ssc()
        what = f"command {command.header.hex()}"
        if command.cla & SM_CLA_BITS != SM_CLA_BITS:
            self._fail(f"{what} is plain inside a secure messaging session",
                       Status.SM_DATA_OBJECTS_MISSING)
        objects, body, mac = self._split(command.data, what)
        self._check_mac(ssc, pad(command.header) + body, mac, what)
        odd_ins = bool(command.ins & 1)
        cryptogram_tag = TAG_CRYPTOGRAM if odd_ins else TAG_PADDED_CRYPTOGRAM
        tags = [tag for tag, _ in objects]
        if tags not in ([], [cryptogram_tag], [TAG_LE], [cryptogram_tag, TAG_LE]):
            self._fail(f"{what}: data objects {' '.join(f'{t:02X}' for t in tags)}; expected "
                       f"[{cryptogram_tag:02X}] [97] 8E")
        values = dict(objects)
        data = self._plain(cryptogram_tag, values[cryptogram_tag], what) \
            if cryptogram_tag in values else b""
        le = None
        if TAG_LE in values:
            raw = values[TAG_LE]
            if len(raw) not in (1, 2):
                self._fail(f"{what}: DO'97' {raw.hex()} is not a 1- or 2-byte Le")
            le = int.from_bytes(raw, "big") or (256 if len(raw) == 1 else 65536)
        self._odd_ins = odd_ins
        return Command(command.cla & ~SM_CLA_BITS & 0xFF, command.ins, command.p1, command.p2,
                       data, le)

    def protect(self, response: Response) -> Response:
        """The protected answer to the command ``unprotect`` gave last."""
        ssc = self._next_ssc()
        objects = self._cryptogram(response.data, self._odd_ins) if response.data else b""
        objects += data_object(TAG_STATUS, bytes((response.sw1, response.sw2)))
        body = objects + data_object(TAG_MAC, self._mac(ssc, objects))
        return Response(body, response.sw1, response.sw2)
