"""station-printerd: one card printer, its card moves and prints, and its sensors.

The printer is driven from the device worker thread (a print sends megabytes of panels and
waits for the card); the main loop answers commands and publishes what the printer's
sensors say. The lifecycle (``offline`` at once when the port goes, reopening and
re-identifying with back-off, flapping) and the one completion path are
``DeviceDaemon``'s. The daemon knows cards, not applicants: which card to print and what
to do when one fails is the controller's print queue (``station/printing.py``).

An idle printer's sensors are read every ``probe_interval_s``; every change is published
as a ``condition`` event (``level`` READY/WARNING/ERROR, ``conditions`` such as
``cover_open``, ``feeder_empty``, ``ribbon_low``), so the console shows "ribbon out" while
nobody prints.

Commands (failures are the printer's own codes: ``printer_jam``, ``printer_cover_open``,
``printer_feeder``, ``printer_ribbon``, ... see ``protocol.ERRORS``):

- ``feed {to: contactless|contact}`` -> ``{status}``: take a card from the feeder (if none
  is inside) to the chip encoder's station;
- ``print {}`` with the payloads ``front.color`` (rgb8, 1016 x 648), ``front.black`` (gray8,
  non-zero = black text) and optionally ``back.color`` / ``back.black`` -> ``{panels,
  status}``: separate each side into the ribbon's panels, print both sides and eject;
- ``reject`` (the card inside goes to the reject hopper), ``eject``;
- ``status`` -> the sensors read now; ``state``/``ping`` from the runtime.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from drivers.device_daemon import DeviceDaemon, Outcome
from drivers.printer import panels as ink
from drivers.printer import protocol as pr
from drivers.printer.device import Printer
from drivers.printer.protocol import PrinterError, PrinterStatus
from drivers.printer.transport import transport_for
from station.bus import Request
from station.cardface import Side
from station.daemon import main_for
from station.errors import BadRequest, ConfigError
from station.paths import Paths

SIDES = ("front", "back")


def side_from(request: Request, side: str) -> Side | None:
    """The side's two named payloads as arrays; None when the request has no such side."""
    if f"{side}.color" not in request.names:
        return None
    color, black = request.payload(f"{side}.color"), request.payload(f"{side}.black")
    height, width = pr.CARD_HEIGHT, pr.CARD_WIDTH
    if len(color) != height * width * 3 or len(black) != height * width:
        raise BadRequest(f"'{side}' must be {width} x {height}: rgb8 color ({height * width * 3} bytes) and gray8 "
                         f"black ({height * width} bytes), not {len(color)} and {len(black)} bytes")
    return Side(np.frombuffer(color, np.uint8).reshape(height, width, 3),
                np.frombuffer(black, np.uint8).reshape(height, width) != 0)


