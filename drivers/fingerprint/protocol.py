"""The ZFM / R30x / AS608 UART packet protocol, bytes in and messages out, no I/O.

Both ends use this module: ``device.py`` (the host) encodes commands and decodes acks,
``emulator.py`` (the sensor) decodes commands and encodes acks, so a test that passes one
against the other checks the codec twice, and the golden transcripts in the tests pin it to
the bytes in REFERENCE.md and to independent clients (pyfingerprint, adafruit).

Frame: ``EF01 | address(4) | PID(1) | LEN(2) = len(payload) + 2 | payload | SUM(2)`` with
SUM = (PID + both LEN bytes + payload bytes) & 0xFFFF, all big-endian. The protocol has no
sequence numbers: a reply is matched to its command only by arriving next, which is why the
host flushes stale input before each command and checks each ack's length.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from station.errors import DeviceError, ProtocolError

START_CODE = b"\xef\x01"
DEFAULT_ADDRESS = 0xFFFFFFFF
HEADER_SIZE = 9  # start code, address, PID, LEN
# LEN counts payload + checksum. The longest legal payload is a 256-byte data packet; a
# larger LEN is garbage, and refusing it early lets the reader resynchronise sooner.
MAX_LENGTH = 256 + 2

IMAGE_WIDTH = 256
IMAGE_HEIGHT = 288
IMAGE_BYTES = IMAGE_WIDTH * IMAGE_HEIGHT // 2  # 4 bits a pixel: 36,864
CHARACTERISTICS_BYTES = 512  # one char buffer / template as UpChar sends it
PACKET_SIZES = (32, 64, 128, 256)  # data bytes per data packet, by ReadSysPara size code
BAUD_UNIT = 9600  # baud = N x 9600, N in 1..12
MODULE_OK = 0x55  # GetEcho's reply in place of a confirmation code


class PacketType(IntEnum):
    COMMAND = 0x01
    DATA = 0x02
    ACK = 0x07
    END_DATA = 0x08


class Instruction(IntEnum):
    GEN_IMG = 0x01
    IMG2TZ = 0x02
    MATCH = 0x03
    SEARCH = 0x04
    REG_MODEL = 0x05
    STORE = 0x06
    LOAD_CHAR = 0x07
    UP_CHAR = 0x08
    DOWN_CHAR = 0x09
    UP_IMAGE = 0x0A
    DOWN_IMAGE = 0x0B
    DELETE_CHAR = 0x0C
    EMPTY = 0x0D
    SET_SYS_PARA = 0x0E
    READ_SYS_PARA = 0x0F
    VFY_PWD = 0x13
    GET_RANDOM_CODE = 0x14
    HI_SPEED_SEARCH = 0x1B
    TEMPLATE_NUM = 0x1D
    READ_INDEX_TABLE = 0x1F
    AURA_LED = 0x35
    SOFT_RESET = 0x3D
    GET_ECHO = 0x53


class SystemParameter(IntEnum):
    """Register numbers SetSysPara writes."""

    BAUD_MULTIPLE = 4
    SECURITY_LEVEL = 5
    PACKET_SIZE_CODE = 6


class Confirmation(IntEnum):
    """The first byte of every ack (the datasheet's "confirmation code")."""

    OK = 0x00
    PACKET_RECEIVE_ERROR = 0x01
    NO_FINGER = 0x02
    ENROLL_FAIL = 0x03
    FEATURE_DISORDERLY = 0x06
    FEATURE_TOO_FEW = 0x07
    NO_MATCH = 0x08
    NOT_FOUND = 0x09
    MERGE_FAIL = 0x0A
    BAD_LOCATION = 0x0B
    READ_TEMPLATE_ERROR = 0x0C
    UPLOAD_FEATURE_FAIL = 0x0D
    CANNOT_RECEIVE_DATA = 0x0E
    UPLOAD_IMAGE_FAIL = 0x0F
    DELETE_FAIL = 0x10
    CLEAR_FAIL = 0x11
    WRONG_PASSWORD = 0x13
    NO_VALID_IMAGE = 0x15
    FLASH_WRITE_ERROR = 0x18
    UNDEFINED_ERROR = 0x19
    INVALID_REGISTER = 0x1A
    REGISTER_CONFIG_ERROR = 0x1B
    NOTEPAD_PAGE_ERROR = 0x1C
    PORT_FAIL = 0x1D
    # Later R50x-family datasheets add these.
    LIBRARY_FULL = 0x1F
    WRONG_ADDRESS = 0x20
    PASSWORD_REQUIRED = 0x21
    TEMPLATE_EMPTY = 0x22
    LIBRARY_EMPTY = 0x24
    TIMEOUT = 0x26
    ALREADY_EXISTS = 0x27
    SENSOR_HARDWARE_ERROR = 0x29
    UNSUPPORTED_COMMAND = 0xFC
    HARDWARE_ERROR = 0xFD
    EXECUTION_FAILED = 0xFE


CONFIRMATION_MESSAGES: Mapping[int, str] = {
    Confirmation.OK: "command completed",
    Confirmation.PACKET_RECEIVE_ERROR: "the sensor received a corrupt packet",
    Confirmation.NO_FINGER: "no finger on the sensor",
    Confirmation.ENROLL_FAIL: "the sensor could not take an image of the finger",
    Confirmation.FEATURE_DISORDERLY: "the image is too disorderly to extract features",
    Confirmation.FEATURE_TOO_FEW: "the image has too few features (too small or too faint)",
    Confirmation.NO_MATCH: "the fingers do not match",
    Confirmation.NOT_FOUND: "no matching finger in the sensor's library",
    Confirmation.MERGE_FAIL: "the character files could not be merged into a template",
    Confirmation.BAD_LOCATION: "the page number is outside the sensor's library",
    Confirmation.READ_TEMPLATE_ERROR: "the template in the library is unreadable or invalid",
    Confirmation.UPLOAD_FEATURE_FAIL: "the sensor failed to upload the features",
    Confirmation.CANNOT_RECEIVE_DATA: "the sensor cannot receive the following data packets",
    Confirmation.UPLOAD_IMAGE_FAIL: "the sensor failed to upload the image",
    Confirmation.DELETE_FAIL: "the template could not be deleted",
    Confirmation.CLEAR_FAIL: "the sensor's library could not be cleared",
    Confirmation.WRONG_PASSWORD: "wrong sensor password",
    Confirmation.NO_VALID_IMAGE: "there is no valid image in the sensor's image buffer",
    Confirmation.FLASH_WRITE_ERROR: "the sensor failed to write its flash memory",
    Confirmation.UNDEFINED_ERROR: "undefined error in the sensor",
    Confirmation.INVALID_REGISTER: "invalid register number",
    Confirmation.REGISTER_CONFIG_ERROR: "invalid value for the register",
    Confirmation.NOTEPAD_PAGE_ERROR: "invalid notepad page number",
    Confirmation.PORT_FAIL: "the sensor failed to operate its communication port",
    Confirmation.LIBRARY_FULL: "the sensor's library is full",
    Confirmation.WRONG_ADDRESS: "wrong sensor address",
    Confirmation.PASSWORD_REQUIRED: "the password must be verified first",
    Confirmation.TEMPLATE_EMPTY: "the template is empty",
    Confirmation.LIBRARY_EMPTY: "the sensor's library is empty",
    Confirmation.TIMEOUT: "the sensor timed out",
    Confirmation.ALREADY_EXISTS: "the finger is already enrolled",
    Confirmation.SENSOR_HARDWARE_ERROR: "sensor hardware error",
    Confirmation.UNSUPPORTED_COMMAND: "the sensor does not support this command",
    Confirmation.HARDWARE_ERROR: "hardware error",
    Confirmation.EXECUTION_FAILED: "the command failed to execute",
}

# Codes that describe the finger or the moment rather than the link: asking again (another
# GenImg, a better placement) may succeed.
_RETRYABLE_CONFIRMATIONS = frozenset(
    {
        Confirmation.PACKET_RECEIVE_ERROR,
        Confirmation.NO_FINGER,
        Confirmation.ENROLL_FAIL,
        Confirmation.FEATURE_DISORDERLY,
        Confirmation.FEATURE_TOO_FEW,
        Confirmation.NO_VALID_IMAGE,
        Confirmation.TIMEOUT,
    }
)


def confirmation_message(code: int) -> str:
    return CONFIRMATION_MESSAGES.get(code, f"unknown confirmation code 0x{code:02X}")


class SensorError(DeviceError):
    """The sensor answered a command with a confirmation code other than OK.

    ``confirmation`` is the raw code; ``code`` (the bus-level machine code) is
    ``fingerprint_<name>``, e.g. ``fingerprint_no_finger``.
    """

    def __init__(self, confirmation: int, instruction: int | None = None, where: str = ""):
        self.confirmation = confirmation
        self.instruction = instruction
        try:
            name = Confirmation(confirmation).name.lower()
        except ValueError:
            name = f"0x{confirmation:02x}"
        what = _instruction_name(instruction) if instruction is not None else "command"
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}{what} failed: {confirmation_message(confirmation)} (0x{confirmation:02X})",
            code=f"fingerprint_{name}",
            retryable=confirmation in _RETRYABLE_CONFIRMATIONS,
        )


