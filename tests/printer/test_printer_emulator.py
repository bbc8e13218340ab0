"""The printer emulator, driven by the station's own driver over a pseudo-terminal: identity
and status, a rendered card printed on both sides and written out for inspection, the
contactless hooks, every fault ending in its documented error and state, unplug and replug,
the control channel, and the ``stationctl emulate printer`` process."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivers.emulation import ControlChannel, send_command
from drivers.printer import protocol as pr
from drivers.printer.device import Printer
from drivers.printer.emulator import USAGE, Faults, PrinterEmulator, PrinterState, panel_image
from drivers.printer.panels import recombine, separate
from drivers.printer.protocol import CARD_HEIGHT, CARD_WIDTH, CardPosition, Command, Condition, Level, PrinterError
from drivers.printer.transport import transport_for
from station.cardface import CardFace
from station.errors import DeviceError
from tests.printer.cards import make_card

pytestmark = pytest.mark.timeout(60)

TRANSCRIPTS = Path(__file__).parent / "transcripts"
STATIONCTL = Path(sys.executable).parent / "stationctl"
BLANK = np.zeros((CARD_HEIGHT, CARD_WIDTH), np.uint8)
FRONT = [("k", 2, BLANK)]  # the cheapest card side: one black panel, no ink
@pytest.fixture
def make_emulator():
    started: list[PrinterEmulator] = []

    def make(**kwargs) -> PrinterEmulator:
        emulator = PrinterEmulator(**kwargs)
        emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def connect():
    opened: list[Printer] = []

    def open_printer(emulator: PrinterEmulator, ribbon: str | None = "ymcko") -> Printer:
        printer = Printer(transport_for(emulator.path), query_timeout_s=2.0, move_timeout_s=5.0,
                          panel_timeout_s=5.0, print_timeout_s=10.0)
        printer.open()
        opened.append(printer)
        if ribbon is not None:
            printer.setup(ribbon)
        return printer

    yield open_printer
    for printer in opened:
        printer.close()


def refused(call, *args) -> PrinterError:
    with pytest.raises(PrinterError) as caught:
        call(*args)
    return caught.value


# --- identity, status and printing ---------------------------------------------------------

def test_identify_and_status(make_emulator, connect):
    emulator = make_emulator(serial="EMU42", firmware="9.9", ribbon="ko", ribbon_prints=7)
    printer = connect(emulator, ribbon=None)
    identity = printer.identify()
    assert identity.to_dict() == {"model": "Evolis Primacy 2 (emulated)", "serial": "EMU42",
                                  "firmware": "9.9", "ribbon": "ko"}
    status = printer.status()
    assert status.level is Level.WARNING and status.conditions == {Condition.RIBBON_LOW}  # 7 <= 25
    assert status.card_position is CardPosition.NONE
    assert (status.ribbon, status.ribbon_remaining) == ("ko", 7)


def test_a_rendered_card_is_printed_on_both_sides_as_sent(make_emulator, connect, tmp_path):
    face = CardFace.from_config(etc=tmp_path / "etc")
    front, back = face.render(make_card())
    front_panels, back_panels = separate(front), separate(back)
    emulator = make_emulator(out_dir=tmp_path / "out", ribbon_prints=10)
    printer = connect(emulator)

    printer.print_card(front_panels, back_panels)

    written = tmp_path / "out" / "card-0001"
    assert sorted(p.name for p in written.iterdir()) == sorted(
        [f"front-{c}.png" for c in "ymcko"] + ["front.png", "back.png"] + [f"back-{c}.png" for c in "ymcko"])
    assert not list((tmp_path / "out").glob(".*"))  # no temporary directory left
    for name, side, panels in (("front", front, front_panels), ("back", back, back_panels)):
        looks = np.asarray(Image.open(written / f"{name}.png"))
        assert np.array_equal(looks, recombine(panels))
        # Within the 32-level quantisation of Y, M and C: half a step plus rounding.
        error = np.abs(looks.astype(int) - side.composite().astype(int))
        assert error.max() <= 255 / 31 / 2 + 1
    yellow = np.asarray(Image.open(written / "front-y.png"))
    assert np.array_equal(yellow, (front_panels[0].bitmap.astype(int) * 255 // 31).astype(np.uint8))
    black = np.asarray(Image.open(written / "back-k.png"))
    assert set(np.unique(black)) <= {0, 255} and np.array_equal(black == 255, back.black)

    card = emulator.last_card
    assert card.number == 1 and [p.letter for p in card.back] == list("ymcko")
    assert all(np.array_equal(a.bitmap, b.bitmap) for a, b in zip(card.front, front_panels))
    assert printer.status().card_position is CardPosition.NONE
    state = emulator.status()
    assert state["card_position"] == "ejected" and state["ribbon"]["remaining"] == 9
    assert state["counters"] == {"fed": 1, "printed": 1, "rejected": 0, "ejected": 1}


def test_panel_images_scale_levels_to_grey():
    levels = np.array([[0, 1, 30, 31]], np.uint8)
    assert panel_image(pr.Panel("y", 32, levels)).tolist() == [[0, 8, 246, 255]]
    assert panel_image(pr.Panel("o", 2, np.array([[0, 1]], np.uint8))).tolist() == [[0, 255]]


def test_mechanism_time_is_spent_per_move_and_print(make_emulator, connect):
    emulator = make_emulator(move_s=0.2, print_s=0.3)
    printer = connect(emulator)
    started = time.monotonic()
    printer.move_to_contactless()  # one command: feed and park
    assert 0.2 <= time.monotonic() - started < 1.0
    started = time.monotonic()
    printer.print_card(FRONT)  # Ss moves the card to the head, Se prints
    assert time.monotonic() - started >= 0.5


# --- the contactless station ---------------------------------------------------------------

def test_contactless_hooks_follow_the_card(make_emulator, connect):
    events: list[tuple[str, int]] = []
    emulator = make_emulator(on_contactless=lambda n: events.append(("arrived", n)),
                             on_leave_contactless=lambda n: events.append(("left", n)))
    printer = connect(emulator)
    printer.print_card(FRONT)  # card 1, never at the station
    printer.command(pr.INSERT_CARD)
    assert events == [] and emulator.state.card.number == 2
    printer.move_to_contactless()
    assert events == [("arrived", 2)]
    assert printer.status().card_position is CardPosition.CONTACTLESS
    printer.move_to_contactless()  # already there: no second arrival
    assert events == [("arrived", 2)]

    printer.print_card(FRONT)
    assert events == [("arrived", 2), ("left", 2)]
    assert emulator.last_card.number == 2 and emulator.state.counters.fed == 2

    printer.move_to_contactless()
    printer.reject()
    printer.move_to_contactless()
    printer.eject()
    assert events[2:] == [("arrived", 3), ("left", 3), ("arrived", 4), ("left", 4)]
    assert emulator.state.hopper == 1 and emulator.state.counters.printed == 2


def test_a_failing_hook_is_logged_not_fatal(make_emulator, connect, caplog):
    def broken(number: int) -> None:
        raise RuntimeError(f"encoder lost card {number}")

    emulator = make_emulator(on_contactless=broken, on_leave_contactless=broken)
    printer = connect(emulator)
    printer.move_to_contactless()
    printer.print_card(FRONT)
    assert emulator.stats.hook_failures == 2 and emulator.last_card.number == 1
    assert "encoder lost card 1" in caplog.text
    assert printer.identify().model.startswith("Evolis")


# --- faults ----------------------------------------------------------------------------------

def test_a_jammed_card_stays_stuck_until_rejected(make_emulator, connect, tmp_path):
    emulator = make_emulator(faults="jam=1", out_dir=tmp_path)
    printer = connect(emulator)

    error = refused(printer.print_card, FRONT)
    assert error.code == "printer_jam" and error.command == "Se" and error.rejects_card
    status = printer.status()
    assert Condition.JAM in status.conditions and status.level is Level.ERROR
    assert status.card_position is CardPosition.INSIDE
    assert refused(printer.print_card, FRONT).error == "T"  # still stuck: Ss refuses
    assert refused(printer.move_to_contactless).error == "T"

    printer.reject()
    assert emulator.state.hopper == 1 and emulator.state.counters.rejected == 1
    status = printer.status()
    assert status.level is Level.READY and status.card_position is CardPosition.NONE
    printer.print_card(FRONT)
    assert emulator.last_card.number == 2 and emulator.state.counters.printed == 1
    assert [p.name for p in tmp_path.iterdir()] == ["card-0002"]


def test_the_jam_command_jams_the_next_move(make_emulator, connect):
    emulator = make_emulator()
    printer = connect(emulator)
    assert emulator.command("jam") == "the next card move jams"
    printer.command(pr.INSERT_CARD)  # a feed alone is not a move
    assert refused(printer.move_to_contactless).code == "printer_jam"
    printer.reject()
    printer.move_to_contactless()
    assert emulator.state.card.number == 2 and emulator.state.hopper == 1


def test_the_ribbon_ending_mid_job_prints_nothing(make_emulator, connect, tmp_path):
    emulator = make_emulator(faults="ribbon_out=1", out_dir=tmp_path, ribbon_prints=50)
    printer = connect(emulator)

    error = refused(printer.print_card, FRONT, FRONT)
    assert error.code == "printer_ribbon" and error.command == "Se" and error.needs_person
    status = printer.status()
    assert Condition.RIBBON_ENDED in status.conditions and status.ribbon_remaining == 0
    assert emulator.state.counters.printed == 0 and emulator.last_card is None
    assert not list(tmp_path.iterdir())
    assert refused(printer.print_card, FRONT).error == "R"  # no new ribbon yet

    assert emulator.command("ribbon ymcko 30") == "ribbon ymcko with 30 prints"
    printer.reject()  # the half-printed card
    printer.print_card(FRONT)
    assert emulator.last_card.number == 2 and printer.status().ribbon_remaining == 29


def test_the_cover_opens_as_a_card_is_fed_until_closed(make_emulator, connect, rundir):
    emulator = make_emulator(faults="cover=1")
    printer = connect(emulator)
    channel = ControlChannel(rundir / "printer.ctl", emulator.command, USAGE, "printer-emulator").start()
    try:
        assert refused(printer.print_card, FRONT).code == "printer_cover_open"
        for _ in range(2):  # no sensor of ours clears it; it stays until a person acts
            status = printer.status()
            assert Condition.COVER_OPEN in status.conditions and status.level is Level.ERROR
            assert status.card_position is CardPosition.INSIDE
        for move in (printer.move_to_contactless, printer.reject, printer.eject):
            assert refused(move).error == "C"

        assert send_command(channel.path, "cover close") == "ok cover closed"
        assert printer.status().level is Level.READY
        printer.print_card(FRONT)
        assert emulator.last_card.number == 1 and emulator.state.counters.fed == 1
    finally:
        channel.stop()


def test_an_empty_feeder_refuses_the_next_card(make_emulator, connect):
    emulator = make_emulator(faults="feeder_empty=1")
    printer = connect(emulator)
    printer.print_card(FRONT)
    assert refused(printer.print_card, FRONT).code == "printer_feeder"
    status = printer.status()
    assert {Condition.FEEDER_EMPTY, Condition.FEEDER_ERROR} <= status.conditions
    assert status.card_position is CardPosition.NONE

    assert emulator.command("feeder 3") == "feeder holds 3 cards"
    printer.print_card(FRONT)
    assert emulator.last_card.number == 2 and printer.status().level is Level.READY


def test_a_ribbon_of_another_type_is_refused(make_emulator, connect):
    emulator = make_emulator(ribbon="ko")
    printer = connect(emulator, ribbon=None)
    assert refused(printer.setup, "ymcko").code == "printer_ribbon"
    printer.ribbon = "ymcko"  # what the station asked for, though setup failed
    assert Condition.WRONG_RIBBON in printer.status().conditions
    assert refused(printer.print_card, FRONT).error == "R"
    assert emulator.state.counters.fed == 0


def test_unknown_and_malformed_commands_are_refused(make_emulator, connect):
    emulator = make_emulator()
    printer = connect(emulator)
    assert refused(printer.command, Command("Xyz")).code == "printer_command"
    assert refused(printer.command, Command("Pr", ("ymc",))).code == "printer_parameter"
    assert refused(printer.command, Command("Rse", ())).code == "printer_parameter"
    assert refused(printer.command, pr.download_panel("k", 2, BLANK)).code == "printer_command"  # no Ss
    assert refused(printer.command, pr.download_track(2, "1234")).code == "printer_command"
    assert emulator.stats.error_replies == 5 and printer.identify().serial


def test_faults_parse_and_an_empty_feeder_from_the_start():
    faults = Faults.parse("jam=2,ribbon_out=3,cover=4,feeder_empty=0,unplug=5,seed=1")
    assert faults == Faults(jam=2, ribbon_out=3, cover=4, feeder_empty=0, unplug=5.0, seed=1)
    assert str(faults) == "jam=2,ribbon_out=3,cover=4,feeder_empty=0,unplug=5,seed=1"
    state = PrinterState(faults=faults)
    assert state.feeder == 0
    assert state.handle(pr.READ_FEEDER).reply == b"NO CARD\r"
    assert state.handle(pr.INSERT_CARD).reply == b"ERR;F\r"
    with pytest.raises(ValueError, match="not a whole number"):
        Faults.parse("jam=1.5")


# --- the pure state against golden sessions --------------------------------------------------

_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})|\\r|\\n|\\\\|<(\d+) bytes sha256:[0-9a-f]{64}>")


def unescape(text: str) -> bytes:
    """A transcript line's bytes; a panel (known only by its hash) becomes blank bitmap
    bytes of its length, which the printer answers the same way."""
    def one(match: re.Match) -> bytes:
        token = match.group(0)
        if match.group(1):
            return bytes([int(match.group(1), 16)])
        if match.group(2):
            return bytes(int(match.group(2)))
        return {b"\\r": b"\r", b"\\n": b"\n", b"\\\\": b"\\"}[token]
    return _ESCAPE.sub(one, text.encode())


@pytest.mark.parametrize("name, ribbon, faults", [
    ("identify", "ymcko", ""),
    ("setup_and_status", "ymcko", ""),
    ("print_one_side", "ko", ""),
    ("print_two_sides", "ymcko", ""),
    ("jam_then_reject", "ko", "jam=1"),
])
def test_the_state_answers_golden_driver_sessions(name, ribbon, faults):
    """The driver's golden sessions (recorded against a scripted printer) replayed into the
    model: every reply matches, but the ribbon type's case (Rr: this printer says "ko")."""
    state = PrinterState(faults=Faults.parse(faults), ribbon=ribbon, ribbon_prints=180,
                         model="Evolis Primacy", serial="E0123456", firmware="1.2.3")
    reader = pr.CommandReader()
    expected: list[bytes] = []
    answered: list[bytes] = []
    for line in (TRANSCRIPTS / f"{name}.txt").read_text().splitlines():
        if line.startswith("> "):
            for command in reader.feed(unescape(line[2:])):
                reply = state.handle(command).reply
                answered.append(reply.upper() if command.mnemonic == "Rr" else reply)
        elif line.startswith("< "):
            expected.append(unescape(line[2:]))
    assert answered == expected and len(expected) > 3


