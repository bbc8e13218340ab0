"""The Evolis-style card printer command protocol, bytes in and messages out, no I/O.

Both ends use this module: ``device.py`` (the host) encodes commands and reads replies with
``ReplyReader``; an emulator (the printer) reads commands with ``CommandReader``, checks
them with ``command_problem`` and answers with ``encode_reply`` / ``encode_error``. The
golden transcripts in ``tests/printer/transcripts`` pin the bytes.

Framing. A command is ``ESC mnemonic [";" param]... CR``, e.g. ``\\x1bPr;ymcko\\r``; every
command gets exactly one reply, ASCII text ended by CR. There is no length field, checksum
or sequence number: a reply belongs to a command only by arriving next, which is why the
host discards stale input before each command. Two commands carry data after their
parameters: ``Db`` a panel bitmap, binary, whose length follows from its level count (so
the bitmap may hold ESC and CR bytes: the reader counts them, it does not scan them), and
``Dm`` a magnetic track as text. Text parameters are printable ASCII without ``;``.

Commands (host -> printer)          meaning                                 reply
  Rfv                               firmware version                        "1.2.3"
  Rsn                               serial number                           "E0123456"
  Rtp                               model                                   "Evolis Primacy"
  Rr                                ribbon type loaded                      "ymcko"
  Pr;<ymcko|ko|kb>                  ribbon type to print with               OK
  Pmi;<F|M|B>                       card input: feeder, manual slot, both   OK
  Pem;<0|2>                         error management: 2 = the host decides  OK
  Ss                                start a print sequence                  OK
  Sr / Sv                           print the front / back (Sv turns it)    OK
  Db;<panel>;<levels>;<bitmap>      one ribbon panel, see Panels            OK
  Se                                end the sequence: print and eject       OK
  Si                                insert a card from the input            OK
  Sis / Sic                         park the card at the contact /          OK
                                    contactless station (inserts one)
  Ser                               reject the card (to the reject box)     OK
  Dm;<1|2|3>;<data>                 magnetic track data to write            OK
  Smw                               write the downloaded tracks             OK
  Smr;<1|2|3>                       read a magnetic track                   the track's data
  Rlr;p                             card position                           OK (no card) | CARD |
                                                                            SMART CARD |
                                                                            CONTACTLESS CARD
  Rse;o                             cover sensor                            OPEN | CLOSED
  Rse;f                             feeder sensor                           CARD | NO CARD
  Rcr                               ribbon remaining, in prints             "180"

Error replies ``ERR;<code>`` and what they become on the host (``PrinterError.code``):
  1  command unknown                printer_command      a driver/firmware mismatch
  2  parameter refused              printer_parameter    a driver bug or unsupported option
  T  timeout / mechanical (jam)     printer_jam          reject the card, then try another
  C  cover open                     printer_cover_open   a person closes the cover
  F  feeder (no card fed)           printer_feeder       a person loads or frees the cards
  R  ribbon ended, missing, wrong   printer_ribbon       a person replaces the ribbon

Panels. A card side is printed panel by panel in ribbon order Y, M, C, K, O. Each panel is
a CARD_HEIGHT x CARD_WIDTH (648 x 1016) array of levels (Evolis bitmaps include the bleed
around the 1011 x 638 px CR80 card at 300 dpi), row-major, each pixel packed MSB-first into
the bits its level count needs and rows following one another without padding:

  panel     levels        bits a pixel    Db data bytes
  y, m, c   32 / 64 / 128  5 / 6 / 7       411,480 / 493,776 / 576,072
  k, o      2              1               82,296

A level is the amount of that panel's ink (or of overlay): 0 none, levels - 1 full.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from station.errors import DeviceError, ProtocolError

ESC = b"\x1b"
CR = b"\r"
SEPARATOR = ";"

# Between ESC and CR of a text command. The longest legal one is a track 3 download
# ("Dm;3;" + 104 characters); a longer run is garbage, and refusing it bounds the buffer.
MAX_TEXT = 256
MAX_REPLY = 256

CARD_WIDTH = 1016
CARD_HEIGHT = 648

OK = "OK"

_MNEMONIC = re.compile(r"[A-Za-z]{1,8}")


# --- panels ----------------------------------------------------------------------------

RIBBON_ORDER = "ymcko"
PANEL_LEVELS: Mapping[str, tuple[int, ...]] = {
    "y": (32, 64, 128),
    "m": (32, 64, 128),
    "c": (32, 64, 128),
    "k": (2,),
    "o": (2,),
}
BITS_PER_PIXEL: Mapping[int, int] = {2: 1, 32: 5, 64: 6, 128: 7}

# Ribbon types Pr accepts and the panels each carries: colour with black and overlay,
# black and overlay, black alone.
RIBBON_PANELS: Mapping[str, str] = {"ymcko": "ymcko", "ko": "ko", "kb": "k"}


class Panel(NamedTuple):
    """One ribbon panel of a card side: its letter, level count and levels (uint8, H x W)."""

    letter: str
    levels: int
    bitmap: np.ndarray


def bits_per_pixel(levels: int) -> int:
    try:
        return BITS_PER_PIXEL[levels]
    except KeyError:
        raise ValueError(f"{levels} levels is not one of {sorted(BITS_PER_PIXEL)}") from None


def panel_bytes(levels: int, width: int = CARD_WIDTH, height: int = CARD_HEIGHT) -> int:
    """The exact length of a panel's Db data: what lets a reader skip over its bytes."""
    return width * height * bits_per_pixel(levels) // 8