def _instruction_name(instruction: int) -> str:
    try:
        return Instruction(instruction).name
    except ValueError:
        return f"instruction 0x{instruction:02X}"


# --- frames ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    pid: int
    payload: bytes
    address: int = DEFAULT_ADDRESS

    def encode(self) -> bytes:
        return encode_packet(self.pid, self.payload, self.address)


def checksum(pid: int, payload: bytes) -> int:
    length = len(payload) + 2
    return (pid + (length >> 8) + (length & 0xFF) + sum(payload)) & 0xFFFF


def encode_packet(pid: int, payload: bytes, address: int = DEFAULT_ADDRESS) -> bytes:
    if len(payload) + 2 > MAX_LENGTH:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the protocol's {MAX_LENGTH - 2}")
    header = START_CODE + struct.pack(">IBH", address, pid, len(payload) + 2)
    return header + bytes(payload) + struct.pack(">H", checksum(pid, payload))


def decode_packet(frame: bytes) -> Packet:
    """One complete frame; raises ProtocolError naming what is wrong with it."""
    if len(frame) < HEADER_SIZE + 2:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the minimum 11")
    if frame[:2] != START_CODE:
        raise ProtocolError(f"frame starts with {frame[:2].hex()}, not the start code ef01")
    address, pid, length = struct.unpack(">IBH", frame[2:HEADER_SIZE])
    if len(frame) != HEADER_SIZE + length:
        raise ProtocolError(f"frame is {len(frame)} bytes but its LEN says {HEADER_SIZE + length}")
    payload = bytes(frame[HEADER_SIZE:-2])
    (received,) = struct.unpack(">H", frame[-2:])
    expected = checksum(pid, payload)
    if received != expected:
        raise ProtocolError(f"checksum 0x{received:04X} does not match 0x{expected:04X}")
    return Packet(pid, payload, address)


