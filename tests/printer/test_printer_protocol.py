"""The card printer protocol without I/O: golden bytes, panel packing, both readers, the
status model, and golden transcripts of whole driver sessions against a scripted printer.

Transcripts (tests/printer/transcripts/*.txt), one line per write, every byte escaped::

    # <scenario>: what the driver does
    > \\x1bPr;ymcko\\r                                    host -> printer
    < OK\\r                                              printer -> host
    > \\x1bDb;y;32;<411480 bytes sha256:…>\\r            a panel: its bitmap by length and hash
    # result: {...}                                     what the driver returned or raised

Printable ASCII stands for itself, CR is ``\\r``, LF ``\\n``, a backslash ``\\\\``, every
other byte ``\\xNN``. To
record them anew after an intended change: ``PRINTER_TRANSCRIPTS=record pytest tests/printer``
and review the diff.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.printer import protocol as pr
from drivers.printer.device import Printer
from drivers.printer.protocol import (
    CARD_HEIGHT,
    CARD_WIDTH,
    Activity,
    CardPosition,
    Command,
    CommandReader,
    Condition,
    Level,
    PrinterError,
    Reply,
    ReplyReader,
)
from station.errors import DeviceError, ProtocolError, StationError

pytestmark = pytest.mark.timeout(60)

TRANSCRIPTS = Path(__file__).parent / "transcripts"
RECORD = os.environ.get("PRINTER_TRANSCRIPTS") == "record"


def pattern(levels: int, seed: int) -> np.ndarray:
    """A deterministic card-sized panel that uses every level."""
    y, x = np.mgrid[0:CARD_HEIGHT, 0:CARD_WIDTH]
    return ((x * (seed + 1) + y * (seed + 2) + (x // (seed + 3)) * y) % levels).astype(np.uint8)


def reference_pack(values: np.ndarray, bits: int) -> bytes:
    """An independent packer: each level as a bit string, MSB first, concatenated."""
    bitstring = "".join(format(int(v), f"0{bits}b") for v in values.reshape(-1))
    return int(bitstring, 2).to_bytes(len(bitstring) // 8, "big") if bitstring else b""


# --- golden command bytes --------------------------------------------------------------

GOLDEN_COMMANDS = [
    (pr.set_ribbon("ymcko"), b"\x1bPr;ymcko\r"),  # REFERENCE.md's example
    (pr.set_ribbon("ko"), b"\x1bPr;ko\r"),
    (pr.set_ribbon("kb"), b"\x1bPr;kb\r"),
    (pr.set_error_management(), b"\x1bPem;2\r"),
    (pr.set_card_input(), b"\x1bPmi;F\r"),
    (pr.READ_FIRMWARE, b"\x1bRfv\r"),
    (pr.READ_SERIAL, b"\x1bRsn\r"),
    (pr.READ_MODEL, b"\x1bRtp\r"),
    (pr.READ_RIBBON, b"\x1bRr\r"),
    (pr.START_SEQUENCE, b"\x1bSs\r"),
    (pr.FRONT_SIDE, b"\x1bSr\r"),
    (pr.BACK_SIDE, b"\x1bSv\r"),
    (pr.END_SEQUENCE, b"\x1bSe\r"),
    (pr.INSERT_CARD, b"\x1bSi\r"),
    (pr.TO_CONTACT_STATION, b"\x1bSis\r"),
    (pr.TO_CONTACTLESS_STATION, b"\x1bSic\r"),
    (pr.REJECT_CARD, b"\x1bSer\r"),
    (pr.download_track(1, "DOE^JOHN"), b"\x1bDm;1;DOE^JOHN\r"),
    (pr.download_track(2, "1234=5678"), b"\x1bDm;2;1234=5678\r"),
    (pr.WRITE_TRACKS, b"\x1bSmw\r"),
    (pr.read_track(3), b"\x1bSmr;3\r"),
    (pr.READ_CARD_POSITION, b"\x1bRlr;p\r"),
    (pr.READ_COVER, b"\x1bRse;o\r"),
    (pr.READ_FEEDER, b"\x1bRse;f\r"),
    (pr.READ_RIBBON_REMAINING, b"\x1bRcr\r"),
]


@pytest.mark.parametrize(("command", "golden"), GOLDEN_COMMANDS, ids=[g[1:-1].decode() for _, g in GOLDEN_COMMANDS])
def test_command_bytes_are_exact_and_decode_back(command: Command, golden: bytes) -> None:
    assert command.encode() == golden
    assert pr.decode_command(golden) == command
    assert pr.command_problem(command) is None


def test_panel_command_frames_its_bitmap_between_header_and_cr() -> None:
    bitmap = pattern(32, 1)
    frame = pr.download_panel("y", 32, bitmap).encode()
    assert frame.startswith(b"\x1bDb;y;32;") and frame.endswith(b"\r")
    assert len(frame) == len(b"\x1bDb;y;32;") + 411_480 + 1
    decoded = pr.decode_command(frame)
    assert decoded.params == ("y", "32")
    assert np.array_equal(pr.unpack_panel(decoded.data, 32), bitmap)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: pr.set_ribbon("ymc"), "'ymc'"),
        (lambda: pr.set_card_input("X"), "'X'"),
        (lambda: pr.download_track(2, "ABC"), "track 2"),
        (lambda: pr.download_track(1, "x" * 77), "track 1"),
        (lambda: pr.download_track(4, "1"), "'4'"),
        (lambda: pr.read_track(0), "'0'"),
        (lambda: pr.download_panel("k", 32, pattern(32, 0)), "panel k takes (2,) levels"),
        (lambda: pr.download_panel("y", 32, pattern(64, 0)), "beyond its 32 levels"),
        (lambda: pr.download_panel("y", 32, np.zeros((10, 10), np.uint8)), "648 x 1016"),
        (lambda: Command("Pr", ("a;b",)).encode(), "without ';'"),
        (lambda: Command("Pr", ("a\rb",)).encode(), "printable ASCII"),
        (lambda: Command("Pr", ("a\x1bb",)).encode(), "printable ASCII"),
        (lambda: Command("P r").encode(), "mnemonic"),
        (lambda: Command("Db", ("k", "2"), b"\x00" * 10).encode(), "expected 82296"),
        (lambda: Command("Rfv", (), b"x").encode(), "no data"),
        (lambda: Command("Rfv", ("x" * 300,)).encode(), "exceeds"),
    ],
)
def test_bad_parameters_are_refused_before_encoding(build, words: str) -> None:
    with pytest.raises(ValueError) as info:
        build()
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (Command("Xyz"), "1"),
        (Command("Pr", ("ymc",)), "2"),
        (Command("Pr"), "2"),
        (Command("Rse", ("x",)), "2"),
        (Command("Db", ("k", "32"), bytes(pr.panel_bytes(32))), "2"),
        (Command("Db", ("y", "32")), "2"),
        (Command("Dm", ("2",), b"12AB"), "2"),
        (Command("Rfv"), None),
    ],
)
def test_printer_side_check_names_the_error_code(command: Command, code: str | None) -> None:
    problem = pr.command_problem(command)
    assert (problem[0] if problem else None) == code


def test_command_kinds_choose_the_wait() -> None:
    assert pr.READ_COVER.kind is pr.Kind.QUERY
    assert pr.TO_CONTACTLESS_STATION.kind is pr.Kind.MOVE
    assert pr.download_panel("k", 2, pattern(2, 0)).kind is pr.Kind.PANEL
    assert pr.END_SEQUENCE.kind is pr.Kind.PRINT
    printer = Printer(ScriptedPrinter(), query_timeout_s=1, move_timeout_s=2, panel_timeout_s=3,
                      print_timeout_s=4)
    commands = (pr.READ_COVER, pr.START_SEQUENCE, Command("Db"), pr.END_SEQUENCE)
    assert [printer.timeout_for(c) for c in commands] == [1, 2, 3, 4]


# --- panels ----------------------------------------------------------------------------


def test_pack_hand_computed_vectors() -> None:
    five = np.array([[0b10101, 0b00011, 0b11111, 0b00000, 0b10000, 0b01111, 0b11000, 0b00001]], np.uint8)
    assert pr.pack_panel(five, 32) == bytes.fromhex("A8FE083F01")
    one = np.array([[1, 0, 1, 1, 0, 0, 0, 1]], np.uint8)
    assert pr.pack_panel(one, 2) == b"\xb1"
    seven = np.array([[127, 0, 1, 64, 0, 0, 0, 0]], np.uint8)
    assert pr.pack_panel(seven, 128) == bytes.fromhex("FE000C00000000")


@pytest.mark.parametrize(("levels", "size"), [(2, 82_296), (32, 411_480), (64, 493_776), (128, 576_072)])
def test_card_panel_round_trip_at_every_level_count(levels: int, size: int) -> None:
    bitmap = np.random.default_rng(levels).integers(0, levels, (CARD_HEIGHT, CARD_WIDTH), dtype=np.uint8)
    data = pr.pack_panel(bitmap, levels)  # its speed is benchmarks/card_job.py's
    assert len(data) == size == pr.panel_bytes(levels)
    first_rows = reference_pack(bitmap[:4], pr.bits_per_pixel(levels))
    assert data[: len(first_rows)] == first_rows
    restored = pr.unpack_panel(data, levels)
    assert restored.dtype == np.uint8 and restored.shape == (CARD_HEIGHT, CARD_WIDTH)
    assert np.array_equal(restored, bitmap)


@settings(max_examples=150, deadline=None)
@given(
    levels=st.sampled_from([2, 32, 64, 128]),
    width=st.sampled_from([8, 16, 24]),
    height=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_matches_an_independent_packer(levels: int, width: int, height: int, seed: int) -> None:
    bitmap = np.random.default_rng(seed).integers(0, levels, (height, width), dtype=np.uint8)
    data = pr.pack_panel(bitmap, levels)
    assert data == reference_pack(bitmap, pr.bits_per_pixel(levels))
    assert np.array_equal(pr.unpack_panel(data, levels, width, height), bitmap)


def test_unpack_refuses_a_wrong_length_and_pack_a_level_too_high() -> None:
    with pytest.raises(ProtocolError, match="82295 bytes, expected 82296"):
        pr.unpack_panel(bytes(82_295), 2)
    with pytest.raises(ValueError, match="level 2"):
        pr.pack_panel(np.full((1, 8), 2, np.uint8), 2)
    with pytest.raises(ValueError, match="levels"):
        pr.pack_panel(np.zeros((1, 8), np.uint8), 16)


def test_check_panels_wants_ribbon_order_and_the_ribbon_s_panels() -> None:
    k, o, y = ("k", 2, pattern(2, 0)), ("o", 2, pattern(2, 1)), ("y", 64, pattern(64, 0))
    assert [p.letter for p in pr.check_panels([y, k, o], "ymcko")] == ["y", "k", "o"]
    with pytest.raises(ValueError, match="ribbon order"):
        pr.check_panels([o, k])
    with pytest.raises(ValueError, match="ribbon order"):
        pr.check_panels([k, k])
    with pytest.raises(ValueError, match="a ko ribbon has no y panel"):
        pr.check_panels([y, k], "ko")
    with pytest.raises(ValueError, match="known panels"):
        pr.check_panels([("w", 2, pattern(2, 0))])


# --- the printer-side command reader ---------------------------------------------------


def tricky_k_panel() -> Command:
    """A k panel whose bitmap is full of ESC, CR and ';' bytes."""
    data = (b"\x1b\r;\x1bRfv\r" * (82_296 // 8 + 1))[:82_296]
    return Command("Db", ("k", "2"), data)


def test_reader_counts_panel_bytes_instead_of_scanning_them() -> None:
    panel = tricky_k_panel()
    reader = CommandReader()
    commands = reader.feed(pr.READ_COVER.encode() + panel.encode() + pr.END_SEQUENCE.encode())
    assert commands == [pr.READ_COVER, panel, pr.END_SEQUENCE]
    assert (reader.skipped_bytes, reader.bad_commands, reader.pending) == (0, 0, 0)


def test_reader_skips_noise_and_broken_commands_and_counts_them() -> None:
    reader = CommandReader()
    stream = (
        b"noise"  # 5 bytes before any ESC
        + b"\x1bRf"  # broken by the next ESC: 3 bytes
        + b"\x1bRfv\r"
        + b"\x1bR\x00v\r"  # a control byte inside: ESC R dropped, then 3 more skipped
        + b"\x1b9x\r"  # not a mnemonic: 4 bytes
        + b"\x1bRsn\r"
    )
    assert reader.feed(stream) == [pr.READ_FIRMWARE, pr.READ_SERIAL]
    assert reader.skipped_bytes == 5 + 3 + 5 + 4
    assert reader.bad_commands == 3


def test_reader_bounds_an_overlong_command() -> None:
    reader = CommandReader()
    assert reader.feed(b"\x1bPr;" + b"y" * 10_000) == []
    assert reader.overlong_commands == 1
    assert reader.pending == 0
    assert reader.feed(b"\r\x1bRcr\r") == [pr.READ_RIBBON_REMAINING]


def test_reader_drops_a_panel_of_unknown_length_or_without_its_cr() -> None:
    reader = CommandReader()
    assert reader.feed(b"\x1bDb;y;33;xyz\r\x1bRr\r") == [pr.READ_RIBBON]
    assert reader.bad_commands == 1
    too_long = b"\x1bDb;k;2;" + bytes(82_296) + b"!!\r"
    assert reader.feed(too_long + b"\x1bRr\r") == [pr.READ_RIBBON]
    assert reader.bad_commands == 2


def test_text_download_command_keeps_its_data_apart() -> None:
    assert CommandReader().feed(b"\x1bDb;y\r\x1bDm;2;12=34\r") == [
        Command("Db", ("y",)),
        Command("Dm", ("2",), b"12=34"),
    ]


SAMPLE_COMMANDS = [c for c, _ in GOLDEN_COMMANDS] + [Command("Xyz", ("1", "")), Command("Pr", ("ymc",))]


TRACK_TEXT = st.text(alphabet="0123456789=", max_size=37).map(lambda t: pr.download_track(2, t))


@st.composite
def panel_commands(draw) -> Command:
    seed = draw(st.integers(0, 2**32 - 1))
    data = np.random.default_rng(seed).integers(0, 256, pr.panel_bytes(2), dtype=np.uint8).tobytes()
    return Command("Db", ("k", "2"), data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=st.lists(st.one_of(st.sampled_from(SAMPLE_COMMANDS), TRACK_TEXT, panel_commands()), max_size=8),
    cuts=st.lists(st.integers(0, 10**6), max_size=30),
)
def test_any_split_of_a_command_stream_parses_to_the_same_commands(commands, cuts) -> None:
    stream = b"".join(c.encode() for c in commands)
    reader = CommandReader()
    parsed = [c for piece in split(stream, cuts) for c in reader.feed(piece)]
    assert parsed == commands
    assert (reader.skipped_bytes, reader.bad_commands, reader.pending) == (0, 0, 0)


@settings(max_examples=200, deadline=None)
@given(
    commands=st.lists(st.one_of(st.sampled_from(SAMPLE_COMMANDS), TRACK_TEXT), min_size=1, max_size=8),
    noise=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\x1b", b"")), min_size=9, max_size=9),
)
def test_noise_without_esc_between_commands_is_skipped_exactly(commands, noise) -> None:
    stream = b"".join(n + c.encode() for n, c in zip(noise, commands)) + noise[-1]
    reader = CommandReader()
    assert reader.feed(stream) == commands
    assert reader.skipped_bytes == sum(len(n) for n in noise[: len(commands)]) + len(noise[-1])


GARBAGE_PIECES = [b"\x1b", b"\r", b";", b"Db;", b"k;2;", b"y;32;", b"y;99;", b"Dm;1;", b"Rse", b"\x00", b"\xff", b"OK"]


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.one_of(st.sampled_from(GARBAGE_PIECES), st.binary(max_size=64)), max_size=60),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_garbage_never_raises_and_every_byte_is_accounted_for(pieces, cuts) -> None:
    garbage = b"".join(pieces)
    reader = CommandReader()
    commands = [c for piece in split(garbage, cuts) for c in reader.feed(piece)]
    # Each byte fed is in a command, was skipped, or waits for the rest of a command.
    assert len(garbage) == sum(len(c.encode()) for c in commands) + reader.skipped_bytes + reader.pending
    assert reader.pending <= 1 + pr.MAX_TEXT + pr.panel_bytes(128)
    reader.reset()
    assert reader.feed(pr.READ_COVER.encode()) == [pr.READ_COVER]


# --- replies ---------------------------------------------------------------------------


def test_reply_reader_splits_joins_and_tolerates_crlf() -> None:
    reader = ReplyReader()
    assert reader.feed(b"O") == []
    assert reader.feed(b"K\r1.2.") == [Reply("OK")]
    assert reader.feed(b"3\r\nCONTACTLESS CARD\r\n\rERR;C\r") == [
        Reply("1.2.3"),
        Reply("CONTACTLESS CARD"),
        Reply("ERR;C"),
    ]
    assert reader.pending == 0 and reader.bad_replies == 0


REPLY_VALUES = st.one_of(
    st.sampled_from(["OK", "ERR;C", "ERR;T", "CONTACTLESS CARD", "NO CARD", "1.2.3"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(REPLY_VALUES, max_size=10), cuts=st.lists(st.integers(0, 500), max_size=20))
def test_any_split_of_a_reply_stream_parses_to_the_same_replies(values, cuts) -> None:
    stream = b"".join(pr.encode_reply(v) for v in values)
    reader = ReplyReader()
    assert [r.value for piece in split(stream, cuts) for r in reader.feed(piece)] == values
    assert reader.pending == 0 and reader.bad_replies == 0


def test_reply_reader_drops_overlong_and_binary_lines() -> None:
    reader = ReplyReader()
    assert reader.feed(b"x" * 1000) == []
    assert reader.feed(b"y" * 10 + b"\rOK\r") == [Reply("OK")]
    assert reader.feed(b"\xff\xfe\rNO CARD\r") == [Reply("NO CARD")]
    assert reader.bad_replies == 2
    assert reader.pending == 0


def test_reply_encoding() -> None:
    assert pr.encode_reply("OK") == b"OK\r"
    assert pr.encode_error(pr.ErrorCode.RIBBON) == b"ERR;R\r"
    assert pr.decode_reply(b"ERR;T\r").error == "T"
    assert pr.decode_reply(b"180\r") == Reply("180") and Reply("180").ok
    with pytest.raises(ValueError):
        pr.encode_reply("two\rlines")
    with pytest.raises(ProtocolError):
        pr.decode_reply(b"\x00OK")


@pytest.mark.parametrize(
    ("code", "bus_code", "condition", "needs_person", "rejects_card", "retryable"),
    [
        ("1", "printer_command", None, False, False, False),
        ("2", "printer_parameter", None, False, False, False),
        ("T", "printer_jam", Condition.JAM, False, True, True),
        ("C", "printer_cover_open", Condition.COVER_OPEN, True, False, True),
        ("F", "printer_feeder", Condition.FEEDER_ERROR, True, False, True),
        ("R", "printer_ribbon", Condition.RIBBON_ENDED, True, False, True),
        ("Z", "printer_error", None, False, False, False),
    ],
)
def test_error_replies_become_printer_errors(
    code, bus_code, condition, needs_person, rejects_card, retryable
) -> None:
    with pytest.raises(PrinterError) as info:
        pr.decode_reply(pr.encode_error(code)).raise_for_error("Se", "/dev/ttyUSB0")
    error = info.value
    assert isinstance(error, DeviceError) and isinstance(error, StationError)
    assert (error.code, error.condition, error.needs_person, error.rejects_card, error.retryable) == (
        bus_code, condition, needs_person, rejects_card, retryable,
    )
    assert error.message.startswith("/dev/ttyUSB0: Se failed: ") and f"(ERR;{code})" in error.message
    assert error.as_reply()["details"]["needs_person"] is needs_person
    assert bus_code in pr.CODES


# --- status ----------------------------------------------------------------------------

HEALTHY = dict(cover="CLOSED", feeder="CARD", ribbon_remaining="180", ribbon="YMCKO",
               expected_ribbon="ymcko", card_position="OK")


@pytest.mark.parametrize(
    ("changes", "level", "conditions"),
    [
        ({}, Level.READY, set()),
        ({"feeder": "NO CARD"}, Level.WARNING, {Condition.FEEDER_EMPTY}),
        ({"ribbon_remaining": "25"}, Level.WARNING, {Condition.RIBBON_LOW}),
        ({"ribbon_remaining": "26"}, Level.READY, set()),
        ({"ribbon_remaining": "0"}, Level.ERROR, {Condition.RIBBON_ENDED}),
        ({"cover": "OPEN"}, Level.ERROR, {Condition.COVER_OPEN}),
        ({"ribbon": "KO"}, Level.ERROR, {Condition.WRONG_RIBBON}),
        ({"ribbon": "KO", "errors": ["R"]}, Level.ERROR, {Condition.WRONG_RIBBON}),
        ({"errors": ["R"]}, Level.ERROR, {Condition.RIBBON_ENDED}),
        ({"errors": ["T"]}, Level.ERROR, {Condition.JAM}),
        ({"errors": ["F"], "feeder": "NO CARD"}, Level.ERROR, {Condition.FEEDER_ERROR, Condition.FEEDER_EMPTY}),
        ({"errors": ["F"]}, Level.READY, set()),  # cards were loaded since: the feeder sensor says so
        ({"errors": ["C"]}, Level.READY, set()),  # the sensor has seen the cover closed since
        ({"errors": ["C"], "cover": None}, Level.ERROR, {Condition.COVER_OPEN}),
        ({"errors": ["1", "2"]}, Level.READY, set()),
        ({"feeder": "NO CARD", "ribbon_remaining": "3"}, Level.WARNING, {Condition.FEEDER_EMPTY, Condition.RIBBON_LOW}),
    ],
)
def test_status_levels_and_conditions(changes, level, conditions) -> None:
    status = pr.printer_status(**{**HEALTHY, **changes}, ribbon_low=25)
    assert status.level is level
    assert status.conditions == conditions


def test_status_to_dict() -> None:
    status = pr.printer_status(**{**HEALTHY, "card_position": "CONTACTLESS CARD", "feeder": "NO CARD"},
                               activity=Activity.ENCODING, ribbon_low=25)
    assert status.card_position is CardPosition.CONTACTLESS
    assert status.to_dict() == {
        "level": "warning",
        "conditions": ["feeder_empty"],
        "activity": "encoding",
        "card_position": "contactless",
        "ribbon_remaining": 180,
        "ribbon": "ymcko",
    }
    unknown = pr.printer_status(ribbon_low=25)
    assert unknown.to_dict()["card_position"] is None and unknown.level is Level.READY


@pytest.mark.parametrize("field, value", [("cover", "AJAR"), ("feeder", "MAYBE"), ("ribbon_remaining", "-1"),
                                          ("card_position", "SOMEWHERE")])
def test_status_refuses_replies_outside_the_protocol(field: str, value: str) -> None:
    with pytest.raises(ProtocolError, match=repr(value)):
        pr.printer_status(**{**HEALTHY, field: value}, ribbon_low=25)


# --- golden transcripts of driver sessions ---------------------------------------------


class ScriptedPrinter:
    """The printer end as a Transport in memory: each command written is parsed with the
    protocol's own reader and answered at once from ``answers`` (label -> reply, or a list
    used in turn), ``OK`` otherwise, ERR;1 / ERR;2 for a command the printer would refuse.
    ``wire`` keeps every write and every reply, in order."""

    description = "scripted printer"

    def __init__(self, answers: dict[str, str | list[str]] | None = None):
        self.answers = {k: list(v) if isinstance(v, list) else v for k, v in (answers or {}).items()}
        self.reader = CommandReader()
        self.wire: list[tuple[str, bytes]] = []
        self._outbox = bytearray()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.wire.append((">", bytes(data)))
        for command in self.reader.feed(data):
            problem = pr.command_problem(command)
            if problem is not None:
                reply = pr.encode_error(problem[0])
            else:
                answer = self.answers.get(command.label, "OK")
                if isinstance(answer, list):
                    answer = answer.pop(0) if answer else "OK"
                reply = pr.encode_reply(answer)
            self.wire.append(("<", reply))
            self._outbox += reply

    def read(self, timeout_s: float) -> bytes:
        data = bytes(self._outbox)
        self._outbox.clear()
        return data


_NAMED = {0x0D: "\\r", 0x0A: "\\n", 0x5C: "\\\\"}


def escape(data: bytes) -> str:
    return "".join(
        _NAMED.get(b) or (chr(b) if 0x20 <= b <= 0x7E else f"\\x{b:02x}") for b in data
    )


def render(data: bytes) -> str:
    """One write as a transcript line; a panel's bitmap by its length and hash."""
    if data.startswith(b"\x1bDb;") and len(data) > pr.MAX_TEXT:
        head = data.index(b";", data.index(b";", 4) + 1) + 1
        tail = len(data) - 1 if data.endswith(b"\r") else len(data)
        body = data[head:tail]
        digest = hashlib.sha256(body).hexdigest()
        return f"{escape(data[:head])}<{len(body)} bytes sha256:{digest}>{escape(data[tail:])}"
    return escape(data)