def _byte_plan(bits: int) -> list[list[tuple[int, int]]]:
    """Eight pixels of ``bits`` bits are ``bits`` whole bytes. For each of those bytes, the
    pixels with bits in it and how far right each is shifted to get there (a negative
    shift is to the left; uint8 arithmetic drops what overflows into the byte before)."""
    plan = []
    for k in range(bits):
        low, high = 8 * k, 8 * k + 8
        plan.append([(i, bits * (i + 1) - high) for i in range(8) if bits * i < high and bits * (i + 1) > low])
    return plan


_BYTE_PLANS = {bits: _byte_plan(bits) for bits in (5, 6, 7)}


def pack_panel(levels_array: np.ndarray, levels: int) -> bytes:
    """Levels (uint8, H x W, each below ``levels``) -> Db data, MSB-first, no row padding."""
    bits = bits_per_pixel(levels)
    if levels_array.ndim != 2 or levels_array.dtype != np.uint8:
        raise ValueError(f"a panel is a 2-D uint8 array, got {levels_array.shape} {levels_array.dtype}")
    if levels_array.size * bits % 8:
        raise ValueError(f"{levels_array.size} pixels of {bits} bits do not fill whole bytes")
    if levels_array.size and int(levels_array.max()) >= levels:
        raise ValueError(
            f"panel holds level {int(levels_array.max())}, but {levels} levels go from 0 to {levels - 1}"
        )
    pixels = levels_array.reshape(-1)
    if bits == 1:
        return np.packbits(pixels).tobytes()
    # Byte by byte of each 8-pixel group, in uint8 shifts and ors over whole columns of
    # groups (under a millisecond a colour panel; a 64-bit word a group took four).
    count = pixels.size
    if count % 8:
        pixels = np.concatenate([pixels, np.zeros(8 - count % 8, np.uint8)])
    groups = pixels.reshape(-1, 8)
    out = np.empty((len(groups), bits), np.uint8)
    byte, part = np.empty(len(groups), np.uint8), np.empty(len(groups), np.uint8)
    for k, parts in enumerate(_BYTE_PLANS[bits]):
        byte.fill(0)
        for i, right in parts:
            if right >= 0:
                np.right_shift(groups[:, i], right, out=part)
            else:
                np.left_shift(groups[:, i], -right, out=part)
            byte |= part
        out[:, k] = byte
    return out.tobytes()[: count * bits // 8]


def unpack_panel(
    data: bytes, levels: int, width: int = CARD_WIDTH, height: int = CARD_HEIGHT
) -> np.ndarray:
    """Db data -> levels (uint8, height x width); ProtocolError when the length is wrong."""
    bits = bits_per_pixel(levels)
    expected = panel_bytes(levels, width, height)
    if len(data) != expected:
        raise ProtocolError(
            f"panel data of {len(data)} bytes, expected {expected} "
            f"for {width} x {height} at {levels} levels"
        )
    count = width * height
    if bits == 1:
        return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count).reshape(height, width)
    groups = -(-count // 8)  # the inverse of pack_panel, byte by byte of each group
    padded = np.zeros(groups * bits, np.uint8)
    padded[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    rows = padded.reshape(groups, bits)
    pixels = np.zeros((groups, 8), np.uint8)
    part = np.empty(groups, np.uint8)
    mask = np.uint8((1 << bits) - 1)
    for k, parts in enumerate(_BYTE_PLANS[bits]):
        for i, right in parts:
            if right >= 0:
                np.left_shift(rows[:, k], right, out=part)
            else:
                np.right_shift(rows[:, k], -right, out=part)
            part &= mask
            pixels[:, i] |= part
    return pixels.reshape(-1)[:count].reshape(height, width)


def check_panels(panels: Iterable[Sequence], ribbon: str | None = None) -> list[Panel]:
    """The panels of one card side, checked before a byte is sent: known letters in ribbon
    order without repeats, a level count each letter allows, card-sized uint8 arrays whose
    levels fit, and (when ``ribbon`` is known) only panels that ribbon carries."""
    checked = [Panel(*panel) for panel in panels]
    letters = "".join(panel.letter for panel in checked)
    if any(letter not in PANEL_LEVELS for letter in letters):
        raise ValueError(f"panels {letters!r}: known panels are {RIBBON_ORDER!r}")
    order = [RIBBON_ORDER.index(letter) for letter in letters]
    if order != sorted(set(order)):
        raise ValueError(f"panels {letters!r} are not in ribbon order {RIBBON_ORDER!r} without repeats")
    if ribbon is not None:
        carried = RIBBON_PANELS.get(ribbon)
        if carried is None:
            raise ValueError(f"ribbon {ribbon!r} is not one of {sorted(RIBBON_PANELS)}")
        missing = [letter for letter in letters if letter not in carried]
        if missing:
            raise ValueError(f"a {ribbon} ribbon has no {''.join(missing)} panel")
    for letter, levels, bitmap in checked:
        if levels not in PANEL_LEVELS[letter]:
            raise ValueError(f"panel {letter} takes {PANEL_LEVELS[letter]} levels, not {levels}")
        if bitmap.shape != (CARD_HEIGHT, CARD_WIDTH) or bitmap.dtype != np.uint8:
            raise ValueError(
                f"panel {letter} must be {CARD_HEIGHT} x {CARD_WIDTH} uint8, "
                f"got {bitmap.shape} {bitmap.dtype}"
            )
        if bitmap.size and int(bitmap.max()) >= levels:
            top = int(bitmap.max())
            raise ValueError(f"panel {letter} holds level {top}, beyond its {levels} levels")
    return checked


# --- commands (host -> printer) --------------------------------------------------------


class Kind(StrEnum):
    """What a command makes the printer do, and so how long the host waits for its reply."""

    QUERY = "query"  # answers from memory or a sensor
    SETUP = "setup"  # stores a parameter
    MOVE = "move"  # moves a card: feed, turn, park, reject, magnetic read or write
    PANEL = "panel"  # stores a downloaded panel
    PRINT = "print"  # prints the sequence's panels and ejects the card


@dataclass(frozen=True)
class CommandSpec:
    meaning: str
    kind: Kind
    params: tuple[frozenset[str], ...] = ()  # the values each parameter may take
    data: bool = False  # followed by data (Db, Dm)


def _values(*values: str) -> frozenset[str]:
    return frozenset(values)


_TRACKS = _values("1", "2", "3")
_LEVEL_PARAMS = frozenset(str(levels) for levels in BITS_PER_PIXEL)
COMMANDS: Mapping[str, CommandSpec] = {
    "Rfv": CommandSpec("firmware version", Kind.QUERY),
    "Rsn": CommandSpec("serial number", Kind.QUERY),
    "Rtp": CommandSpec("model", Kind.QUERY),
    "Rr": CommandSpec("ribbon type", Kind.QUERY),
    "Pr": CommandSpec("set ribbon type", Kind.SETUP, (frozenset(RIBBON_PANELS),)),
    "Pmi": CommandSpec("set card input", Kind.SETUP, (_values("F", "M", "B"),)),
    "Pem": CommandSpec("set error management", Kind.SETUP, (_values("0", "2"),)),
    "Ss": CommandSpec("start sequence", Kind.MOVE),
    "Sr": CommandSpec("front side", Kind.SETUP),
    "Sv": CommandSpec("back side", Kind.MOVE),
    "Db": CommandSpec(
        "download panel",
        Kind.PANEL,
        (frozenset(PANEL_LEVELS), _LEVEL_PARAMS),
        data=True,
    ),
    "Se": CommandSpec("end sequence and eject", Kind.PRINT),
    "Si": CommandSpec("insert card", Kind.MOVE),
    "Sis": CommandSpec("card to contact station", Kind.MOVE),
    "Sic": CommandSpec("card to contactless station", Kind.MOVE),
    "Ser": CommandSpec("reject card", Kind.MOVE),
    "Dm": CommandSpec("download magnetic track", Kind.SETUP, (_TRACKS,), data=True),
    "Smw": CommandSpec("write magnetic tracks", Kind.MOVE),
    "Smr": CommandSpec("read magnetic track", Kind.MOVE, (_TRACKS,)),
    "Rlr": CommandSpec("card position", Kind.QUERY, (_values("p"),)),
    "Rse": CommandSpec("sensor", Kind.QUERY, (_values("o", "f"),)),
    "Rcr": CommandSpec("ribbon remaining", Kind.QUERY),
}

# ISO/IEC 7811 tracks: track 1 alphanumeric (6-bit set), 2 and 3 numeric (4-bit set), data
# characters without sentinels and LRC, which the encoder adds.
TRACK_LENGTHS: Mapping[str, int] = {"1": 76, "2": 37, "3": 104}
_TRACK_CHARACTERS: Mapping[str, re.Pattern[str]] = {
    "1": re.compile(r"[ !\"#$&'()*+,\-./0-9:<=>@A-Z\[\\\]^_]*"),
    "2": re.compile(r"[0-9=]*"),
    "3": re.compile(r"[0-9=]*"),
}


@dataclass(frozen=True, repr=False)
class Command:
    """One command: ``data`` is a Db panel's bitmap or a Dm track's text, else None."""

    mnemonic: str
    params: tuple[str, ...] = ()
    data: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))

    @property
    def label(self) -> str:
        """The command as an operator reads it in a log: ``Db;y;32``, ``Pr;ymcko``."""
        return SEPARATOR.join((self.mnemonic, *self.params))

    @property
    def kind(self) -> Kind:
        spec = COMMANDS.get(self.mnemonic)
        return spec.kind if spec is not None else Kind.QUERY

    def __repr__(self) -> str:
        data = "" if self.data is None else f", data=<{len(self.data)} bytes>"
        return f"Command({self.mnemonic!r}, {self.params!r}{data})"

    def encode(self) -> bytes:
        """The command's bytes; ValueError for anything the reader at the other end could
        not frame (a separator or control byte in a text, a bitmap of the wrong length)."""
        if not _MNEMONIC.fullmatch(self.mnemonic):
            raise ValueError(f"mnemonic {self.mnemonic!r} is not 1 to 8 ASCII letters")
        for param in self.params:
            _check_text(param, f"{self.mnemonic} parameter")
        text = self.label.encode("ascii")
        if self.data is None:
            body = text
        elif self.mnemonic == "Db":
            if len(self.params) != 2 or self.params[1] not in _LEVEL_PARAMS:
                raise ValueError(
                    f"Db takes a panel and a level count {sorted(BITS_PER_PIXEL)}, got {self.params}"
                )
            expected = panel_bytes(int(self.params[1]))
            if len(self.data) != expected:
                raise ValueError(f"{self.label} carries {len(self.data)} bytes, expected {expected}")
            return ESC + text + b";" + bytes(self.data) + CR
        elif self.mnemonic == "Dm":
            _check_text(self.data.decode("ascii", "replace"), "Dm track data")
            body = text + b";" + bytes(self.data)
        else:
            raise ValueError(f"{self.mnemonic} carries no data")
        if len(body) > MAX_TEXT:
            raise ValueError(
                f"{self.mnemonic} command of {len(body)} bytes exceeds the protocol's {MAX_TEXT}"
            )
        return ESC + body + CR


