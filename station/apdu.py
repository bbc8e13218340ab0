"""ISO/IEC 7816-4 command and response APDUs, bytes in and messages out, no I/O.

Both ends use this module: the station's chip encoder builds commands with the builders
below and reads ``Response``; a card emulator reads commands with ``Command.decode`` and
answers with ``Response.encode``. Secure messaging (``station/bac.py``) wraps and unwraps
these same objects, so a protected session is the same commands inside data objects.

Command APDU (ISO/IEC 7816-4 §5.1), ``Nc`` = len(data), ``Ne`` = ``le``::

    case  short                          extended (Nc > 255 or Ne > 256)
    1     CLA INS P1 P2                  (never extended)
    2     ... Le(1)                      ... 00 Le(2)
    3     ... Lc(1) data                 ... 00 Lc(2) data
    4     ... Lc(1) data Le(1)           ... 00 Lc(2) data Le(2)

``le`` is the number of bytes the terminal accepts, 1..65536: 256 is written ``00`` in
the short form and 65536 ``0000`` in the extended form. ``None`` means no Le field.

Commands an eMRTD (ICAO 9303-10/-11) issuance and read session uses::

    SELECT application by AID            00 A4 04 0C Lc AID
    SELECT EF by file id                 00 A4 02 0C 02 FID
    READ BINARY, offset <= 7FFF          00 B0 P1P2=offset Le
    READ BINARY, larger offsets          00 B1 00 00 Lc 54 L offset Le     -> 53 L content
    UPDATE BINARY, offset <= 7FFF        00 D6 P1P2=offset Lc content
    UPDATE BINARY, larger offsets        00 D7 00 00 Lc 54 L offset 53 L content
    CREATE FILE (transparent EF)         00 E0 00 00 Lc 62 L (80 size)(82 01)(83 FID)
    GET CHALLENGE                        00 84 00 00 08                   -> RND.IC (8)
    EXTERNAL AUTHENTICATE (BAC mutual)   00 82 00 00 28 E_IFD||M_IFD 28   -> E_IC||M_IC

Malformed bytes raise ``ProtocolError`` naming the offending field; a builder given a value
the command cannot carry raises ``BadRequest``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from asn1crypto import parser

from station.errors import BadRequest, ProtocolError

SHORT_MAX_DATA = 255
SHORT_MAX_LE = 256
EXTENDED_MAX_DATA = 65535
EXTENDED_MAX_LE = 65536
MAX_SHORT_OFFSET = 0x7FFF  # P1 bit 8 set would mean a short EF identifier, not an offset

INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0
INS_READ_BINARY_ODD = 0xB1
INS_UPDATE_BINARY = 0xD6
INS_UPDATE_BINARY_ODD = 0xD7
INS_CREATE_FILE = 0xE0
INS_GET_CHALLENGE = 0x84
INS_EXTERNAL_AUTHENTICATE = 0x82
INS_INTERNAL_AUTHENTICATE = 0x88

TAG_DISCRETIONARY_DATA = 0x53  # content in odd-INS READ/UPDATE BINARY
TAG_OFFSET = 0x54  # offset in odd-INS READ/UPDATE BINARY
TAG_FCP = 0x62
TAG_FILE_SIZE = 0x80
TAG_FILE_DESCRIPTOR = 0x82
TAG_FILE_ID = 0x83
FILE_DESCRIPTOR_TRANSPARENT_EF = 0x01  # working EF, transparent structure

CHALLENGE_LENGTH = 8
MUTUAL_AUTHENTICATE_LENGTH = 40  # E (32) || M (8), both ways
AA_CHALLENGE_LENGTH = 8


class Status(IntEnum):
    """Status words (SW1 SW2) an eMRTD session meets; ``describe`` says what each means."""

    OK = 0x9000
    END_OF_FILE = 0x6282
    AUTHENTICATION_FAILED = 0x6300
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    NO_CURRENT_EF = 0x6986
    SM_DATA_OBJECTS_MISSING = 0x6987
    SM_DATA_OBJECTS_INCORRECT = 0x6988
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    CONDITIONS_NOT_SATISFIED = 0x6985
    WRONG_DATA = 0x6A80
    FILE_NOT_FOUND = 0x6A82
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1_P2 = 0x6A86
    FILE_EXISTS = 0x6A89
    WRONG_P1_P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00


MEANINGS: dict[int, str] = {
    Status.OK: "success",
    Status.END_OF_FILE: "warning: end of file reached before Le bytes were read",
    Status.AUTHENTICATION_FAILED: "authentication failed: the terminal's cryptogram does not "
                                  "verify (wrong MRZ for the access keys?)",
    Status.MEMORY_FAILURE: "memory failure: the chip could not write its EEPROM",
    Status.WRONG_LENGTH: "wrong length (Lc or Le)",
    Status.NO_CURRENT_EF: "command not allowed: no elementary file selected",
    Status.SM_DATA_OBJECTS_MISSING: "secure messaging data objects missing: the chip ended "
                                    "secure messaging; authenticate again",
    Status.SM_DATA_OBJECTS_INCORRECT: "secure messaging data objects incorrect (bad MAC or "
                                      "padding): the chip ended secure messaging; authenticate "
                                      "again",
    Status.SECURITY_STATUS_NOT_SATISFIED: "security status not satisfied: the file needs access "
                                          "control (BAC) first",
    Status.CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied (e.g. EXTERNAL "
                                     "AUTHENTICATE without a GET CHALLENGE first)",
    Status.WRONG_DATA: "incorrect parameters in the command data field",
    Status.FILE_NOT_FOUND: "file or application not found",
    Status.NOT_ENOUGH_MEMORY: "not enough memory in the chip (or past the end of the file)",
    Status.INCORRECT_P1_P2: "incorrect parameters P1-P2",
    Status.FILE_EXISTS: "the file already exists",
    Status.WRONG_P1_P2: "wrong parameters P1-P2: offset outside the EF",
    Status.INS_NOT_SUPPORTED: "instruction code not supported",
    Status.CLA_NOT_SUPPORTED: "class not supported",
}


def describe(sw: int) -> str:
    """``'6A82 file or application not found'``: the words an engineer reads in a log."""
    meaning = MEANINGS.get(sw)
    if meaning is None:
        sw1, sw2 = sw >> 8, sw & 0xFF
        if sw1 == 0x61:
            meaning = f"{sw2} more response bytes available"
        elif sw1 == 0x6C:
            meaning = f"wrong Le: {sw2 or 256} bytes available"
        elif sw1 == 0x63 and sw2 & 0xF0 == 0xC0:
            meaning = f"verification failed, {sw2 & 0x0F} tries left"
        else:
            meaning = "unknown status"
    return f"{sw:04X} {meaning}"


def _byte(label: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise BadRequest(f"APDU {label}: {value!r} is not a byte; allowed: 0..255")
    return value


@dataclass(frozen=True)
class Command:
    """A command APDU; ``le`` is Ne, the bytes expected back (None: no Le field)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for label in ("cla", "ins", "p1", "p2"):
            _byte(label, getattr(self, label))
        object.__setattr__(self, "data", bytes(self.data))
        if len(self.data) > EXTENDED_MAX_DATA:
            raise BadRequest(f"APDU data: {len(self.data)} bytes; at most {EXTENDED_MAX_DATA} "
                             f"fit an extended APDU")
        if self.le is not None and not 1 <= self.le <= EXTENDED_MAX_LE:
            raise BadRequest(f"APDU le: {self.le!r} is not a number of expected bytes; allowed: "
                             f"1..{EXTENDED_MAX_LE} (256 is written 00), or None for no Le")

    @property
    def extended(self) -> bool:
        """Whether the lengths need the extended form (the card must announce support)."""
        return len(self.data) > SHORT_MAX_DATA or (self.le or 0) > SHORT_MAX_LE

    @property
    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))

    def encode(self) -> bytes:
        if not self.extended:
            body = bytes((len(self.data),)) + self.data if self.data else b""
            if self.le is not None:
                body += bytes((self.le % 256,))
            return self.header + body
        body = b"\x00"
        if self.data:
            body += len(self.data).to_bytes(2, "big") + self.data
        if self.le is not None:
            body += (self.le % 65536).to_bytes(2, "big")
        return self.header + body

    @classmethod
    def decode(cls, apdu: bytes) -> Command:
        """Card side: the command in ``apdu``; ProtocolError names a length that does not fit."""
        apdu = bytes(apdu)
        if len(apdu) < 4:
            raise ProtocolError(f"command APDU of {len(apdu)} bytes is shorter than its 4-byte "
                                f"header: {shown(apdu)}")
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or SHORT_MAX_LE)
        if body[0] != 0:
            lc = body[0]
            if len(body) == 1 + lc:
                return cls(cla, ins, p1, p2, body[1:])
            if len(body) == 2 + lc:
                return cls(cla, ins, p1, p2, body[1:-1], body[-1] or SHORT_MAX_LE)
            raise ProtocolError(f"command APDU {apdu[:4].hex()}: Lc {lc} does not match the "
                                f"{len(body) - 1} bytes after it")
        if len(body) == 3:
            return cls(cla, ins, p1, p2, le=int.from_bytes(body[1:], "big") or EXTENDED_MAX_LE)
        if len(body) < 3:
            raise ProtocolError(f"command APDU {apdu[:4].hex()}: {len(body)} bytes after the "
                                f"header fit neither a short nor an extended length")
        lc = int.from_bytes(body[1:3], "big")
        if lc and len(body) == 3 + lc:
            return cls(cla, ins, p1, p2, body[3:])
        if lc and len(body) == 5 + lc:
            le = int.from_bytes(body[-2:], "big") or EXTENDED_MAX_LE
            return cls(cla, ins, p1, p2, body[3:-2], le)
        raise ProtocolError(f"command APDU {apdu[:4].hex()}: extended Lc {lc} does not match "
                            f"the {len(body) - 3} bytes after it")