HEALTHY_ANSWERS = {
    "Rtp": "Evolis Primacy", "Rsn": "E0123456", "Rfv": "1.2.3", "Rr": "YMCKO",
    "Rse;o": "CLOSED", "Rse;f": "CARD", "Rcr": "180", "Rlr;p": "OK",
}


def outcome(call) -> object:
    try:
        result = call()
    except PrinterError as exc:
        return {"error": exc.code, "needs_person": exc.needs_person, "rejects_card": exc.rejects_card}
    return result.to_dict() if hasattr(result, "to_dict") else result


def scenario_identify(printer: Printer) -> list:
    return [outcome(printer.identify)]


def scenario_setup_and_status(printer: Printer) -> list:
    return [outcome(lambda: printer.setup("ymcko")), outcome(printer.status)]


def scenario_print_one_side(printer: Printer) -> list:
    printer.setup("ko")
    front = [("k", 2, pattern(2, 1)), ("o", 2, pattern(2, 2))]
    return [outcome(lambda: printer.print_card(front))]


TWO_SIDES_FRONT = [("y", 32, 3), ("m", 64, 4), ("c", 128, 5), ("k", 2, 6), ("o", 2, 7)]


def scenario_print_two_sides(printer: Printer, changed_pixel: bool = False) -> list:
    printer.setup("ymcko")
    front = [(letter, levels, pattern(levels, seed)) for letter, levels, seed in TWO_SIDES_FRONT]
    if changed_pixel:
        front[2][2][600, 1000] ^= 1
    back = [("k", 2, pattern(2, 8))]
    return [outcome(lambda: printer.print_card(front, back))]