def _check_text(text: str, what: str) -> None:
    if not all(" " <= ch <= "~" and ch != SEPARATOR for ch in text):
        raise ValueError(f"{what} {text!r} may hold only printable ASCII without {SEPARATOR!r}")


def command_problem(command: Command) -> tuple[ErrorCode, str] | None:
    """Printer side: why the printer refuses a well-framed command (the error code and a
    message), or None when it is valid. The host's builders refuse the same commands."""
    name = command.mnemonic
    spec = COMMANDS.get(name)
    if spec is None:
        return ErrorCode.COMMAND, f"unknown command {name!r}"
    bad = ErrorCode.PARAMETER
    if len(command.params) != len(spec.params):
        return bad, f"{name} takes {len(spec.params)} parameters, got {len(command.params)}"
    for position, (value, allowed) in enumerate(zip(command.params, spec.params), 1):
        if value not in allowed:
            return bad, f"{name} parameter {position} is {value!r}, not one of {sorted(allowed)}"
    if spec.data != (command.data is not None):
        return bad, f"{name} {'needs' if spec.data else 'takes no'} data"
    if name == "Db":
        letter, levels = command.params[0], int(command.params[1])
        if levels not in PANEL_LEVELS[letter]:
            return bad, f"panel {letter} takes {PANEL_LEVELS[letter]} levels, not {levels}"
        if len(command.data) != panel_bytes(levels):
            return bad, f"panel {letter} carries {len(command.data)} bytes, not {panel_bytes(levels)}"
    if name == "Dm":
        track, text = command.params[0], command.data.decode("ascii", "replace")
        if len(text) > TRACK_LENGTHS[track] or not _TRACK_CHARACTERS[track].fullmatch(text):
            limit = TRACK_LENGTHS[track]
            return bad, f"track {track} takes up to {limit} characters of its set, got {text!r}"
    return None