@dataclass(frozen=True)
class Response:
    """A response APDU: data and the status word."""

    data: bytes
    sw1: int
    sw2: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", bytes(self.data))
        _byte("sw1", self.sw1)
        _byte("sw2", self.sw2)

    @classmethod
    def status(cls, sw: int, data: bytes = b"") -> Response:
        return cls(data, sw >> 8, sw & 0xFF)

    @property
    def sw(self) -> int:
        return self.sw1 << 8 | self.sw2

    @property
    def ok(self) -> bool:
        return self.sw == Status.OK

    def describe(self) -> str:
        return describe(self.sw)

    def encode(self) -> bytes:
        return self.data + bytes((self.sw1, self.sw2))

    @classmethod
    def decode(cls, apdu: bytes) -> Response:
        apdu = bytes(apdu)
        if len(apdu) < 2:
            raise ProtocolError(f"response APDU of {len(apdu)} bytes has no status word: "
                                f"{shown(apdu)}")
        return cls(apdu[:-2], apdu[-2], apdu[-1])


# --- BER-TLV data objects (ISO/IEC 7816-4 §5.4), one-byte tags ------------------------


def shown(data: bytes, limit: int = 24) -> str:
    """``data`` in hex for an error message, cut after ``limit`` bytes."""
    data = bytes(data)
    if len(data) <= limit:
        return data.hex()
    return f"{data[:limit].hex()}.. ({len(data)} bytes)"