class PrinterDaemon(DeviceDaemon):
    kind = "printer"
    # A two-sided card: 2 x (rgb8 colour 1.97 MB + gray8 black 0.66 MB), and room to spare.
    max_request_bytes = 8 * 1024 * 1024

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        self.probe_interval_s = float(self.config["probe_interval_s"])
        self.identity: dict[str, Any] = {}
        self.condition: dict[str, Any] = {}
        self.cards = {"fed": 0, "printed": 0, "rejected": 0, "ejected": 0}
        self.commands.register("feed", self._cmd_feed, {"to": {"enum": ["contactless", "contact"]}})
        self.commands.register("print", self._cmd_print)
        self.commands.register("reject", self._cmd_reject)
        self.commands.register("eject", self._cmd_eject)
        self.commands.register("status", self._cmd_status)

    def check_config(self, config: dict[str, Any]) -> None:
        if not config["port"]:
            raise ConfigError([f"printer {self.name}: no printer configured: set 'port' in "
                               f"{self.paths.etc}/printer@{self.name}.yaml (a serial device, /dev/usb/lpN or "
                               "socket://HOST:PORT)"])

    # -- the device -------------------------------------------------------------------------
    def describe(self) -> str:
        return f"card printer on {self.config['port']}"

    def open_device(self) -> Printer:
        c = self.config
        timeouts = c["timeouts"]
        printer = Printer(transport_for(c["port"], baud=c["baud"]), query_timeout_s=timeouts["query_s"],
                          move_timeout_s=timeouts["move_s"], panel_timeout_s=timeouts["panel_s"],
                          print_timeout_s=timeouts["print_s"], ribbon_low=c["ribbon_low"])
        printer.open()
        try:
            printer.identify()
            printer.setup(c["ribbon"])
        except BaseException:
            printer.close()
            raise
        return printer

    def device_opened(self, printer: Printer) -> None:
        self.identity = printer.identity.to_dict() if printer.identity else {}
        self.log.info("identified %s", self.identity)

    def probe_device(self, printer: Printer) -> PrinterStatus:
        return printer.status()

    def device_probed(self, status: PrinterStatus) -> None:
        self._condition(status)

    def device_answered(self, error: BaseException) -> bool:
        return isinstance(error, PrinterError)  # an answer: the printer is there

    def device_lost(self, error: Any) -> None:
        self.condition = {"level": "unknown", "conditions": [], "activity": "offline", "card_position": None,
                          "ribbon_remaining": None, "ribbon": None}
        self.events.publish("condition", self.condition)  # the console must not keep showing "ready"

    def job_limit_s(self) -> float:
        # The longest a print can rightly take: ten panels, the print, two moves; then some.
        timeouts = self.config["timeouts"]
        return 1.5 * (timeouts["print_s"] + 10 * timeouts["panel_s"] + 2 * timeouts["move_s"])

    def apply_config(self, new: dict, old: dict) -> None:
        self.config = new
        self.probe_interval_s = float(new["probe_interval_s"])
        if any(new[k] != old[k] for k in ("port", "baud", "ribbon", "timeouts", "ribbon_low")) and self.device:
            self.reopen("printer settings changed")

    def status_fields(self) -> dict[str, Any]:
        return {**super().status_fields(), "port": self.config["port"], "identity": self.identity,
                "condition": self.condition, "cards": self.cards}

    def _condition(self, status: PrinterStatus) -> None:
        """Publish the sensors' picture when it changed (the console's banner follows it)."""
        condition = status.to_dict()
        if condition != self.condition:
            self.condition = condition
            self.events.publish("condition", condition)

    # -- commands ---------------------------------------------------------------------------
    def _card_job(self, request: Request, action: str, move: Any, counter: str) -> None:
        printer: Printer = self.require_device()

        def job() -> PrinterStatus:
            move(printer)
            return printer.status()

        def finish(status: PrinterStatus) -> Outcome:
            self.cards[counter] += 1
            self._condition(status)
            self.events.publish("card", {"action": action, "position": self.condition.get("card_position")})
            return {"status": self.condition}, {}

        self.run_job(request, job, finish, detail=action)

    def _cmd_feed(self, request: Request) -> None:
        to = request.args.get("to", "contactless")
        move = Printer.move_to_contactless if to == "contactless" else Printer.move_to_contact
        self._card_job(request, f"feeding a card to the {to} station", move, "fed")

    def _cmd_reject(self, request: Request) -> None:
        self._card_job(request, "rejecting the card", Printer.reject, "rejected")

    def _cmd_eject(self, request: Request) -> None:
        self._card_job(request, "ejecting the card", Printer.eject, "ejected")

    def _cmd_print(self, request: Request) -> None:
        printer: Printer = self.require_device()
        sides = {name: side for name in SIDES if (side := side_from(request, name)) is not None}
        if "front" not in sides:
            raise BadRequest("'print' needs the payloads front.color and front.black")
        c = self.config

        def job() -> tuple[dict[str, str], PrinterStatus]:
            separated = {name: ink.separate(side, c["ribbon"], c["color_levels"],
                                            [tuple(r) for r in c["overlay_keep_clear"][name]])
                         for name, side in sides.items()}
            printer.print_card(separated["front"], separated.get("back", ()))
            return {name: "".join(p.letter for p in side) for name, side in separated.items()}, printer.status()

        def finish(result: tuple[dict[str, str], PrinterStatus]) -> Outcome:
            panels, status = result
            self.cards["printed"] += 1
            self._condition(status)
            self.events.publish("card", {"action": "printed", "panels": panels})
            return {"panels": panels, "status": self.condition}, {}

        self.run_job(request, job, finish, detail="printing a card")

    def _cmd_status(self, request: Request) -> None:
        printer: Printer = self.require_device()

        def finish(status: PrinterStatus) -> Outcome:
            self._condition(status)
            return {"identity": self.identity, "status": self.condition}, {}

        self.run_job(request, printer.status, finish)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(PrinterDaemon, "station-printerd", "Card printer daemon (Evolis-style ESC protocol)", argv)