def _checked(command: Command) -> Command:
    problem = command_problem(command)
    if problem is not None:
        raise ValueError(problem[1])
    return command


# Commands without parameters are values; those with parameters are checked builders.
READ_FIRMWARE = Command("Rfv")
READ_SERIAL = Command("Rsn")
READ_MODEL = Command("Rtp")
READ_RIBBON = Command("Rr")
START_SEQUENCE = Command("Ss")
FRONT_SIDE = Command("Sr")
BACK_SIDE = Command("Sv")
END_SEQUENCE = Command("Se")
INSERT_CARD = Command("Si")
TO_CONTACT_STATION = Command("Sis")
TO_CONTACTLESS_STATION = Command("Sic")
REJECT_CARD = Command("Ser")
WRITE_TRACKS = Command("Smw")
READ_CARD_POSITION = Command("Rlr", ("p",))
READ_COVER = Command("Rse", ("o",))
READ_FEEDER = Command("Rse", ("f",))
READ_RIBBON_REMAINING = Command("Rcr")

FEEDER, MANUAL, FEEDER_OR_MANUAL = "F", "M", "B"  # Pmi card inputs
HOST_MANAGES_ERRORS = "2"  # Pem: the printer reports an error and waits; the host decides


def set_ribbon(ribbon: str) -> Command:
    return _checked(Command("Pr", (ribbon,)))