class PacketReader:
    """Incremental deframer: feed it whatever the port delivered, get whole packets back.

    Garbage (line noise, a half packet after a reconnect, a corrupted frame) is skipped by
    scanning for the next start code; every skipped byte and every frame that failed its
    checksum is counted so a caller can tell a clean transfer from a lucky one.
    """

    def __init__(self, address: int | None = None):
        self.address = address  # accept only this address when set
        self._buffer = bytearray()
        self.dropped_bytes = 0
        self.bad_packets = 0

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets: list[Packet] = []
        while True:
            packet = self._next()
            if packet is None:
                return packets
            packets.append(packet)

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def reset(self) -> None:
        self.dropped_bytes += len(self._buffer)
        self._buffer.clear()

    def _skip(self, count: int) -> None:
        del self._buffer[:count]
        self.dropped_bytes += count

    def _next(self) -> Packet | None:
        buffer = self._buffer
        while True:
            start = buffer.find(START_CODE)
            if start < 0:
                # Keep a trailing 0xEF: it may be the first half of the next start code.
                self._skip(len(buffer) - 1 if buffer.endswith(b"\xef") else len(buffer))
                return None
            if start:
                self._skip(start)
            if len(buffer) < HEADER_SIZE:
                return None
            address, pid, length = struct.unpack(">IBH", buffer[2:HEADER_SIZE])
            if (
                pid not in _PACKET_TYPES
                or not 2 <= length <= MAX_LENGTH
                or (self.address is not None and address != self.address)
            ):
                self._skip(1)  # a start code inside garbage; look for the next one
                continue
            end = HEADER_SIZE + length
            if len(buffer) < end:
                return None
            frame = bytes(buffer[:end])
            payload = frame[HEADER_SIZE:-2]
            if struct.unpack(">H", frame[-2:])[0] != checksum(pid, payload):
                # Drop only the start code: a real frame may begin inside this one when a
                # byte was lost and LEN swallowed the next packet's head.
                self.bad_packets += 1
                self._skip(1)
                continue
            del buffer[:end]
            return Packet(pid, payload, address)