def data_object(tag: int, value: bytes) -> bytes:
    """``tag`` (one byte, e.g. 0x87) with its BER length and ``value``."""
    return parser.emit(tag >> 6, (tag >> 5) & 1, tag & 0x1F, bytes(value))


def data_objects(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) pairs concatenated in ``data``, in order; ProtocolError if malformed."""
    objects: list[tuple[int, bytes]] = []
    data = bytes(data)
    position = 0
    while position < len(data):
        if data[position] & 0x1F == 0x1F:
            raise ProtocolError(f"data object at byte {position} of {shown(data)} has a "
                                f"multi-byte tag; only one-byte tags are expected here")
        try:
            _, _, _, header, value, trailer = parser.parse(data[position:])
        except ValueError as exc:
            raise ProtocolError(f"data object at byte {position} of {shown(data)}: {exc}") from None
        if trailer:
            raise ProtocolError(f"data object at byte {position} of {shown(data)} has an "
                                f"indefinite length; a definite length is expected")
        objects.append((data[position], value))
        position += len(header) + len(value)
    return objects


def _minimal(value: int, width: int) -> bytes:
    """``value`` big-endian in at least ``width`` bytes."""
    return value.to_bytes(max(width, (value.bit_length() + 7) // 8), "big")


# --- builders --------------------------------------------------------------------------


def select_application(aid: bytes) -> Command:
    """SELECT by DF name (AID), no FCI back: the eMRTD application is ``A0000002471001``."""
    if not 5 <= len(aid) <= 16:
        raise BadRequest(f"SELECT application: AID {bytes(aid).hex()} is {len(aid)} bytes; "
                         f"allowed: 5..16")
    return Command(0x00, INS_SELECT, 0x04, 0x0C, aid)


def _file_id(file_id: int) -> bytes:
    if not isinstance(file_id, int) or not 0 <= file_id <= 0xFFFF:
        raise BadRequest(f"file id {file_id!r} is not two bytes; allowed: 0x0000..0xFFFF "
                         f"(EF.COM is 0x011E)")
    return file_id.to_bytes(2, "big")


def select_file(file_id: int) -> Command:
    """SELECT EF under the current DF by its file id, no FCI back."""
    return Command(0x00, INS_SELECT, 0x02, 0x0C, _file_id(file_id))


def _offset(offset: int) -> int:
    if not isinstance(offset, int) or not 0 <= offset <= 0xFFFFFF:
        raise BadRequest(f"binary offset {offset!r} is not allowed; allowed: 0..16777215")
    return offset


def read_binary(offset: int, length: int) -> Command:
    """READ BINARY of up to ``length`` bytes at ``offset`` of the selected EF.

    Above offset 32767 the odd instruction B1 carries the offset in DO'54' and the chip
    answers with the content in DO'53' (``discretionary_data`` takes it out), so ``length``
    then counts that DO's header too.
    """
    if _offset(offset) <= MAX_SHORT_OFFSET:
        return Command(0x00, INS_READ_BINARY, offset >> 8, offset & 0xFF, le=length)
    return Command(0x00, INS_READ_BINARY_ODD, 0x00, 0x00,
                   data_object(TAG_OFFSET, _minimal(offset, 2)), le=length)


def update_binary(offset: int, content: bytes) -> Command:
    """UPDATE BINARY: write ``content`` at ``offset`` of the selected EF (odd D7 above 32767)."""
    if _offset(offset) <= MAX_SHORT_OFFSET:
        return Command(0x00, INS_UPDATE_BINARY, offset >> 8, offset & 0xFF, content)
    return Command(0x00, INS_UPDATE_BINARY_ODD, 0x00, 0x00,
                   data_object(TAG_OFFSET, _minimal(offset, 2))
                   + data_object(TAG_DISCRETIONARY_DATA, content))


def binary_offset(command: Command) -> int:
    """Card side: the offset a READ BINARY or UPDATE BINARY (even or odd INS) addresses."""
    if command.ins in (INS_READ_BINARY, INS_UPDATE_BINARY):
        if command.p1 & 0x80:
            raise ProtocolError(f"{command.header.hex()}: P1 bit 8 selects a short EF "
                                f"identifier, which this card does not support")
        return command.p1 << 8 | command.p2
    if command.ins in (INS_READ_BINARY_ODD, INS_UPDATE_BINARY_ODD):
        for tag, value in data_objects(command.data):
            if tag == TAG_OFFSET and value:
                return int.from_bytes(value, "big")
        raise ProtocolError(f"{command.header.hex()}: odd-INS binary command without an offset "
                            f"DO'54'")
    raise ProtocolError(f"{command.header.hex()} is not READ BINARY or UPDATE BINARY")


def binary_content(command: Command) -> bytes:
    """Card side: the bytes an UPDATE BINARY (D6, or D7 with DO'53') writes."""
    if command.ins == INS_UPDATE_BINARY:
        return command.data
    if command.ins == INS_UPDATE_BINARY_ODD:
        return discretionary_data(command.data)
    raise ProtocolError(f"{command.header.hex()} is not UPDATE BINARY")


def discretionary_data(data: bytes) -> bytes:
    """The value of DO'53' in ``data``: the content an odd-INS READ/UPDATE BINARY carries."""
    for tag, value in data_objects(data):
        if tag == TAG_DISCRETIONARY_DATA:
            return value
    raise ProtocolError(f"no discretionary data DO'53' in {shown(data)}")


def create_file(file_id: int, size: int) -> Command:
    """CREATE FILE of a transparent EF of ``size`` bytes, with its FCP template (62)."""
    if not isinstance(size, int) or not 0 < size <= 0xFFFFFF:
        raise BadRequest(f"CREATE FILE: size {size!r} is not allowed; allowed: 1..16777215 bytes")
    fcp = (data_object(TAG_FILE_SIZE, _minimal(size, 2))
           + data_object(TAG_FILE_DESCRIPTOR, bytes((FILE_DESCRIPTOR_TRANSPARENT_EF,)))
           + data_object(TAG_FILE_ID, _file_id(file_id)))
    return Command(0x00, INS_CREATE_FILE, 0x00, 0x00, data_object(TAG_FCP, fcp))


def file_control_parameters(command: Command) -> tuple[int, int]:
    """Card side: (file id, size) from a CREATE FILE command's FCP template."""
    templates = [value for tag, value in data_objects(command.data) if tag == TAG_FCP]
    if command.ins != INS_CREATE_FILE or len(templates) != 1:
        raise ProtocolError(f"{shown(command.encode())} is not CREATE FILE with one FCP template")
    fields = dict(data_objects(templates[0]))
    if TAG_FILE_ID not in fields or len(fields[TAG_FILE_ID]) != 2 or not fields.get(TAG_FILE_SIZE):
        raise ProtocolError(f"CREATE FILE template {shown(templates[0])} lacks a file id (83, two "
                            f"bytes) or a size (80)")
    return int.from_bytes(fields[TAG_FILE_ID], "big"), int.from_bytes(fields[TAG_FILE_SIZE], "big")


