"""Instant issuance: the controller's print queue, driving the printer daemon step by step.

The policy is ``printing.py`` (pure); this module wires it to the store, the printer
daemon and a worker thread. One job runs at a time, one step at a time:

1. the main loop asks ``printing.next_action`` what the oldest unfinished job needs;
2. the step (one or two commands to the printer daemon, the card's rendering) runs on the
   queue's own worker thread, so a print that takes a minute never holds up an enrollment;
3. its outcome comes back to the main loop, which applies ``printing.step_done`` or
   ``step_failed``, saves the job with its journal event in one transaction, and only
   then takes the next step.

So whatever dies (the controller, the printer daemon, the printer), the stored job says
which step was under way, and ``printing.recover`` treats that card as unknown: it is
rejected and the job starts a new attempt. A card is never reported done unless every step
of one attempt succeeded. The card's data (``station/card.py``) is at rest only in the
store, encrypted to the station's key, and destroyed when the job ends.

A paused job (cover open, feeder empty, ribbon out, printer daemon gone) asks the printer
for its sensors every ``poll_s`` and resumes once they are clear.

The chip (``encode``) is personalised through the printer's PC/SC encoder, locked, read
back through BAC and verified (``chip.py``) while the card sits at the contactless station;
a chip that fails is ``encoding_failed``: the card is rejected and the job starts a new one.
With ``printing.chip.encoder: none`` the step is recorded as skipped (``chip: none``).
"""
from __future__ import annotations

import logging
import secrets
import time
from datetime import date
from typing import Any, Callable, Mapping

import numpy as np

from station import card as cards
from station import printing
from station.bus import Reply
from station.enrollment import Session
from station.errors import StationError
from station.printing import Action, PrintJob
from station.store import RecordStore
from station.worker import Worker

log = logging.getLogger("station.issuance")

LEFT_INDEX, RIGHT_INDEX = 7, 2  # ANSI/NIST finger positions printed on the back
BLANK_FINGER = np.full((288, 256), 255, np.uint8)  # a finger declared an exception: an empty box
RECENT_ENDED = 50  # ended jobs print.status still lists (the journal has them all)

# How a step calls the printer daemon: (command, args, named payloads, timeout) -> reply.
CallPrinter = Callable[[str, dict, Mapping[str, Any], float], Reply]


def card_for(session: Session, capture: Callable[[str], bytes], issue_date: date, authority: str) -> bytes:
    """The card data of a finished session (portrait, index fingers, demographics), serialised."""
    if session.portrait is None:
        raise StationError("no portrait in the session: a card cannot be printed without one", code="bad_record")

    def finger(position: int) -> np.ndarray:
        taken = session.fingers.get(position)
        if taken is None or taken.exception:
            return BLANK_FINGER
        return np.frombuffer(capture(taken.image), np.uint8).reshape(taken.height, taken.width)

    chip = capture(session.portrait.images[1]) if len(session.portrait.images) > 1 else b""
    data = cards.card_data(session.applicant, capture(session.portrait.images[0]), finger(LEFT_INDEX),
                           finger(RIGHT_INDEX), issue_date, authority, chip)
    return data.to_bytes()


def new_job(record_id: str, max_attempts: int, now_ns: int) -> PrintJob:
    return printing.new_job(secrets.token_hex(8), record_id, max_attempts, now_ns)


def side_payloads(name: str, side: Any) -> dict[str, bytes]:
    """A rendered side as the printer daemon takes it: rgb8 colour and a gray8 black mask."""
    return {f"{name}.color": np.ascontiguousarray(side.color).tobytes(),
            f"{name}.black": (np.asarray(side.black, np.uint8) * 255).tobytes()}