# --- unplug, the control channel and the process ---------------------------------------------

def test_unplug_and_replug_repoint_the_link(make_emulator, connect, rundir):
    link = rundir / "printer0"
    left: list[int] = []
    emulator = make_emulator(link=link, faults="unplug=1.0,replug=0.5", on_leave_contactless=left.append)
    printer = connect(emulator)
    printer.move_to_contactless()
    first = os.readlink(link)

    deadline = time.monotonic() + 3
    while link.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not link.is_symlink() and left == [1]
    assert emulator.wait_plugged(3.0)
    assert os.readlink(link) != first and emulator.port_stats.unplugs == 1

    printer.open()
    status = printer.status()
    assert status.card_position is CardPosition.INSIDE  # drawn back from the station
    printer.move_to_contactless()
    assert emulator.state.card.number == 1


@pytest.mark.parametrize("line, reply", [
    ("cover open", "cover open"),
    ("COVER close", "cover closed"),
    ("feeder 0", "feeder holds 0 cards"),
    ("ribbon KB 12", "ribbon kb with 12 prints"),
    ("jam", "the next card move jams"),
    ("faults jam=3,cover=4", "faults jam=3,cover=4"),
    ("faults none", "faults none"),
    ("unplug 0.2", "unplugged for 0.2 s"),
])
def test_control_commands_change_the_printer(make_emulator, line, reply):
    emulator = make_emulator()
    assert emulator.command(line) == reply
    status = emulator.status()
    changed = {
        "cover open": status["cover"] == "open",
        "COVER close": status["cover"] == "closed",
        "feeder 0": status["feeder"] == 0,
        "ribbon KB 12": status["ribbon"] == {"type": "kb", "remaining": 12, "expected": None},
        "jam": status["jam_next"],
        "faults jam=3,cover=4": emulator.faults == Faults(jam=3, cover=4),
        "faults none": emulator.faults == Faults(),
        "unplug 0.2": emulator.wait_plugged(3.0) and emulator.port_stats.unplugs == 1,
    }
    assert changed[line]