def get_challenge() -> Command:
    """GET CHALLENGE: the chip answers RND.IC, 8 bytes, the start of BAC."""
    return Command(0x00, INS_GET_CHALLENGE, 0x00, 0x00, le=CHALLENGE_LENGTH)


def internal_authenticate(challenge: bytes) -> Command:
    """INTERNAL AUTHENTICATE for Active Authentication: the chip signs ``challenge`` (8
    bytes, ICAO 9303-11 §6.1) with its AA private key."""
    if len(challenge) != AA_CHALLENGE_LENGTH:
        raise BadRequest(f"INTERNAL AUTHENTICATE: challenge of {len(challenge)} bytes; AA takes {AA_CHALLENGE_LENGTH}")
    return Command(0x00, INS_INTERNAL_AUTHENTICATE, 0x00, 0x00, challenge, le=256)


# The emulated chip's personalisation profile (proprietary, CLA 80; a real chip's vendor
# profile has its own): LOCK ends personalisation and arms BAC with the MRZ information;
# GENERATE AA KEY PAIR makes the chip's Active Authentication key, answering its public key.
CLA_PROPRIETARY = 0x80
INS_LOCK = 0xE8
INS_GENERATE_AA_KEY = 0x46


def lock(mrz_information: str) -> Command:
    return Command(CLA_PROPRIETARY, INS_LOCK, 0x00, 0x00, mrz_information.encode("ascii"))


def generate_aa_key() -> Command:
    return Command(CLA_PROPRIETARY, INS_GENERATE_AA_KEY, 0x00, 0x00, le=256)


def external_authenticate(cryptogram: bytes) -> Command:
    """EXTERNAL AUTHENTICATE used as BAC's mutual authenticate: E_IFD || M_IFD, 40 bytes each
    way (ICAO 9303-11 §4.3)."""
    if len(cryptogram) != MUTUAL_AUTHENTICATE_LENGTH:
        raise BadRequest(f"EXTERNAL AUTHENTICATE: cryptogram is {len(cryptogram)} bytes; BAC "
                         f"sends E_IFD || M_IFD, {MUTUAL_AUTHENTICATE_LENGTH} bytes")
    return Command(0x00, INS_EXTERNAL_AUTHENTICATE, 0x00, 0x00, cryptogram,
                   le=MUTUAL_AUTHENTICATE_LENGTH)
