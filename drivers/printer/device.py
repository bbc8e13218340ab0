"""Host-side driver for an Evolis-style card printer, over any ``transport``.

A thin loop over ``protocol.py``: discard stale input, write one command, feed what the
transport returns to a ``ReplyReader``, hand back the reply or raise its ``PrinterError``.
The protocol has no sequence numbers, and asking a printer again to move or print may feed
a second card, so nothing is retried here: a failed command reaches the caller at once, and
the daemon decides (reject the card, wait for a person, print again).

Timeouts, in one place, by the command's ``Kind`` (``protocol.COMMANDS``):
- ``query_timeout_s`` (QUERY and SETUP: identity, sensors, parameters, Sr, Dm);
- ``move_timeout_s`` (MOVE: Ss feeds a card, Sv turns it, Si, Sis, Sic, Ser, Smw, Smr);
- ``panel_timeout_s`` (PANEL: Db, counted once the bitmap is written; the transport's write
  timeout bounds the write itself);
- ``print_timeout_s`` (PRINT: Se prints every panel of both sides and ejects the card).
A printer silent past its command's timeout raises DeviceError; a transport failure raises
DeviceError at once and closes the transport (``open()`` again once the printer is back).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from drivers.printer import protocol as pr
from drivers.printer.protocol import Activity, Command, Kind, PrinterError, PrinterStatus, Reply
from drivers.printer.transport import Transport
from station.errors import DeviceError

log = logging.getLogger("printer.device")

# Reads that drain stale input before a command; a printer that is still talking after
# this many is babbling, and the command's own reply will show whether it is usable.
_MAX_STALE_READS = 64

# The sensor and memory queries behind status(), by printer_status() argument.
_STATUS_QUERIES = (
    ("cover", pr.READ_COVER),
    ("feeder", pr.READ_FEEDER),
    ("ribbon_remaining", pr.READ_RIBBON_REMAINING),
    ("ribbon", pr.READ_RIBBON),
    ("card_position", pr.READ_CARD_POSITION),
)


@dataclass(frozen=True)
class Identity:
    model: str
    serial: str
    firmware: str
    ribbon: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PrinterStats:
    commands: int = 0
    error_replies: int = 0
    timeouts: int = 0
    stale_bytes: int = 0  # discarded before a command: late replies, line noise
    extra_replies: int = 0  # more than one reply to a command


class Printer:
    """One printer on one transport. Not thread-safe: one owner drives it."""

    def __init__(
        self,
        transport: Transport,
        *,
        query_timeout_s: float = 5.0,
        move_timeout_s: float = 30.0,
        panel_timeout_s: float = 30.0,
        print_timeout_s: float = 120.0,
        ribbon_low: int = 25,
    ):
        self.transport = transport
        self.timeouts_s = {
            Kind.QUERY: query_timeout_s,
            Kind.SETUP: query_timeout_s,
            Kind.MOVE: move_timeout_s,
            Kind.PANEL: panel_timeout_s,
            Kind.PRINT: print_timeout_s,
        }
        if min(self.timeouts_s.values()) <= 0 or ribbon_low < 0:
            raise ValueError("printer timeouts must be > 0 and ribbon_low >= 0")
        self.ribbon_low = ribbon_low
        self.ribbon: str | None = None  # set by setup(): the ribbon status() expects
        self.identity: Identity | None = None  # set by identify()
        self.activity = Activity.IDLE
        # The code of the last error reply to a command that acts (not a query): status()
        # reports its condition until a card move or print succeeds.
        self.last_error: str | None = None
        self.stats = PrinterStats()
        self._replies = pr.ReplyReader()

    @property
    def description(self) -> str:
        return self.transport.description

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        self.transport.open()
        self._replies.reset()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Printer":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one command ---------------------------------------------------------------------

    def timeout_for(self, command: Command) -> float:
        return self.timeouts_s[command.kind]

    def command(self, command: Command | bytes, timeout_s: float | None = None) -> Reply:
        """Send one command (a Command, or its bytes) and return its reply; PrinterError
        for an error reply, DeviceError when none comes within ``timeout_s`` (by default
        the timeout of the command's kind)."""
        if isinstance(command, (bytes, bytearray, memoryview)):
            command = pr.decode_command(bytes(command))
        frame = command.encode()
        timeout_s = self.timeout_for(command) if timeout_s is None else timeout_s
        self._discard_stale()
        self.stats.commands += 1
        self.transport.write(frame)
        reply = self._await_reply(command, timeout_s)
        try:
            reply.raise_for_error(command.label, self.description)
        except PrinterError as exc:
            self.stats.error_replies += 1
            if command.kind is not Kind.QUERY and exc.condition is not None:
                self.last_error = exc.error
            raise
        if command.kind in (Kind.MOVE, Kind.PRINT):
            self.last_error = None
        return reply

    def _discard_stale(self) -> None:
        """Anything already received answers a command nobody waits for any more (a reply
        that came after its timeout): dropped, so it is not taken for the next reply."""
        stale = self._replies.pending
        self._replies.reset()
        for _ in range(_MAX_STALE_READS):
            data = self.transport.read(0)
            if not data:
                break
            stale += len(data)
        if stale:
            self.stats.stale_bytes += stale
            log.info("%s: discarded %d stale bytes before a command", self.description, stale)

    def _await_reply(self, command: Command, timeout_s: float) -> Reply:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stats.timeouts += 1
                raise DeviceError(
                    f"card printer {self.description} did not answer {command.label} within "
                    f"{timeout_s:.1f} s ({self._replies.pending} bytes of a reply received); "
                    "check that it is powered on, online and connected"
                )
            replies = self._replies.feed(self.transport.read(remaining))
            if replies:
                if len(replies) > 1:
                    self.stats.extra_replies += len(replies) - 1
                    log.warning(
                        "%s: %d replies to %s, using the first: %s",
                        self.description, len(replies), command.label, [r.value for r in replies],
                    )
                return replies[0]

    # --- what the station asks -----------------------------------------------------------

    def identify(self) -> Identity:
        """Who the printer is; kept in ``identity`` (a replugged printer may be another)."""
        self.identity = Identity(
            model=self.command(pr.READ_MODEL).value,
            serial=self.command(pr.READ_SERIAL).value,
            firmware=self.command(pr.READ_FIRMWARE).value,
            ribbon=self.command(pr.READ_RIBBON).value,
        )
        return self.identity

    def status(self) -> PrinterStatus:
        """Queries every sensor. A query the printer refuses leaves its field unknown and
        adds its error's condition (a printer with its cover open may refuse them all)."""
        replies: dict[str, str | None] = {}
        errors = [self.last_error] if self.last_error else []
        for field, query in _STATUS_QUERIES:
            try:
                replies[field] = self.command(query).value
            except PrinterError as exc:
                replies[field] = None
                errors.append(exc.error)
        return pr.printer_status(
            **replies,
            expected_ribbon=self.ribbon,
            errors=errors,
            activity=self.activity,
            ribbon_low=self.ribbon_low,
        )

    def setup(self, ribbon: str, card_input: str = pr.FEEDER) -> None:
        """The host manages errors, cards come from ``card_input``, print on ``ribbon``."""
        commands = [pr.set_error_management(), pr.set_card_input(card_input), pr.set_ribbon(ribbon)]
        self._run(commands, Activity.BUSY, self.activity)
        self.ribbon = ribbon

    def print_card(self, front: Iterable[Sequence], back: Iterable[Sequence] = ()) -> None:
        """Print one card: ``front`` and ``back`` are (panel letter, levels, bitmap) in
        ribbon order. Every panel is checked and packed before the first byte is sent."""
        front_panels = pr.check_panels(front, self.ribbon)
        back_panels = pr.check_panels(back, self.ribbon)
        if not front_panels:
            raise ValueError("a card needs at least one front panel")
        sequence = [pr.START_SEQUENCE, pr.FRONT_SIDE, *(pr.download_panel(*p) for p in front_panels)]
        if back_panels:
            sequence += [pr.BACK_SIDE, *(pr.download_panel(*p) for p in back_panels)]
        sequence.append(pr.END_SEQUENCE)
        self._run(sequence, Activity.PRINTING, Activity.IDLE)

    def move_to_contactless(self) -> None:
        self._run([pr.TO_CONTACTLESS_STATION], Activity.BUSY, Activity.ENCODING)

    def move_to_contact(self) -> None:
        self._run([pr.TO_CONTACT_STATION], Activity.BUSY, Activity.ENCODING)

    def reject(self) -> None:
        self._run([pr.REJECT_CARD], Activity.BUSY, Activity.IDLE)

    def eject(self) -> None:
        self._run([pr.END_SEQUENCE], Activity.BUSY, Activity.IDLE)

    def _run(self, commands: Sequence[Command], during: Activity, after: Activity) -> None:
        """Each command awaited in turn; on failure the activity is what it was before."""
        before = self.activity
        self.activity = during
        try:
            for command in commands:
                self.command(command)
        except BaseException:
            self.activity = before
            raise
        self.activity = after