@pytest.mark.parametrize("line, reason", [
    ("", "empty command"),
    ("cover ajar", "not a command"),
    ("feeder", "not a command"),
    ("feeder -1", "a whole number 0 or more, not '-1'"),
    ("ribbon ymc 10", "ribbon 'ymc' is not one of ymcko, ko, kb"),
    ("ribbon ko lots", "a whole number 0 or more, not 'lots'"),
    ("jam now", "not a command"),
    ("faults jamm=1", "unknown fault 'jamm'"),
    ("faults jam=-1", "must be 0 or more"),
    ("faults unplug=3", "a command of its own"),
    ("unplug -1", "seconds must be within"),
    ("status now", "not a command"),
    ("reboot", "not a command"),
])
def test_bad_control_commands_say_why(make_emulator, line, reason):
    emulator = make_emulator()
    before = emulator.status()
    with pytest.raises(ValueError, match=re.escape(reason)):
        emulator.command(line)
    after = emulator.status()
    assert {k: after[k] for k in before if k != "emulator"} == {k: before[k] for k in before if k != "emulator"}


def test_the_channel_answers_status_and_refusals(make_emulator, connect, rundir):
    emulator = make_emulator(feeder=5)
    printer = connect(emulator)
    printer.move_to_contactless()
    channel = ControlChannel(rundir / "printer.ctl", emulator.command, USAGE, "printer-emulator").start()
    try:
        reply = send_command(channel.path, "status")
        assert reply.startswith("ok ")
        status = json.loads(reply[3:])
        assert status["card"] == {"number": 1, "position": "contactless", "jammed": False,
                                  "jams": False, "ends_ribbon": False}
        assert status["feeder"] == 4 and status["counters"]["fed"] == 1
        assert status["emulator"]["commands"] == 4 and status["port"] == emulator.pts
        assert send_command(channel.path, "feeder x").startswith(
            "error 'feeder x': a feeder's cards is a whole number 0 or more, not 'x'; usage: cover open|close")
        assert channel.commands == 1 and channel.refused == 1
    finally:
        channel.stop()
    assert not channel.path.exists()