_PACKET_TYPES = frozenset(int(t) for t in PacketType)


# --- commands (host -> sensor) ---------------------------------------------------------

# Parameter layout after the instruction byte, as (name, struct code) pairs.
_Fields = tuple[tuple[str, str], ...]
COMMAND_FIELDS: Mapping[Instruction, _Fields] = {
    Instruction.GEN_IMG: (),
    Instruction.IMG2TZ: (("buffer_id", "B"),),
    Instruction.MATCH: (),
    Instruction.SEARCH: (("buffer_id", "B"), ("start_page", "H"), ("page_count", "H")),
    Instruction.REG_MODEL: (),
    Instruction.STORE: (("buffer_id", "B"), ("page_id", "H")),
    Instruction.LOAD_CHAR: (("buffer_id", "B"), ("page_id", "H")),
    Instruction.UP_CHAR: (("buffer_id", "B"),),
    Instruction.DOWN_CHAR: (("buffer_id", "B"),),
    Instruction.UP_IMAGE: (),
    Instruction.DOWN_IMAGE: (),
    Instruction.DELETE_CHAR: (("page_id", "H"), ("count", "H")),
    Instruction.EMPTY: (),
    Instruction.SET_SYS_PARA: (("parameter", "B"), ("value", "B")),
    Instruction.READ_SYS_PARA: (),
    Instruction.VFY_PWD: (("password", "I"),),
    Instruction.GET_RANDOM_CODE: (),
    Instruction.HI_SPEED_SEARCH: (("buffer_id", "B"), ("start_page", "H"), ("page_count", "H")),
    Instruction.TEMPLATE_NUM: (),
    Instruction.READ_INDEX_TABLE: (("index_page", "B"),),
    Instruction.AURA_LED: (("control", "B"), ("speed", "B"), ("color", "B"), ("cycles", "B")),
    Instruction.SOFT_RESET: (),
    Instruction.GET_ECHO: (),
}

# Data after the confirmation code of a successful ack. Sensors send the full length even
# on failure (zeros), and fixed-length readers such as adafruit's rely on that.
REPLY_FIELDS: Mapping[Instruction, _Fields] = {
    Instruction.MATCH: (("score", "H"),),
    Instruction.SEARCH: (("page_id", "H"), ("score", "H")),
    Instruction.HI_SPEED_SEARCH: (("page_id", "H"), ("score", "H")),
    Instruction.READ_SYS_PARA: (
        ("status_register", "H"),
        ("system_id", "H"),
        ("library_size", "H"),
        ("security_level", "H"),
        ("address", "I"),
        ("packet_size_code", "H"),
        ("baud_multiple", "H"),
    ),
    Instruction.GET_RANDOM_CODE: (("random", "I"),),
    Instruction.TEMPLATE_NUM: (("count", "H"),),
    Instruction.READ_INDEX_TABLE: (("index_table", "32s"),),
}

# Instructions followed by data packets from the sensor after an OK ack, and the ones
# after which the sensor expects data packets from the host.
UPLOADS = frozenset({Instruction.UP_IMAGE, Instruction.UP_CHAR})
DOWNLOADS = frozenset({Instruction.DOWN_IMAGE, Instruction.DOWN_CHAR})

Value = int | bytes


def _layout(fields: _Fields) -> str:
    return ">" + "".join(code for _, code in fields)