def scenario_encode_then_print(printer: Printer) -> list:
    printer.setup("ko")
    results = [outcome(printer.move_to_contactless), outcome(printer.status)]
    results.append(outcome(lambda: printer.print_card([("k", 2, pattern(2, 9))])))
    results.append(outcome(printer.status))
    return results


def scenario_cover_open(printer: Printer) -> list:
    printer.setup("ko")
    results = [outcome(lambda: printer.print_card([("k", 2, pattern(2, 10))])), outcome(printer.status)]
    results.append(outcome(printer.status))  # the cover has been closed since
    return results


def scenario_jam_then_reject(printer: Printer) -> list:
    printer.setup("ko")
    results = [outcome(lambda: printer.print_card([("k", 2, pattern(2, 11))])), outcome(printer.status)]
    results += [outcome(printer.reject), outcome(printer.status)]
    return results


SCENARIOS = {
    "identify": ("identify(): model, serial, firmware, ribbon", scenario_identify, {}),
    "setup_and_status": ("setup('ymcko') then status() of a ready printer", scenario_setup_and_status, {}),
    "print_one_side": ("a one-sided print on a ko ribbon", scenario_print_one_side, {}),
    "print_two_sides": ("a two-sided print, ymcko front and k back", scenario_print_two_sides, {}),
    "encode_then_print": (
        "card to the contactless station for encoding, then printed and ejected",
        scenario_encode_then_print,
        {"Rlr;p": ["CONTACTLESS CARD", "OK"], "Rr": "KO"},
    ),
    "cover_open": (
        "Ss refused with the cover open; status before and after the cover is closed",
        scenario_cover_open,
        {"Ss": ["ERR;C"], "Rse;o": ["OPEN", "CLOSED"], "Rr": "KO"},
    ),
    "jam_then_reject": (
        "the card jams while printing; status shows the jam until the card is rejected",
        scenario_jam_then_reject,
        {"Se": ["ERR;T"], "Rlr;p": ["CARD", "OK"], "Rr": "KO"},
    ),
}