def set_card_input(card_input: str = FEEDER) -> Command:
    return _checked(Command("Pmi", (card_input,)))


def set_error_management(mode: str = HOST_MANAGES_ERRORS) -> Command:
    return _checked(Command("Pem", (mode,)))


def download_panel(letter: str, levels: int, bitmap: np.ndarray) -> Command:
    (panel,) = check_panels([(letter, levels, bitmap)])
    return Command("Db", (panel.letter, str(panel.levels)), pack_panel(panel.bitmap, panel.levels))


def download_track(track: int, data: str) -> Command:
    return _checked(Command("Dm", (str(track),), data.encode("ascii", "replace")))


def read_track(track: int) -> Command:
    return _checked(Command("Smr", (str(track),)))


class CommandReader:
    """Printer side: feed it whatever the line delivered, get whole commands back.

    Bytes outside a command (noise before an ESC, the rest of a command broken by a stray
    ESC or control byte, a text command longer than MAX_TEXT, a Db whose level count is
    unknown so its length is too) are dropped and counted, never raised: a printer answers
    what it can frame and ignores the rest. The buffer holds at most one text command or
    one panel's data.
    """

    def __init__(self) -> None:
        self._text = bytearray()  # after ESC, up to CR or a Db's data
        self._in_command = False
        self._semicolons = 0
        self._db_head: tuple[str, str] | None = None
        self._data = bytearray()
        self._need = 0
        self.skipped_bytes = 0
        self.bad_commands = 0
        self.overlong_commands = 0

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a command."""
        return (1 + len(self._text) + len(self._data)) if self._in_command else 0

    def reset(self) -> None:
        self.skipped_bytes += self.pending
        self._clear()

    def feed(self, data: bytes) -> list[Command]:
        data = bytes(data)
        commands: list[Command] = []
        i, end = 0, len(data)
        while i < end:
            if self._db_head is not None:
                i = self._take_data(data, i, commands)
            elif self._in_command:
                i = self._take_text(data, i, commands)
            else:
                start = data.find(ESC, i)
                if start < 0:
                    self.skipped_bytes += end - i
                    break
                self.skipped_bytes += start - i
                self._in_command = True
                i = start + 1
        return commands

    def _clear(self) -> None:
        self._text.clear()
        self._data.clear()
        self._in_command = False
        self._semicolons = 0
        self._db_head = None

    def _drop(self) -> None:
        self.bad_commands += 1
        self.reset()

    def _take_text(self, data: bytes, i: int, commands: list[Command]) -> int:
        text = self._text
        while i < len(data):
            byte = data[i]
            if byte == 0x0D:
                command = _text_command(text.decode("ascii"))
                if command is None:
                    self._drop()
                    self.skipped_bytes += 1  # its CR
                else:
                    commands.append(command)
                    self._clear()
                return i + 1
            if byte == 0x1B:  # a new command starts: the one before is broken
                self._drop()
                self._in_command = True
                return i + 1
            if not 0x20 <= byte <= 0x7E:
                self._drop()
                return i  # counted as skipped on the way to the next ESC
            text.append(byte)
            i += 1
            if len(text) > MAX_TEXT:
                self.overlong_commands += 1
                self.reset()
                return i
            if byte == 0x3B:
                self._semicolons += 1
                if self._semicolons == 3 and text.startswith(b"Db;"):
                    self._start_data()
                    return i
        return i

    def _start_data(self) -> None:
        _, letter, levels, _ = self._text.decode("ascii").split(SEPARATOR)
        if levels not in _LEVEL_PARAMS:
            self._drop()
            return
        self._db_head = (letter, levels)
        self._need = panel_bytes(int(levels))

    def _take_data(self, data: bytes, i: int, commands: list[Command]) -> int:
        missing = self._need - len(self._data)
        if missing:
            take = min(missing, len(data) - i)
            self._data += data[i : i + take]
            return i + take
        if data[i] != 0x0D:  # the bitmap was longer than its level count says
            self._drop()
            return i
        assert self._db_head is not None
        commands.append(Command("Db", self._db_head, bytes(self._data)))
        self._clear()
        return i + 1


def _text_command(text: str) -> Command | None:
    mnemonic, *params = text.split(SEPARATOR)
    if not _MNEMONIC.fullmatch(mnemonic):
        return None
    if mnemonic == "Dm" and len(params) == 2:
        return Command(mnemonic, params[:1], params[1].encode("ascii"))
    return Command(mnemonic, params)


def decode_command(frame: bytes) -> Command:
    """Exactly one complete command; ProtocolError naming what is wrong otherwise."""
    reader = CommandReader()
    commands = reader.feed(frame)
    if len(commands) != 1 or reader.skipped_bytes or reader.pending:
        raise ProtocolError(
            f"not one complete command ({len(commands)} commands, {reader.skipped_bytes} bytes "
            f"skipped, {reader.pending} pending): {bytes(frame[:40])!r}"
        )
    return commands[0]


# --- replies (printer -> host) ---------------------------------------------------------


class ErrorCode(StrEnum):
    COMMAND = "1"
    PARAMETER = "2"
    MECHANICAL = "T"
    COVER = "C"
    FEEDER = "F"
    RIBBON = "R"


class Condition(StrEnum):
    FEEDER_EMPTY = "feeder_empty"
    RIBBON_LOW = "ribbon_low"
    COVER_OPEN = "cover_open"
    JAM = "jam"
    RIBBON_ENDED = "ribbon_ended"
    WRONG_RIBBON = "wrong_ribbon"
    FEEDER_ERROR = "feeder_error"


WARNING_CONDITIONS = frozenset({Condition.FEEDER_EMPTY, Condition.RIBBON_LOW})
ERROR_CONDITIONS = frozenset(Condition) - WARNING_CONDITIONS


@dataclass(frozen=True)
class ErrorMeaning:
    code: str  # the bus-level code of the PrinterError
    condition: Condition | None
    message: str
    action: str  # what to do, for the operator or the engineer
    needs_person: bool  # nothing changes until someone acts at the printer
    rejects_card: bool  # the card in the printer is spoiled: reject it, then retry


ERRORS: Mapping[str, ErrorMeaning] = {
    ErrorCode.COMMAND: ErrorMeaning(
        "printer_command", None, "the printer does not know the command",
        "check that the printer model and firmware are supported", False, False,
    ),
    ErrorCode.PARAMETER: ErrorMeaning(
        "printer_parameter", None, "the printer refused a parameter of the command",
        "check the ribbon and options configured for this printer", False, False,
    ),
    ErrorCode.MECHANICAL: ErrorMeaning(
        "printer_jam", Condition.JAM, "the card jammed or a mechanism timed out",
        "reject the card and print on a new one; if the card stays stuck, open the cover and remove it",
        False, True,
    ),
    ErrorCode.COVER: ErrorMeaning(
        "printer_cover_open", Condition.COVER_OPEN, "the printer's cover is open",
        "close the cover", True, False,
    ),
    ErrorCode.FEEDER: ErrorMeaning(
        "printer_feeder", Condition.FEEDER_ERROR, "no card came from the card input",
        "load cards into the feeder and check that they are not stuck together", True, False,
    ),
    ErrorCode.RIBBON: ErrorMeaning(
        "printer_ribbon", Condition.RIBBON_ENDED, "the ribbon is ended, missing or of the wrong type",
        "replace the ribbon", True, False,
    ),
}
_UNKNOWN_ERROR = ErrorMeaning(
    "printer_error", None, "the printer reported an unknown error",
    "check the printer's display and its firmware version", False, False,
)

# The codes a PrinterError can carry; station/errors.CODES is the one list a console reads.
CODES: Mapping[str, str] = {
    meaning.code: f"{meaning.message}: {meaning.action}"
    for meaning in (*ERRORS.values(), _UNKNOWN_ERROR)
}


class PrinterError(DeviceError):
    """The printer answered a command with ``ERR;<code>``.

    ``error`` is the printer's raw code, ``code`` the bus-level one (``printer_jam``, …),
    ``condition`` the status condition it sets (or None), ``needs_person`` whether someone
    must act at the printer, ``rejects_card`` whether the card must be rejected first.
    ``retryable``: a later attempt may succeed (after the person or the reject).
    """

    def __init__(self, error: str, command: str | None = None, where: str = ""):
        meaning = ERRORS.get(error, _UNKNOWN_ERROR)
        self.error = error
        self.command = command
        self.condition = meaning.condition
        self.needs_person = meaning.needs_person
        self.rejects_card = meaning.rejects_card
        prefix = f"{where}: " if where else ""
        what = command or "command"
        super().__init__(
            f"{prefix}{what} failed: {meaning.message} (ERR;{error}); {meaning.action}",
            code=meaning.code,
            retryable=meaning.condition is not None,
        )
        self.details = {
            "condition": None if meaning.condition is None else str(meaning.condition),
            "needs_person": meaning.needs_person,
            "rejects_card": meaning.rejects_card,
        }


_ERROR_PREFIX = "ERR"


@dataclass(frozen=True)
class Reply:
    """One reply line without its CR: ``OK``, a value, or ``ERR;<code>``."""

    value: str

    @property
    def error(self) -> str | None:
        """The printer's error code of an error reply, else None."""
        head, _, code = self.value.partition(SEPARATOR)
        return code if head == _ERROR_PREFIX else None

    @property
    def ok(self) -> bool:
        return self.error is None

    def encode(self) -> bytes:
        return encode_reply(self.value)

    def raise_for_error(self, command: str | None = None, where: str = "") -> "Reply":
        error = self.error
        if error is not None:
            raise PrinterError(error, command, where)
        return self