class PrintQueue:
    def __init__(self, store: RecordStore, worker: Worker, call: CallPrinter, printer_online: Callable[[], bool],
                 settings: Mapping[str, Any], saved: Callable[[], None]):
        self.store = store
        self.worker = worker
        self.call = call
        self.printer_online = printer_online
        self.settings = settings
        self.saved = saved  # the controller publishes the journal entries a save wrote
        self.running: str | None = None  # the job whose step is on the worker
        self._next_poll = 0.0
        self._face: Any = None
        self._signer: Any = None  # (key and certificate paths, the loaded Document Signer)
        self.jobs: dict[str, PrintJob] = {}
        now = time.time_ns()
        for row in store.print_jobs():
            job = PrintJob.from_dict(row)
            if job.state in printing.TERMINAL:
                continue
            recovered, action = printing.recover(job, now)
            if recovered != job:
                self._save(recovered, "recovered")
            self.jobs[job.job_id] = recovered

    # -- the controller's entry points -------------------------------------------------------
    def queue_in(self, tx: Any, record_id: str, card: bytes, now_ns: int) -> PrintJob:
        """A job for a committed record, written in the record's own transaction."""
        job = new_job(record_id, int(self.settings["max_attempts"]), now_ns)
        tx.save_print_job(job.to_dict(), card)
        tx.journal("station.print.queued", job.view())
        return job

    def adopt(self, job: PrintJob) -> None:
        """The job ``queue_in`` wrote has committed: run it."""
        self.jobs[job.job_id] = job

    def cancel(self, job_id: str, reason: str) -> PrintJob:
        job = self._job(job_id)
        if self.running == job_id:
            raise StationError(f"print job {job_id} is {job.state} right now; cancel it once the step ends",
                               code="busy", retryable=True)
        job, action = printing.cancel(job, reason, time.time_ns())
        self._save(job, "cancelled")
        if action is Action.REJECT_CARD:
            self.worker.submit(lambda: self._reject_quietly(job.job_id))
        return job

    def retry(self, job_id: str) -> PrintJob:
        """A rejected job (its card data kept) back in the queue: the printer was fixed."""
        job, _ = printing.retry(self._job(job_id), time.time_ns())
        self._save(job, "retried")
        return job

    def views(self, ended: int = RECENT_ENDED) -> list[dict[str, Any]]:
        """Every job still to print or waiting for the operator (rejected), and the last
        ``ended`` done or cancelled, oldest first."""
        jobs = [PrintJob.from_dict(row) for row in self.store.print_jobs()]
        closed = [job for job in jobs if job.state in printing.DESTROYS_CARD]
        keep = {job.job_id for job in closed[-ended:]} if ended else set()
        return [job.view() for job in jobs if job.state not in printing.DESTROYS_CARD or job.job_id in keep]

    # -- the loop ----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.running is not None:
            return
        job = next((j for j in self.jobs.values() if j.state not in printing.TERMINAL), None)
        if job is None:
            return
        action = printing.next_action(job)
        if action is Action.START:
            if not self.printer_online():
                return
            job, action = printing.start(job, time.time_ns())
            self._save(job, "started")
        if action is Action.WAIT:
            if now >= self._next_poll:
                self._next_poll = now + float(self.settings["poll_s"])
                self._run(job, "status", self._ask_status)
            return
        step = {Action.FEED: printing.FEED, Action.REJECT_CARD_THEN_FEED: printing.FEED,
                Action.ENCODE: printing.ENCODE, Action.PRINT: printing.PRINT}.get(action)
        if step is not None:
            self._run(job, step, lambda j: self._step(j, action))

    def _run(self, job: PrintJob, step: str, work: Callable[[PrintJob], Any]) -> None:
        self.running = job.job_id

        def done(result: Any, error: BaseException | None) -> None:  # the main loop
            self.running = None
            self._settle(job.job_id, step, result, error)

        self.worker.submit(lambda: work(job), done)

    def _step(self, job: PrintJob, action: Action) -> Any:
        """One step on the worker thread; raises the printer's error as it came."""
        if action is Action.REJECT_CARD_THEN_FEED:
            self._call("reject", {}, {})
        if action in (Action.FEED, Action.REJECT_CARD_THEN_FEED):
            return self._call("feed", {"to": "contactless"}, {}).result
        if action is Action.ENCODE:
            return self._encode(job)
        front, back = self._render(job)
        return self._call("print", {}, {**side_payloads("front", front), **side_payloads("back", back)}).result

    def _ask_status(self, job: PrintJob) -> dict[str, Any]:
        if not self.printer_online():
            return {"ready": False}
        status = self._call("status", {}, {}).result.get("status", {})
        return {"ready": status.get("level") != "error" and "feeder_empty" not in status.get("conditions", [])}

    def _settle(self, job_id: str, step: str, result: Any, error: BaseException | None) -> None:
        """The main loop takes a step's outcome into the job and saves it."""
        job = self.jobs.get(job_id)
        if job is None or job.state in printing.TERMINAL:
            return  # cancelled meanwhile
        now = time.time_ns()
        if step == "status":
            if error is None and result.get("ready"):
                job, _ = printing.printer_ready(job, now)
                self._save(job, "resumed")
            return
        if error is None:
            job, _ = printing.step_done(job, step, now)
            self._save(job, step, result if isinstance(result, dict) else {})
            return
        code = error.code if isinstance(error, StationError) else "internal"
        message = error.message if isinstance(error, StationError) else repr(error)
        if not isinstance(error, StationError):
            log.error("print job %s: the %s step failed", job_id, step, exc_info=error)
        job, action = printing.step_failed(job, step, code, message, now)
        self._save(job, f"{step}_failed", {"error": code})
        if action is Action.REJECT_CARD:  # the spoiled card out now (before any next step)
            self.worker.submit(lambda: self._reject_quietly(job_id))

    # -- pieces ----------------------------------------------------------------------------
    def _call(self, cmd: str, args: dict, payloads: Mapping[str, Any]) -> Reply:
        return self.call(cmd, args, payloads, float(self.settings["step_timeout_s"]))

    def _encode(self, job: PrintJob) -> dict[str, Any]:
        """The chip: personalised, locked, read back through BAC and verified (``chip.py``);
        with ``active_authentication``, its own key pair in DG15, proven on read-back."""
        settings = self.settings["chip"]
        if settings["encoder"] == "none":
            return {"chip": "none"}
        from station import bac, chip, lds

        data = cards.CardData.from_bytes(self.store.print_card(job.job_id))
        if not data.chip_portrait:
            raise StationError("the card has no chip portrait (the camera's portrait-chip image)", code="bad_record")
        signer = self._document_signer(settings)
        line1, line2, _ = cards.mrz_lines(data)
        mrz_information, csca = bac.mrz_information_from_td1(line1, line2), settings["csca"] or None
        encoder = chip.ChipEncoder(settings["reader"], card_wait_s=float(settings["card_wait_s"]))
        if settings["active_authentication"]:  # the chip's AA key first: DG15 is in the signed EF.SOD
            encoded = encoder.encode_with_active_authentication(
                lambda aa_key: lds.lds_files(data, data.chip_portrait, signer, aa_key), mrz_information, csca)
        else:
            encoded = encoder.encode(lds.lds_files(data, data.chip_portrait, signer), mrz_information, csca)
        return {"chip": "verified", "files": sorted(encoded.files), "seconds": encoded.seconds,
                "chain_checked": bool(settings["csca"]), "active_authentication": encoded.active_authentication}

    def _document_signer(self, settings: Mapping[str, Any]) -> Any:
        from station import pki

        signer = settings["document_signer"]
        if not signer["key"] or not signer["certificate"]:
            raise StationError("printing.chip.document_signer names no key and certificate: the chip cannot be "
                               "signed (stationctl pki init-test makes a test pair)", code="config_invalid")
        key = (signer["key"], signer["certificate"])
        if self._signer is None or self._signer[0] != key:
            self._signer = (key, pki.load_document_signer(*key))
        return self._signer[1]

    def _render(self, job: PrintJob) -> tuple[Any, Any]:
        from station.cardface import CardFace  # Pillow and the fonts load on the first print only

        data = cards.CardData.from_bytes(self.store.print_card(job.job_id))
        if self._face is None:
            self._face = CardFace.from_config(self.settings.get("etc"))
        return self._face.render(data)

    def _reject_quietly(self, job_id: str) -> None:
        try:
            self._call("reject", {}, {})
        except StationError as exc:
            log.warning("could not reject the card of cancelled print job %s: %s", job_id, exc.message)

    def _job(self, job_id: str) -> PrintJob:
        job = self.jobs.get(job_id)
        if job is None:
            row = self.store.print_job(job_id)
            if row is None:
                raise StationError(f"no print job {job_id}", code="not_found")
            job = PrintJob.from_dict(row)
        return job

    def _save(self, job: PrintJob, event: str, extra: Mapping[str, Any] | None = None) -> None:
        with self.store.transaction() as tx:
            tx.save_print_job(job.to_dict())
            tx.journal(f"station.print.{event}", {**job.view(), **(extra or {})})
        self.jobs[job.job_id] = job
        if job.state in printing.TERMINAL:
            self.jobs.pop(job.job_id, None)
        self.saved()