@dataclass(frozen=True)
class Command:
    instruction: Instruction
    params: Mapping[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode_command(self.instruction, **self.params)


def encode_command(instruction: Instruction, **params: int) -> bytes:
    """The payload of a command packet; every parameter in COMMAND_FIELDS is required."""
    fields = COMMAND_FIELDS[instruction]
    names = [name for name, _ in fields]
    if set(params) != set(names):
        raise TypeError(f"{instruction.name} takes parameters {names}, got {sorted(params)}")
    try:
        body = struct.pack(_layout(fields), *(params[name] for name in names))
    except struct.error as exc:
        raise ValueError(f"{instruction.name}: parameter out of range: {exc}") from None
    return bytes([instruction]) + body


def decode_command(payload: bytes) -> Command:
    """Sensor side: the instruction and its parameters; ProtocolError when malformed."""
    if not payload:
        raise ProtocolError("empty command packet")
    try:
        instruction = Instruction(payload[0])
    except ValueError:
        raise ProtocolError(f"unknown instruction 0x{payload[0]:02X}") from None
    fields = COMMAND_FIELDS[instruction]
    layout = _layout(fields)
    if len(payload) - 1 != struct.calcsize(layout):
        raise ProtocolError(
            f"{instruction.name} carries {len(payload) - 1} parameter bytes, "
            f"expected {struct.calcsize(layout)}"
        )
    values = struct.unpack(layout, payload[1:])
    return Command(instruction, dict(zip((name for name, _ in fields), values)))


# --- acks (sensor -> host) -------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    confirmation: int
    fields: Mapping[str, Value] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.confirmation == Confirmation.OK

    def raise_for_confirmation(self, instruction: int | None = None, where: str = "") -> "Ack":
        if not self.ok:
            raise SensorError(self.confirmation, instruction, where)
        return self


def encode_ack(instruction: Instruction, confirmation: int, **fields: Value) -> bytes:
    """The payload of an ack packet; missing reply fields are sent as zeros."""
    layout_fields = REPLY_FIELDS.get(instruction, ())
    unknown = set(fields) - {name for name, _ in layout_fields}
    if unknown:
        raise TypeError(f"{instruction.name} reply has no fields {sorted(unknown)}")
    values = [fields.get(name, b"" if code.endswith("s") else 0) for name, code in layout_fields]
    return bytes([confirmation]) + struct.pack(_layout(layout_fields), *values)


def decode_ack(instruction: Instruction, payload: bytes) -> Ack:
    """Host side: an ack for ``instruction``. A failed ack may be short (some firmwares send
    only the code); a successful one must carry exactly its reply fields, which catches a
    stale reply to a different command."""
    if not payload:
        raise ProtocolError(f"empty ack to {instruction.name}")
    confirmation = payload[0]
    layout_fields = REPLY_FIELDS.get(instruction, ())
    layout = _layout(layout_fields)
    size = struct.calcsize(layout)
    if len(payload) - 1 != size:
        if confirmation == Confirmation.OK or (
            instruction == Instruction.GET_ECHO and confirmation == MODULE_OK
        ):
            raise ProtocolError(
                f"ack to {instruction.name} carries {len(payload) - 1} data bytes, expected {size}"
            )
        return Ack(confirmation)
    values = struct.unpack(layout, payload[1:])
    return Ack(confirmation, dict(zip((name for name, _ in layout_fields), values)))


@dataclass(frozen=True)
class SystemParameters:
    """ReadSysPara's reply: what the host needs to size data transfers and pick a baud."""

    status_register: int = 0
    system_id: int = 0x0009
    library_size: int = 300
    security_level: int = 3
    address: int = DEFAULT_ADDRESS
    packet_size_code: int = 2
    baud_multiple: int = 6

    @property
    def packet_size(self) -> int:
        if not 0 <= self.packet_size_code < len(PACKET_SIZES):
            raise ProtocolError(f"packet size code {self.packet_size_code} is not 0..3")
        return PACKET_SIZES[self.packet_size_code]

    @property
    def baud(self) -> int:
        return self.baud_multiple * BAUD_UNIT

    @classmethod
    def from_ack(cls, ack: Ack) -> "SystemParameters":
        return cls(**{name: int(ack.fields[name]) for name, _ in REPLY_FIELDS[Instruction.READ_SYS_PARA]})

    def ack_fields(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in REPLY_FIELDS[Instruction.READ_SYS_PARA]}


def packet_size_code(packet_size: int) -> int:
    if packet_size not in PACKET_SIZES:
        raise ValueError(f"packet size {packet_size} is not one of {PACKET_SIZES}")
    return PACKET_SIZES.index(packet_size)


def baud_multiple(baud: int) -> int:
    if baud % BAUD_UNIT or not 1 <= baud // BAUD_UNIT <= 12:
        raise ValueError(f"baud {baud} is not a multiple of 9600 between 9600 and 115200")
    return baud // BAUD_UNIT


# --- multi-packet data transfers -------------------------------------------------------


def split_data(data: bytes, packet_size: int, address: int = DEFAULT_ADDRESS) -> list[bytes]:
    """Frames for a data transfer: full data packets, the last one marked END_DATA."""
    if packet_size not in PACKET_SIZES:
        raise ValueError(f"packet size {packet_size} is not one of {PACKET_SIZES}")
    if not data:
        return [encode_packet(PacketType.END_DATA, b"", address)]
    chunks = [data[i : i + packet_size] for i in range(0, len(data), packet_size)]
    last = len(chunks) - 1
    return [
        encode_packet(PacketType.END_DATA if i == last else PacketType.DATA, chunk, address)
        for i, chunk in enumerate(chunks)
    ]


class DataAssembler:
    """Collects the data packets of one transfer and checks their sizes as they come, so a
    lost packet shows up as an error, not as a shifted image."""

    def __init__(self, packet_size: int, expected_bytes: int | None = None):
        self.packet_size = packet_size
        self.expected_bytes = expected_bytes
        self._data = bytearray()
        self.packets = 0
        self.complete = False

    @property
    def received_bytes(self) -> int:
        return len(self._data)

    def add(self, packet: Packet) -> bool:
        """Take one packet; True once the END_DATA packet has arrived."""
        if self.complete:
            raise ProtocolError("data packet after the end of the transfer")
        if packet.pid not in (PacketType.DATA, PacketType.END_DATA):
            raise ProtocolError(f"packet type 0x{packet.pid:02X} inside a data transfer")
        if len(packet.payload) > self.packet_size or (
            packet.pid == PacketType.DATA and len(packet.payload) != self.packet_size
        ):
            raise ProtocolError(
                f"data packet {self.packets + 1} carries {len(packet.payload)} bytes, "
                f"packet size is {self.packet_size}"
            )
        self._data += packet.payload
        self.packets += 1
        if self.expected_bytes is not None and len(self._data) > self.expected_bytes:
            raise ProtocolError(f"transfer exceeds the expected {self.expected_bytes} bytes")
        self.complete = packet.pid == PacketType.END_DATA
        if self.complete and self.expected_bytes is not None and len(self._data) != self.expected_bytes:
            raise ProtocolError(
                f"transfer ended after {len(self._data)} bytes, expected {self.expected_bytes}"
            )
        return self.complete

    @property
    def data(self) -> bytes:
        return bytes(self._data)


def reassemble(packets: Iterable[Packet], packet_size: int, expected_bytes: int | None = None) -> bytes:
    assembler = DataAssembler(packet_size, expected_bytes)
    for packet in packets:
        assembler.add(packet)
    if not assembler.complete:
        raise ProtocolError(f"transfer has no END_DATA packet after {assembler.received_bytes} bytes")
    return assembler.data


# --- image packing ---------------------------------------------------------------------


def pack_image(gray: np.ndarray) -> bytes:
    """288 x 256 uint8 grey -> 36,864 bytes, 4 bits a pixel, left pixel in the high nibble."""
    if gray.shape != (IMAGE_HEIGHT, IMAGE_WIDTH) or gray.dtype != np.uint8:
        raise ValueError(
            f"image must be {IMAGE_HEIGHT}x{IMAGE_WIDTH} uint8, got {gray.shape} {gray.dtype}"
        )
    nibbles = gray >> 4
    return ((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).tobytes()


def unpack_image(data: bytes) -> np.ndarray:
    """36,864 bytes -> 288 x 256 uint8, each nibble scaled by 17 so 0xF is 255."""
    if len(data) != IMAGE_BYTES:
        raise ProtocolError(f"image data is {len(data)} bytes, expected {IMAGE_BYTES}")
    packed = np.frombuffer(data, dtype=np.uint8).reshape(IMAGE_HEIGHT, IMAGE_WIDTH // 2)
    gray = np.empty((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    gray[:, 0::2] = packed >> 4
    gray[:, 1::2] = packed & 0x0F
    return gray * np.uint8(17)


def quantize_image(gray: np.ndarray) -> np.ndarray:
    """What an image looks like after a trip through the sensor's 4-bit buffer."""
    return unpack_image(pack_image(gray))