def encode_reply(value: str) -> bytes:
    if not all(" " <= ch <= "~" for ch in value) or len(value) > MAX_REPLY:
        raise ValueError(f"reply {value!r} must be printable ASCII of at most {MAX_REPLY} characters")
    return value.encode("ascii") + CR


def encode_error(code: str) -> bytes:
    return encode_reply(f"{_ERROR_PREFIX}{SEPARATOR}{code}")


def decode_reply(line: bytes) -> Reply:
    """One reply line, with or without its CR; ProtocolError unless printable ASCII."""
    text = bytes(line).rstrip(CR).strip(b"\n")
    if not all(0x20 <= byte <= 0x7E for byte in text):
        raise ProtocolError(f"reply {text[:40]!r} is not printable ASCII")
    return Reply(text.decode("ascii"))


class ReplyReader:
    """Host side: feed it what the port delivered, get whole replies back.

    A line feed after the CR (some firmwares send CRLF) and empty lines are ignored; a line
    that is not printable ASCII or runs past MAX_REPLY without a CR is dropped and counted.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overlong = False  # dropping the rest of a line that ran past MAX_REPLY
        self.bad_replies = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def reset(self) -> None:
        self._buffer.clear()
        self._overlong = False

    def feed(self, data: bytes) -> list[Reply]:
        replies: list[Reply] = []
        self._buffer += data
        while True:
            end = self._buffer.find(CR)
            if end < 0:
                if len(self._buffer) > MAX_REPLY + 1:
                    if not self._overlong:
                        self.bad_replies += 1
                        self._overlong = True
                    self._buffer.clear()
                return replies
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._overlong:
                self._overlong = False
                continue
            line = line.strip(b"\n")
            if not line:
                continue
            if len(line) > MAX_REPLY:
                self.bad_replies += 1
                continue
            try:
                replies.append(decode_reply(line))
            except ProtocolError:
                self.bad_replies += 1


# --- status ----------------------------------------------------------------------------


class Level(StrEnum):
    READY = "ready"
    WARNING = "warning"
    ERROR = "error"


class Activity(StrEnum):
    IDLE = "idle"
    BUSY = "busy"  # a card move or a setup in flight
    PRINTING = "printing"
    ENCODING = "encoding"  # a card is parked at the contact or contactless station


class CardPosition(StrEnum):
    NONE = "none"
    INSIDE = "inside"  # in the printer, not at a station
    CONTACT = "contact"
    CONTACTLESS = "contactless"


CARD_POSITION_REPLIES: Mapping[str, CardPosition] = {
    OK: CardPosition.NONE,
    "CARD": CardPosition.INSIDE,
    "SMART CARD": CardPosition.CONTACT,
    "CONTACTLESS CARD": CardPosition.CONTACTLESS,
}
COVER_REPLIES: Mapping[str, bool] = {"OPEN": True, "CLOSED": False}  # -> cover open
FEEDER_REPLIES: Mapping[str, bool] = {"CARD": True, "NO CARD": False}  # -> cards loaded


def _lookup(table: Mapping[str, object], value: str, what: str):
    try:
        return table[value]
    except KeyError:
        raise ProtocolError(f"{what} reply {value!r} is not one of {sorted(table)}") from None


def parse_card_position(value: str) -> CardPosition:
    return _lookup(CARD_POSITION_REPLIES, value, "card position")


def parse_cover_open(value: str) -> bool:
    return _lookup(COVER_REPLIES, value, "cover sensor")


def parse_feeder_loaded(value: str) -> bool:
    return _lookup(FEEDER_REPLIES, value, "feeder sensor")


def parse_ribbon_remaining(value: str) -> int:
    if not value.isdigit():
        raise ProtocolError(f"ribbon remaining reply {value!r} is not a number of prints")
    return int(value)


@dataclass(frozen=True)
class PrinterStatus:
    level: Level
    conditions: frozenset[Condition]
    activity: Activity = Activity.IDLE
    card_position: CardPosition | None = None  # None: not known (the query failed)
    ribbon_remaining: int | None = None
    ribbon: str | None = None

    def to_dict(self) -> dict:
        return {
            "level": str(self.level),
            "conditions": sorted(str(c) for c in self.conditions),
            "activity": str(self.activity),
            "card_position": None if self.card_position is None else str(self.card_position),
            "ribbon_remaining": self.ribbon_remaining,
            "ribbon": self.ribbon,
        }


def printer_status(
    *,
    ribbon_low: int,
    cover: str | None = None,
    feeder: str | None = None,
    ribbon_remaining: str | None = None,
    ribbon: str | None = None,
    expected_ribbon: str | None = None,
    card_position: str | None = None,
    errors: Iterable[str] = (),
    activity: Activity = Activity.IDLE,
) -> PrinterStatus:
    """The status from the printer's replies (None where a query got no answer) and the
    error codes of recent failed commands.

    A sensor outranks a remembered error: ERR;C from a command an hour ago does not keep
    the printer in ERROR once the cover sensor reads CLOSED, nor an old ERR;F once the
    feeder reads loaded. Jam and ribbon errors have no sensor that clears them; the caller
    forgets them after a command that moved a card succeeds. ``ribbon_low``: prints remaining at or below which the ribbon is low.
    """
    conditions: set[Condition] = set()
    cover_open = None if cover is None else parse_cover_open(cover)
    if cover_open:
        conditions.add(Condition.COVER_OPEN)
    if feeder is not None and not parse_feeder_loaded(feeder):
        conditions.add(Condition.FEEDER_EMPTY)
    remaining = None if ribbon_remaining is None else parse_ribbon_remaining(ribbon_remaining)
    if remaining == 0:
        conditions.add(Condition.RIBBON_ENDED)
    elif remaining is not None and remaining <= ribbon_low:
        conditions.add(Condition.RIBBON_LOW)
    ribbon_type = ribbon.strip().lower() if ribbon else None
    if expected_ribbon and ribbon_type and ribbon_type != expected_ribbon.lower():
        conditions.add(Condition.WRONG_RIBBON)
    for error in errors:
        condition = ERRORS.get(error, _UNKNOWN_ERROR).condition
        if condition is Condition.COVER_OPEN and cover_open is False:
            continue
        if condition in (Condition.FEEDER_EMPTY, Condition.FEEDER_ERROR) and feeder is not None \
                and parse_feeder_loaded(feeder):
            continue  # cards were loaded since: the sensor says so
        if condition is Condition.RIBBON_ENDED and Condition.WRONG_RIBBON in conditions:
            continue  # the wrong ribbon is the better explanation of ERR;R
        if condition is not None:
            conditions.add(condition)
    if conditions & ERROR_CONDITIONS:
        level = Level.ERROR
    elif conditions:
        level = Level.WARNING
    else:
        level = Level.READY
    return PrinterStatus(
        level=level,
        conditions=frozenset(conditions),
        activity=Activity(activity),
        card_position=None if card_position is None else parse_card_position(card_position),
        ribbon_remaining=remaining,
        ribbon=ribbon_type,
    )
