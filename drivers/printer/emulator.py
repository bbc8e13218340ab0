"""An Evolis-style card printer on a pseudo-terminal, for tests, demos and benchmarks.

It speaks the printer side of ``protocol.py`` (the module the driver uses), so the driver
that prints here is the driver that prints on hardware. Two parts: ``PrinterState``, the
printer as a pure state machine (a command in, a ``Reaction`` out: the reply, the card
that arrived at or left the contactless station, the card printed), and
``PrinterEmulator``, the thin pty loop around it (the toolkit's ``PtyDevice``) that spends
the mechanism time, calls the hooks, writes printed cards to disk and sends the reply.

The printer: identity (``Rtp``/``Rsn``/``Rfv``), a card feeder, a ribbon (type and prints
left), a cover, at most one card inside (at the print head, the contact or the
contactless station; after ``Se`` the last card is ``ejected``), a reject hopper and
counters. Errors are the protocol's: ``ERR;C`` to every card move or print while the
cover is open, ``ERR;T`` while a jammed card is inside (``Ser`` rejects it), ``ERR;F`` when
the feeder is empty, ``ERR;R`` when the ribbon is used up or not the type ``Pr`` expects
(``Pr`` itself refuses a type that is not loaded), ``ERR;1``/``ERR;2`` for what
``command_problem`` refuses. ``Db`` and ``Sv`` outside a print sequence (no ``Ss``) are a
driver bug: ``ERR;1``. This model has no magnetic encoder, so ``Dm``, ``Smw`` and ``Smr``
answer ``ERR;1`` as such a printer does. ``Se`` without panels ejects the card unprinted.

Card numbers count every card fed since the emulator started, from 1 (``status`` shows
``fed``); the hooks, the faults and the printed output all name a card by it.

Mechanism time: ``move_s`` for each card move (feed, station, turn, reject, eject) and
``print_s`` for a print, spent before the reply; 0 (the default) runs unpaced.

Printed output: with ``out_dir``, each printed card becomes ``card-NNNN/`` holding each
printed side's panels as grey PNGs (``front-y.png`` ... ``back-k.png``, the level scaled to
0..255, so 255 is full ink and K/O are 0/255) and the side as it looks
(``front.png``/``back.png``, ``panels.recombine``). The directory is built under a
temporary name and renamed, so a watcher never sees half a card. ``last_card`` keeps the
last printed card's panels in memory.

Faults, from a spec string (``--faults`` or ``PrinterEmulator(faults=...)``), comma
separated ``key=value``; card numbers as above, armed as the card is fed:

    jam=N           card N jams at its first move or print after being fed: ERR;T, and
                    the card stays stuck (every move ERR;T) until Ser rejects it
    ribbon_out=N    the ribbon ends while card N prints: its Se answers ERR;R, nothing is
                    printed, prints left drop to 0 until a new ribbon is loaded
    cover=N         the cover opens as card N is fed: that feed answers ERR;C, the card
                    waits at the print head, every move or print answers ERR;C until the
                    cover is closed (control ``cover close``)
    feeder_empty=N  the feeder holds only the cards up to card N: the next feed ERR;F
    unplug=S        S seconds after start the port disappears (pty closed, link removed) ...
    replug=S        ... and a fresh pty (link re-pointed) appears S s later (default 1.0)
    seed=N          accepted so a station-wide spec parses; no printer fault is random

e.g. ``jam=2,cover=5,feeder_empty=10``. On unplug the sequence is forgotten and a card at a
station is drawn back to the print head (leaving the contactless station).

At run time from outside the process, ``--control PATH`` opens a Unix datagram socket
(``drivers.emulation.ControlChannel``) taking one text command per datagram (``USAGE``):

    cover open|close        open or close the cover
    feeder <count>          the feeder now holds this many cards
    ribbon <type> <prints>  load a new ribbon (ymcko, ko or kb) with that many prints
    jam                     the next move or print of a card jams it
    faults <spec>           replace the faults (``faults none`` clears them; not unplug)
    unplug <seconds>        close the pty now, plug a fresh one in after that long
    status                  the whole state and its counters, as JSON

Contactless hooks (for a chip encoder): ``on_contactless(card_number)`` is called when a
card arrives at the contactless station, before the reply to the command that moved it;
``on_leave_contactless(card_number)`` when it leaves (to print, reject, eject, jam, or on
unplug), before the move's time is spent. Both run on the serving thread outside the
state lock; an exception in a hook is logged and counted (``hook_failures``), never fatal.

Chips: with ``--chip-port PORT`` (``ContactlessChips``) those hooks give every card a blank
chip of its own (``drivers/chip/emulator.py``), inserted into the vpcd reader listening on
PORT while the card is at the contactless station, so the station's encoder personalises
it through pcscd as on hardware; ``--chip-faults`` applies to every chip, or with
``--chip-faults-card N`` to card N's alone. As a card leaves
the station, with ``--out``, its chip's files are written to ``OUT/chips/card-NNNN/``
(``EF.COM``, ``DG1`` ... ``EF.SOD``; 0600: they are personal data) for
``stationctl chip verify``. A chip that finds no reader is logged and counted; the card
goes on without one.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from drivers.emulation import (
    MAX_SECONDS,
    ControlChannel,
    FaultSpec,
    PtyDevice,
    seconds,
    stats_dict,
    wait_for_stop,
    words,
)
from drivers.printer.panels import recombine
from drivers.printer.protocol import (
    CARD_POSITION_REPLIES,
    COVER_REPLIES,
    FEEDER_REPLIES,
    OK,
    RIBBON_PANELS,
    CardPosition,
    Command,
    CommandReader,
    ErrorCode,
    Kind,
    Panel,
    command_problem,
    encode_error,
    encode_reply,
    unpack_panel,
)

if TYPE_CHECKING:
    from drivers.chip.emulator import ChipEmulator, ChipFaults

log = logging.getLogger("printer.emulator")

MODEL = "Evolis Primacy 2 (emulated)"
SERIAL = "EMU0000001"
FIRMWARE = "1.0.0-emulated"
FEEDER_CARDS = 100
RIBBON = "ymcko"
RIBBON_PRINTS = 200
RECEIVE_TIMEOUT_S = 2.0  # an unfinished command older than this is dropped (a host died mid-panel)

USAGE = ("cover open|close | feeder <count> | ribbon <ymcko|ko|kb> <prints> | jam | "
         "faults <spec> | unplug <seconds> | status")

Hook = Callable[[int], None]


@dataclass(frozen=True)
class Faults(FaultSpec):
    counts: ClassVar[tuple[str, ...]] = ("jam", "ribbon_out", "cover", "feeder_empty", "seed")
    jam: int = 0
    ribbon_out: int = 0
    cover: int = 0
    feeder_empty: int | None = None  # 0 is a fault of its own: an empty feeder
    unplug: float = 0.0
    replug: float = 1.0
    seed: int = 0


class Position(StrEnum):
    NONE = "none"  # no card has been in, or the last one went to the reject hopper
    PRINT_HEAD = "print_head"
    CONTACT = "contact"
    CONTACTLESS = "contactless"
    EJECTED = "ejected"  # the last card went out to the output tray


_SENSED = {
    Position.NONE: CardPosition.NONE,
    Position.EJECTED: CardPosition.NONE,
    Position.PRINT_HEAD: CardPosition.INSIDE,
    Position.CONTACT: CardPosition.CONTACT,
    Position.CONTACTLESS: CardPosition.CONTACTLESS,
}
_POSITION_REPLY = {position: reply for reply, position in CARD_POSITION_REPLIES.items()}
_COVER_REPLY = {is_open: reply for reply, is_open in COVER_REPLIES.items()}
_FEEDER_REPLY = {loaded: reply for reply, loaded in FEEDER_REPLIES.items()}
_MOVES = ("Si", "Sis", "Sic", "Ss", "Sv", "Se", "Ser")
_NO_MAGNETIC_ENCODER = ("Dm", "Smw", "Smr")


@dataclass
class Card:
    """The card inside the printer, with the faults armed for it when it was fed."""

    number: int
    position: Position = Position.PRINT_HEAD
    jammed: bool = False
    jams: bool = False  # at its next move or print
    ends_ribbon: bool = False  # while it prints


@dataclass(frozen=True)
class PrintedCard:
    number: int
    front: tuple[Panel, ...]
    back: tuple[Panel, ...]


@dataclass
class Counters:
    fed: int = 0
    printed: int = 0
    rejected: int = 0
    ejected: int = 0


@dataclass
class Reaction:
    """What one command did: the reply, the mechanism time to spend, the card that left or
    reached the contactless station, the card printed."""

    reply: bytes = b""
    work: Kind | None = None  # Kind.MOVE or Kind.PRINT
    left: int | None = None
    arrived: int | None = None
    printed: PrintedCard | None = None


class Refused(Exception):
    def __init__(self, code: ErrorCode, reason: str):
        super().__init__(reason)
        self.code = code


class PrinterState:
    """The printer's mechanism and consumables: ``handle(command)`` -> ``Reaction``. Pure
    (no I/O, no clock, not thread-safe): its owner serialises access. Each command's
    handler is the method named after its mnemonic (``Sic`` -> ``_sic``)."""

    def __init__(self, *, faults: Faults = Faults(), feeder: int = FEEDER_CARDS, ribbon: str = RIBBON,
                 ribbon_prints: int = RIBBON_PRINTS, model: str = MODEL, serial: str = SERIAL,
                 firmware: str = FIRMWARE):
        self.model, self.serial, self.firmware = model, serial, firmware
        self.faults = faults
        self.feeder = feeder
        self.ribbon, self.ribbon_remaining = check_ribbon(ribbon, ribbon_prints)
        self.expected_ribbon: str | None = None  # set by Pr
        self.settings: dict[str, str] = {}  # Pmi, Pem: stored, not modelled further
        self.cover_open = False
        self.card: Card | None = None
        self.position = Position.NONE  # where the last card went when none is inside
        self.hopper = 0
        self.jam_next = False
        self.counters = Counters()
        self.last_printed: PrintedCard | None = None
        self._job: dict[str, dict[str, Panel]] | None = None  # side -> letter -> panel
        self._side = "front"
        self.set_faults(faults)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        if faults.feeder_empty is not None:
            self.feeder = max(0, faults.feeder_empty - self.counters.fed)

    def load_ribbon(self, ribbon: str, prints: int) -> None:
        self.ribbon, self.ribbon_remaining = check_ribbon(ribbon, prints)

    def card_position(self) -> Position:
        return self.card.position if self.card is not None else self.position

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": self.model, "serial": self.serial, "firmware": self.firmware,
            "cover": "open" if self.cover_open else "closed",
            "feeder": self.feeder,
            "ribbon": {"type": self.ribbon, "remaining": self.ribbon_remaining, "expected": self.expected_ribbon},
            "card": None if self.card is None else asdict(self.card),
            "card_position": str(self.card_position()),
            "printing": self._job is not None,
            "hopper": self.hopper,
            "jam_next": self.jam_next,
            "settings": dict(self.settings),
            "faults": str(self.faults),
            "counters": asdict(self.counters),
        }

    # --- commands ------------------------------------------------------------------------

    def handle(self, command: Command) -> Reaction:
        reaction = Reaction()
        try:
            problem = command_problem(command)
            if problem is not None:
                raise Refused(*problem)
            if command.mnemonic in _NO_MAGNETIC_ENCODER:
                raise Refused(ErrorCode.COMMAND, "this printer has no magnetic encoder")
            if command.mnemonic in _MOVES:
                self._check_mechanism(command.mnemonic)
            reaction.reply = encode_reply(getattr(self, "_" + command.mnemonic.lower())(command, reaction))
        except Refused as refused:
            log.info("%s refused: ERR;%s %s", command.label, refused.code, refused)
            reaction.reply = encode_error(refused.code)
        return reaction

    def power_lost(self) -> int | None:
        """The port was pulled: the sequence is gone, a card at a station is drawn back to
        the print head. Returns the number of a card that left the contactless station."""
        self._job = None
        card = self.card
        if card is None or card.position is Position.PRINT_HEAD:
            return None
        left = card.number if card.position is Position.CONTACTLESS else None
        card.position = Position.PRINT_HEAD
        return left

    def _rfv(self, c: Command, r: Reaction) -> str:
        return self.firmware

    def _rsn(self, c: Command, r: Reaction) -> str:
        return self.serial

    def _rtp(self, c: Command, r: Reaction) -> str:
        return self.model

    def _rr(self, c: Command, r: Reaction) -> str:
        return self.ribbon

    def _rcr(self, c: Command, r: Reaction) -> str:
        return str(self.ribbon_remaining)

    def _rlr(self, c: Command, r: Reaction) -> str:
        return _POSITION_REPLY[_SENSED[self.card_position()]]

    def _rse(self, c: Command, r: Reaction) -> str:
        return _COVER_REPLY[self.cover_open] if c.params[0] == "o" else _FEEDER_REPLY[self.feeder > 0]

    def _pr(self, c: Command, r: Reaction) -> str:
        self.expected_ribbon = c.params[0]
        if self.expected_ribbon != self.ribbon:
            raise Refused(ErrorCode.RIBBON, f"a {self.ribbon} ribbon is loaded, not {self.expected_ribbon}")
        return OK

    def _pmi(self, c: Command, r: Reaction) -> str:
        self.settings["card_input"] = c.params[0]
        return OK

    def _pem(self, c: Command, r: Reaction) -> str:
        self.settings["error_management"] = c.params[0]
        return OK

    def _sr(self, c: Command, r: Reaction) -> str:
        self._need_job(c)
        self._side = "front"
        return OK

    def _db(self, c: Command, r: Reaction) -> str:
        job = self._need_job(c)
        letter, levels = c.params[0], int(c.params[1])
        if letter not in RIBBON_PANELS[self.ribbon]:
            raise Refused(ErrorCode.RIBBON, f"the {self.ribbon} ribbon has no {letter} panel")
        assert c.data is not None
        job[self._side][letter] = Panel(letter, levels, unpack_panel(c.data, levels))
        return OK

    def _si(self, c: Command, r: Reaction) -> str:
        self._bring_card(r, Position.PRINT_HEAD)
        return OK

    def _sis(self, c: Command, r: Reaction) -> str:
        self._bring_card(r, Position.CONTACT)
        return OK

    def _sic(self, c: Command, r: Reaction) -> str:
        self._bring_card(r, Position.CONTACTLESS)
        return OK

    def _ss(self, c: Command, r: Reaction) -> str:
        self._check_ribbon()
        self._bring_card(r, Position.PRINT_HEAD)
        self._job, self._side = {"front": {}, "back": {}}, "front"
        return OK

    def _sv(self, c: Command, r: Reaction) -> str:
        self._need_job(c)
        self._move(r, Position.PRINT_HEAD)  # turning the card over is a move
        self._side = "back"
        return OK

    def _ser(self, c: Command, r: Reaction) -> str:
        if self.card is not None:
            self._card_leaves(r, Position.NONE)
            self.hopper += 1
            self.counters.rejected += 1
        return OK

    def _se(self, c: Command, r: Reaction) -> str:
        card, job = self.card, self._job
        if card is None:
            return OK  # nothing to eject
        if job is None or not (job["front"] or job["back"]):
            self._move(r, Position.PRINT_HEAD)
            self._card_leaves(r, Position.EJECTED)
            self.counters.ejected += 1
            return OK
        self._check_ribbon()
        self._jam_check(r)
        if card.ends_ribbon:
            card.ends_ribbon = False
            self.ribbon_remaining = 0
            self._job = None
            raise Refused(ErrorCode.RIBBON, f"the ribbon ended while card {card.number} was printing")
        r.work = Kind.PRINT
        r.printed = self.last_printed = PrintedCard(card.number, tuple(job["front"].values()),
                                                    tuple(job["back"].values()))
        self.ribbon_remaining -= 1
        self.counters.printed += 1
        self._card_leaves(r, Position.EJECTED)
        self.counters.ejected += 1
        return OK

    # --- the mechanism -------------------------------------------------------------------

    def _check_mechanism(self, mnemonic: str) -> None:
        if self.cover_open:
            raise Refused(ErrorCode.COVER, "the cover is open")
        if self.card is not None and self.card.jammed and mnemonic != "Ser":
            raise Refused(ErrorCode.MECHANICAL, f"card {self.card.number} is jammed; reject it (Ser)")

    def _check_ribbon(self) -> None:
        if self.expected_ribbon is not None and self.expected_ribbon != self.ribbon:
            raise Refused(ErrorCode.RIBBON, f"a {self.ribbon} ribbon is loaded, not {self.expected_ribbon}")
        if self.ribbon_remaining <= 0:
            raise Refused(ErrorCode.RIBBON, "the ribbon is used up")

    def _need_job(self, c: Command) -> dict[str, dict[str, Panel]]:
        if self._job is None or self.card is None:
            raise Refused(ErrorCode.COMMAND, f"{c.mnemonic} outside a print sequence (no Ss)")
        return self._job

    def _bring_card(self, r: Reaction, to: Position) -> None:
        """The card inside to ``to``, feeding one first if there is none."""
        if self.card is None:
            self._feed(r)
        if self.card is not None and self.card.position is not to:
            self._move(r, to)

    def _feed(self, r: Reaction) -> None:
        if self.feeder <= 0:
            raise Refused(ErrorCode.FEEDER, "the feeder is empty")
        self.feeder -= 1
        self.counters.fed += 1
        number = self.counters.fed
        self.card = Card(number, jams=self.faults.jam == number, ends_ribbon=self.faults.ribbon_out == number)
        r.work = Kind.MOVE
        if self.faults.cover == number:
            self.cover_open = True
            raise Refused(ErrorCode.COVER, f"the cover opened as card {number} was fed")

    def _jam_check(self, r: Reaction) -> None:
        card = self.card
        assert card is not None
        if not (self.jam_next or card.jams):
            return
        self.jam_next = card.jams = False
        card.jammed = True
        if card.position is Position.CONTACTLESS:
            r.left = card.number
        card.position = Position.PRINT_HEAD
        self._job = None
        raise Refused(ErrorCode.MECHANICAL, f"card {card.number} jammed")

    def _move(self, r: Reaction, to: Position) -> None:
        card = self.card
        assert card is not None
        self._jam_check(r)
        if card.position is Position.CONTACTLESS and to is not Position.CONTACTLESS:
            r.left = card.number
        elif to is Position.CONTACTLESS and card.position is not Position.CONTACTLESS:
            r.arrived = card.number
        card.position = to
        r.work = Kind.MOVE

    def _card_leaves(self, r: Reaction, to: Position) -> None:
        """The card goes out of the printer: ``to`` the output tray or the reject hopper."""
        card = self.card
        assert card is not None
        if card.position is Position.CONTACTLESS:
            r.left = card.number
        self.card, self.position, self._job = None, to, None
        r.work = r.work or Kind.MOVE


def check_ribbon(ribbon: str, prints: int) -> tuple[str, int]:
    if ribbon not in RIBBON_PANELS:
        raise ValueError(f"ribbon {ribbon!r} is not one of {', '.join(RIBBON_PANELS)}")
    if prints < 0:
        raise ValueError(f"a ribbon holds 0 or more prints, not {prints}")
    return ribbon, prints


def panel_image(panel: Panel) -> np.ndarray:
    """A panel as grey levels: its ink level scaled to 0..255 (255 full ink)."""
    return (panel.bitmap.astype(np.uint16) * 255 // (panel.levels - 1)).astype(np.uint8)


def write_card(out_dir: Path, card: PrintedCard) -> Path:
    """``out_dir/card-NNNN/``: the panels and the look of each printed side, built under a
    temporary name and renamed into place."""
    final = out_dir / f"card-{card.number:04d}"
    building = out_dir / f".{final.name}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for side, panels in (("front", card.front), ("back", card.back)):
        if not panels:
            continue
        for panel in panels:
            Image.fromarray(panel_image(panel)).save(building / f"{side}-{panel.letter}.png", compress_level=1)
        Image.fromarray(recombine(panels)).save(building / f"{side}.png", compress_level=1)
    if final.exists():
        log.warning("replacing %s, left by an earlier run", final)
        shutil.rmtree(final)
    os.rename(building, final)
    return final


def write_chip(out_dir: Path, number: int, files: dict[str, bytes]) -> Path:
    """``out_dir/card-NNNN/<file name>``: a chip's files, personal data, so 0600 files in a
    0700 directory, built under a temporary name and renamed into place (a card back at the
    contactless station replaces what its chip held before)."""
    final = out_dir / f"card-{number:04d}"
    building = out_dir / f".{final.name}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    building.mkdir(mode=0o700)
    for name, data in files.items():
        fd = os.open(building / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as file:
            file.write(data)
    if final.exists():
        shutil.rmtree(final)
    os.rename(building, final)
    return final


@dataclass
class EmulatorStats:
    commands: int = 0
    error_replies: int = 0
    hook_failures: int = 0
    cards_written: int = 0
    card_write_failures: int = 0
    commands_timed_out: int = 0


class PrinterEmulator(PtyDevice):
    """The printer side of a pty. ``start()`` returns the port path and serves in a thread."""

    thread_name = "printer-emulator"
    description = "printer emulator"

    def __init__(
        self,
        *,
        faults: Faults | str | None = None,
        link: Path | str | None = None,
        out_dir: Path | str | None = None,
        feeder: int = FEEDER_CARDS,
        ribbon: str = RIBBON,
        ribbon_prints: int = RIBBON_PRINTS,
        move_s: float = 0.0,
        print_s: float = 0.0,
        serial: str = SERIAL,
        firmware: str = FIRMWARE,
        on_contactless: Hook | None = None,
        on_leave_contactless: Hook | None = None,
    ):
        super().__init__(link=link)
        if move_s < 0 or print_s < 0:
            raise ValueError("move_s and print_s must be 0 or more")
        faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self.state = PrinterState(faults=faults, feeder=feeder, ribbon=ribbon, ribbon_prints=ribbon_prints,
                                  serial=serial, firmware=firmware)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.mechanism_s = {Kind.MOVE: move_s, Kind.PRINT: print_s}
        self.on_contactless = on_contactless
        self.on_leave_contactless = on_leave_contactless
        self.stats = EmulatorStats()
        self._state_lock = threading.Lock()  # the serving thread and the control channel
        self._reader = CommandReader()
        self._last_bytes = 0.0
        self.working: Kind | None = None  # a move or a print under way (its move_s / print_s)

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def last_card(self) -> PrintedCard | None:
        return self.state.last_printed

    # --- control -------------------------------------------------------------------------

    def on_start(self) -> None:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.faults.unplug:
            self.unplug_later(self.faults.unplug, self.faults.replug)

    def status(self) -> dict[str, Any]:
        with self._state_lock:
            state = self.state.snapshot()
        return {**state, "port": self.pts, "link": None if self.link is None else str(self.link),
                "plugged": self.plugged, "mechanism": None if self.working is None else str(self.working),
                "emulator": stats_dict(self.stats, self.port_stats)}

    def command(self, line: str) -> str:
        """One control command (``USAGE``); returns what changed, raises ValueError saying why not."""
        verb, args = words(line)
        if verb == "status" and not args:
            return json.dumps(self.status())
        if verb == "unplug" and len(args) == 1:
            wait = seconds(args[0])
            self.unplug(wait)
            return f"unplugged for {wait:g} s"
        with self._state_lock:
            state = self.state
            if verb == "cover" and args in (["open"], ["close"]):
                state.cover_open = args[0] == "open"
                return f"cover {'open' if state.cover_open else 'closed'}"
            if verb == "feeder" and len(args) == 1:
                state.feeder = count(args[0], "a feeder's cards")
                return f"feeder holds {state.feeder} cards"
            if verb == "ribbon" and len(args) == 2:
                state.load_ribbon(args[0].lower(), count(args[1], "a ribbon's prints"))
                return f"ribbon {state.ribbon} with {state.ribbon_remaining} prints"
            if verb == "jam" and not args:
                state.jam_next = True
                return "the next card move jams"
            if verb == "faults" and args:
                faults = Faults.parse(" ".join(args))
                if faults.unplug or faults.replug != Faults.replug:
                    raise ValueError("unplug is a command of its own here")
                state.set_faults(faults)
                return f"faults {faults}"
        raise ValueError("not a command")

    # --- serving -------------------------------------------------------------------------

    def on_unplug(self) -> None:
        self._reader = CommandReader()
        with self._state_lock:
            left = self.state.power_lost()
        self._notify(self.on_leave_contactless, left, "leave-contactless")

    def on_bytes(self, data: bytes) -> None:
        now = time.monotonic()
        if self._reader.pending and now - self._last_bytes > RECEIVE_TIMEOUT_S:
            # A host that died mid-command (in a panel's megabytes) left it unfinished: like a
            # printer's receive timeout, drop it, so the next host's commands are commands.
            log.warning("dropped an unfinished command (%d bytes) after %.0f s of silence",
                        self._reader.pending, now - self._last_bytes)
            self.stats.commands_timed_out += 1
            self._reader.reset()
        self._last_bytes = now
        for command in self._reader.feed(data):
            self.stats.commands += 1
            with self._state_lock:
                reaction = self.state.handle(command)
            if reaction.reply.startswith(b"ERR"):
                self.stats.error_replies += 1
            self._notify(self.on_leave_contactless, reaction.left, "leave-contactless")
            if reaction.work is not None:
                self.working = reaction.work  # the status shows the mechanism at work
                try:
                    if not self.sleep(self.mechanism_s[reaction.work]):
                        return
                finally:
                    self.working = None
            if reaction.printed is not None and self.out_dir is not None:
                self._write(reaction.printed)
            self._notify(self.on_contactless, reaction.arrived, "contactless")
            self.send(reaction.reply)

    def _write(self, card: PrintedCard) -> None:
        assert self.out_dir is not None
        try:
            path = write_card(self.out_dir, card)
        except OSError as exc:  # the inspection copy failed; the printer still printed
            self.stats.card_write_failures += 1
            log.error("card %d printed but not written to %s: %s", card.number, self.out_dir, exc)
            return
        self.stats.cards_written += 1
        log.info("card %d printed: %s", card.number, path)

    def _notify(self, hook: Hook | None, number: int | None, what: str) -> None:
        if hook is None or number is None:
            return
        try:
            hook(number)
        except Exception:  # the encoder's bug must not stop the printer
            self.stats.hook_failures += 1
            log.exception("%s hook failed for card %d", what, number)


@dataclass
class ChipStats:
    inserted: int = 0
    insert_failures: int = 0  # no reader listening: the card went through without a chip
    chips_written: int = 0
    chip_write_failures: int = 0


class ContactlessChips:
    """The cards' chips in the field of the contactless station's encoder: the two
    contactless hooks (``arrived``, ``left``) of the pty loop, kept out of ``PrinterState``.

    Each card has a blank chip of its own (``drivers/chip/emulator.py``), inserted into the
    vpcd reader at ``host:port`` when the card arrives and removed when it leaves; a card
    that comes back brings its own chip back. With ``out_dir``, a leaving chip's files (those
    the encoder created, by their ``station.lds.FILES`` names) are written by ``write_chip``
    to ``out_dir/card-NNNN/``. ``faults`` apply to every card's chip, or to card ``faults_card``'s alone. A reader that is not
    listening is logged and counted (``insert_failures``): the card goes on without a chip.
    """

    def __init__(self, port: int, *, host: str | None = None, faults: ChipFaults | str | None = None,
                 faults_card: int | None = None, out_dir: Path | str | None = None):
        from drivers.chip import emulator as chip  # the LDS, BAC and crypto modules: only with a chip

        self._chip_module = chip
        self.host = host or chip.VPCD_HOST
        self.port = port
        self.faults = faults if isinstance(faults, chip.ChipFaults) else chip.ChipFaults.parse(faults)
        self.faults_card = faults_card  # only that card's chip has the faults; None: every card's
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.stats = ChipStats()
        self.card_number: int | None = None
        self.chip: ChipEmulator | None = None  # card ``card_number``'s
        self._lock = threading.Lock()  # the serving thread's hooks, unplug and close()

    def arrived(self, number: int) -> None:
        with self._lock:
            if self.chip is None or self.card_number != number:
                faulty = self.faults_card is None or self.faults_card == number
                self.chip = self._chip_module.ChipEmulator(self.host, self.port,
                                                           faults=self.faults if faulty else None)
                self.card_number = number
            if self.chip.inserted:
                return
            try:
                self.chip.insert()
            except self._chip_module.ReaderUnavailable as exc:
                self.stats.insert_failures += 1
                log.error("card %d is at the contactless station without its chip in a reader's field: %s",
                          number, exc)
                return
            self.stats.inserted += 1

    def left(self, number: int) -> None:
        with self._lock:
            if self.chip is None or self.card_number != number:
                log.warning("card %d left the contactless station, where no chip of its was", number)
                return
            self._leave(number, self.chip)

    def close(self) -> None:
        """The printer stops: a chip still in the field leaves it (its files written)."""
        with self._lock:
            if self.chip is not None and self.card_number is not None and self.chip.inserted:
                self._leave(self.card_number, self.chip)

    def snapshot(self) -> dict[str, Any]:
        return {"reader": f"{self.host}:{self.port}", "card": self.card_number,
                "in_field": self.chip is not None and self.chip.inserted, "faults": str(self.faults),
                **asdict(self.stats)}

    def _leave(self, number: int, chip: ChipEmulator) -> None:
        from station.lds import FILES

        chip.remove()
        if self.out_dir is None:
            return
        created = chip.card.lds.files
        files = {name: chip.card.file(ef.file_id) for name, ef in FILES.items() if ef.file_id in created}
        if not files:
            log.info("card %d left the contactless station with a blank chip: nothing to write", number)
            return
        try:
            path = write_chip(self.out_dir, number, files)
        except OSError as exc:  # the inspection copy failed; the chip holds what it holds
            self.stats.chip_write_failures += 1
            log.error("card %d's chip not written to %s: %s", number, self.out_dir, exc)
            return
        self.stats.chips_written += 1
        log.info("card %d's chip written: %s (%s)", number, path, " ".join(files))


def count(text: str, what: str) -> int:
    """A control command's whole-number argument, checked."""
    if not text.isdigit():
        raise ValueError(f"{what} is a whole number 0 or more, not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """``stationctl emulate printer``: print the port path first, then serve until SIGTERM
    or SIGINT. The first stdout line is the contract scripts and tests read."""
    parser = argparse.ArgumentParser(prog="stationctl emulate printer", description=__doc__.split("\n")[0])
    parser.add_argument("--link", type=Path, default=None, help="maintain a symlink here to the current pty")
    parser.add_argument("--control", type=Path, default=None,
                        help=f"Unix datagram socket taking commands: {USAGE}")
    parser.add_argument("--out", type=Path, default=None, help="write each printed card to DIR/card-NNNN/")
    parser.add_argument("--faults", default="", help="fault spec, e.g. jam=2,cover=5,feeder_empty=10,unplug=30")
    parser.add_argument("--feeder", type=int, default=FEEDER_CARDS, help="cards in the feeder")
    parser.add_argument("--ribbon", default=RIBBON, choices=sorted(RIBBON_PANELS), help="ribbon type loaded")
    parser.add_argument("--ribbon-prints", type=int, default=RIBBON_PRINTS, help="prints left on the ribbon")
    parser.add_argument("--move-s", type=float, default=0.0, help="seconds a card move takes (default 0)")
    parser.add_argument("--print-s", type=float, default=0.0, help="seconds a print takes (default 0)")
    parser.add_argument("--chip-port", type=int, default=0, metavar="PORT",
                        help="each card has a chip, inserted into the vpcd reader on this port at the "
                             "contactless station (0, the default: cards without a chip)")
    parser.add_argument("--chip-faults", default="", metavar="SPEC",
                        help="every chip's fault spec, e.g. fail_write=3 (drivers/chip/emulator.py)")
    parser.add_argument("--chip-faults-card", type=int, default=None, metavar="N",
                        help="only card N's chip has the --chip-faults (cards count from 1 as they are fed)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    chips: ContactlessChips | None = None
    try:
        faults = Faults.parse(args.faults)
        if not 0 <= args.chip_port < 65536:
            raise ValueError(f"--chip-port must be a TCP port 1..65535 (or 0: no chip), not {args.chip_port}")
        if args.chip_port:
            from drivers.chip.emulator import ChipFaults

            try:
                chip_faults = ChipFaults.parse(args.chip_faults)
            except ValueError as exc:
                raise ValueError(f"--chip-faults: {exc}") from None
            chips = ContactlessChips(args.chip_port, faults=chip_faults, faults_card=args.chip_faults_card,
                                     out_dir=args.out / "chips" if args.out is not None else None)
        elif args.chip_faults:
            raise ValueError("--chip-faults needs --chip-port: without it the cards have no chip")
        check_ribbon(args.ribbon, args.ribbon_prints)
        if not (0 <= args.move_s < MAX_SECONDS and 0 <= args.print_s < MAX_SECONDS):
            raise ValueError(f"--move-s and --print-s must be within 0..{MAX_SECONDS} seconds")
        if args.feeder < 0:
            raise ValueError(f"--feeder must be 0 or more, not {args.feeder}")
    except ValueError as exc:
        parser.error(str(exc))

    from station import logs

    logs.setup(args.log_level)
    emulator = PrinterEmulator(faults=faults, link=args.link, out_dir=args.out, feeder=args.feeder,
                               ribbon=args.ribbon, ribbon_prints=args.ribbon_prints,
                               move_s=args.move_s, print_s=args.print_s,
                               on_contactless=chips.arrived if chips else None,
                               on_leave_contactless=chips.left if chips else None)
    path = emulator.start()
    try:
        control = ControlChannel(args.control, emulator.command, USAGE, "printer-emulator").start() \
            if args.control else None
    except OSError as exc:
        emulator.stop()
        parser.error(f"--control {args.control}: cannot bind the control socket: {exc}")
    try:
        wait_for_stop(path)
    finally:
        if control is not None:
            control.stop()
        emulator.stop()
        log.info("stopped: %s %s %s", emulator.state.counters, emulator.stats, emulator.port_stats)
        if chips is not None:
            chips.close()
            log.info("chips: %s", chips.snapshot())
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy, so every class is the same one.
    from drivers.printer.emulator import main as _main

    sys.exit(_main())