def run_scenario(name: str, **options) -> str:
    what, scenario, answers = SCENARIOS[name]
    printer_end = ScriptedPrinter({**HEALTHY_ANSWERS, **answers})
    printer = Printer(printer_end, query_timeout_s=0.5)
    results = scenario(printer, **options)
    lines = [f"# {name}: {what}"]
    lines += [f"{direction} {render(data)}" for direction, data in printer_end.wire]
    lines += [f"# result: {json.dumps(result, sort_keys=True)}" for result in results]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_driver_session_matches_its_golden_transcript(name: str) -> None:
    path = TRANSCRIPTS / f"{name}.txt"
    text = run_scenario(name)
    if RECORD:
        TRANSCRIPTS.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: record it with PRINTER_TRANSCRIPTS=record"
    assert text == path.read_text(), f"{name}: the driver's bytes differ from {path}"


def test_transcripts_hold_the_reference_vector_and_every_panel() -> None:
    setup = (TRANSCRIPTS / "setup_and_status.txt").read_text().splitlines()
    assert "> \\x1bPr;ymcko\\r" in setup
    lines = (TRANSCRIPTS / "print_two_sides.txt").read_text().splitlines()
    two_sides = [line for line in lines if line.startswith(">")]
    assert [line.split(";")[0:3] for line in two_sides if "Db;" in line] == [
        ["> \\x1bDb", "y", "32"], ["> \\x1bDb", "m", "64"], ["> \\x1bDb", "c", "128"],
        ["> \\x1bDb", "k", "2"], ["> \\x1bDb", "o", "2"], ["> \\x1bDb", "k", "2"],
    ]
    assert two_sides[-1] == "> \\x1bSe\\r"


def test_one_changed_pixel_changes_the_transcript() -> None:
    golden = (TRANSCRIPTS / "print_two_sides.txt").read_text()
    changed = run_scenario("print_two_sides", changed_pixel=True)
    differing = [a for a, b in zip(golden.splitlines(), changed.splitlines()) if a != b]
    assert len(differing) == 1 and differing[0].startswith("> \\x1bDb;c;128;<576072 bytes sha256:")