def test_stationctl_emulate_printer_prints_its_path_first_and_stops_on_sigterm(rundir, tmp_path, connect):
    link, control, out = rundir / "printer0", rundir / "printer0.ctl", tmp_path / "cards"
    process = subprocess.Popen(
        [str(STATIONCTL), "emulate", "printer", "--link", str(link), "--control", str(control),
         "--out", str(out), "--faults", "jam=2", "--ribbon", "ko", "--ribbon-prints", "20",
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2], env=dict(os.environ),
    )
    try:
        assert process.stdout.readline().strip() == str(link)
        assert os.readlink(link).startswith("/dev/pts/")
        status = json.loads(send_command(control, "status")[3:])
        assert status["faults"] == "jam=2" and status["ribbon"]["remaining"] == 20

        class Port:  # what connect() needs of an emulator
            path = str(link)

        printer = connect(Port, ribbon="ko")
        printer.print_card(FRONT)
        assert (out / "card-0001" / "front-k.png").exists()
        assert refused(printer.print_card, FRONT).code == "printer_jam"
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
    assert not control.exists() and not link.exists()


def test_a_bad_fault_spec_is_refused_before_the_path_is_printed():
    result = subprocess.run(
        [sys.executable, "-m", "drivers.printer.emulator", "--faults", "jamm=1"],
        capture_output=True, text=True, timeout=10,
    )
    assert result.returncode == 2
    assert "unknown fault 'jamm'" in result.stderr and result.stdout == ""


def test_a_command_left_unfinished_by_a_dead_host_is_dropped_after_the_receive_timeout(make_emulator, connect):
    """A host killed inside a panel's megabytes leaves the printer waiting for the rest: like a
    printer's receive timeout, the emulator drops it after a silence, so the next host's
    first command is read as a command and not as bitmap bytes."""
    from drivers.printer.emulator import RECEIVE_TIMEOUT_S

    emulator = make_emulator()
    dead = transport_for(emulator.path)
    dead.open()
    frame = pr.download_panel("y", 32, np.zeros((CARD_HEIGHT, CARD_WIDTH), np.uint8)).encode()
    dead.write(frame[: len(frame) // 2])  # half a panel, then the host dies
    dead.close()
    printer = connect(emulator, ribbon=None)
    with pytest.raises(DeviceError):  # within the silence: still bitmap bytes to the printer
        printer.command(pr.READ_MODEL, timeout_s=0.5)
    time.sleep(RECEIVE_TIMEOUT_S + 0.2)
    assert printer.identify().model == "Evolis Primacy 2 (emulated)"
    assert emulator.stats.commands_timed_out == 1
