"""The print queue's policy, pure: what a job of instant issuance does next, and what each
of the printer's failures means for the card in it.

No printer, no store, no clock: the controller hands in what the printer daemon answered
and the time, saves the job this module returns (``RecordStore`` ``print_jobs``), and only
then does what the returned ``Action`` says. A restarted controller resumes each job from
its stored form alone (``recover``).

A job prints one card, trying up to ``max_attempts`` blank cards::

    queued --start--> feeding --feed--> encoding --encode--> printing --print--> done
                         ^                  |                    |
                         |   a card spoiled | (jam, chip failed, | ribbon while printing,
                         +------------------+--------------------+ daemon lost, restart)
                         new attempt: reject the card inside, then feed a new one;
                         after max_attempts cards -> rejected ("3 cards spoiled: ...")

    any active step --cover open, feeder, ribbon (not printing), daemon lost--> paused at
        that step (``paused`` names the condition) --printer_ready--> the same step, except
        a lost daemon: the card's state is unknown, so a new attempt
    any active step --printer_command, printer_parameter, internal, bad_request, any code
        not in the table--> rejected (a configuration problem or a bug: no retry)
    any state but done/cancelled --cancel--> cancelled (a card inside is rejected)
    rejected --retry--> queued, attempts reset (the operator fixed the printer)

The card's data is kept, encrypted, while the card may still be printed: queued, active,
and rejected (waiting for the operator's retry or cancel). It is destroyed when the job
is done or cancelled (``DESTROYS_CARD``), so a cancelled card is issued again only from a
new enrollment.

``done`` means feed, encode and print succeeded one after the other on the same card: a
step that succeeded before a spoiled card, a lost daemon or a controller restart does not
count. The codes ``spoiled`` holds are the failure codes above and ``controller_restart``
(``recover`` found the card in an unknown state).

A job holds no personal data: the card's content is the store's (encrypted, destroyed when
the job ends), so the job itself may travel in events and status.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Mapping

from station.errors import StationError

QUEUED, FEEDING, ENCODING, PRINTING = "queued", "feeding", "encoding", "printing"
DONE, REJECTED, CANCELLED = "done", "rejected", "cancelled"
STATES = (QUEUED, FEEDING, ENCODING, PRINTING, DONE, REJECTED, CANCELLED)
ACTIVE = (FEEDING, ENCODING, PRINTING)  # a card may be in the printer
TERMINAL = (DONE, REJECTED, CANCELLED)  # no step runs (a rejected job waits for the operator)
DESTROYS_CARD = (DONE, CANCELLED)  # the card's data is destroyed: nothing can print it again

FEED, ENCODE, PRINT = "feed", "encode", "print"
STEPS = (FEED, ENCODE, PRINT)
_STEP_OF = {FEEDING: FEED, ENCODING: ENCODE, PRINTING: PRINT}
_AFTER = {FEEDING: ENCODING, ENCODING: PRINTING, PRINTING: DONE}

# What a failure code means for the job (the codes of station/errors.CODES).
NEEDS_PERSON = frozenset({"printer_cover_open", "printer_feeder"})  # pause, then the same step
RIBBON = "printer_ribbon"  # while printing the card is spoiled; otherwise a pause
SPOILS_CARD = frozenset({"printer_jam", "encoding_failed"})  # reject the card, a new attempt
DAEMON_LOST = frozenset({"device_error", "driver_offline", "deadline_exceeded"})  # pause; then unknown
FATAL = frozenset({"printer_command", "printer_parameter", "internal", "bad_request"})  # and any other code
RESTART = "controller_restart"  # the spoiled code of a card a restart found in an unknown state


class PrintJobError(StationError):
    """The job cannot do that in its state; the message says its state and what it allows."""

    code = "print_job_state"


class Action(StrEnum):
    """What the controller does next for a job, after saving it."""

    START = "start"  # queued: once the printer is free, call start()
    FEED = "feed"  # move a blank card from the feeder to the contactless station
    ENCODE = "encode"  # write and verify the chip
    PRINT = "print"  # print both sides and eject the card
    REJECT_CARD_THEN_FEED = "reject_card_then_feed"  # reject any card inside, then FEED; report as "feed"
    REJECT_CARD = "reject_card"  # reject the card inside now, then follow next_action(job)
    WAIT = "wait"  # paused: wait until job.paused is resolved, then printer_ready()
    NONE = "none"  # the job has ended


@dataclass(frozen=True)
class PrintJob:
    job_id: str
    record_id: str
    state: str
    attempt: int  # the card this attempt uses, 1-based
    max_attempts: int
    paused: str | None  # the condition code the job waits on
    reason: str  # why it ended (rejected, cancelled)
    spoiled: tuple[str, ...]  # the failure code of each card rejected so far
    created_ns: int
    updated_ns: int
    # A card of a spoiled attempt, or one in an unknown state, may still be in the printer:
    # the next feed rejects it first. A REJECT_CARD that was lost in a crash is covered by it.
    reject_first: bool = False

    def view(self) -> dict[str, Any]:
        """The job as status and the operator's screen show it: ids, state and codes."""
        return {
            "job": self.job_id, "record": self.record_id, "state": self.state, "attempt": self.attempt,
            "max_attempts": self.max_attempts, "paused": self.paused, "reason": self.reason or None,
            "spoiled": list(self.spoiled), "next": next_action(self).value,
            "created_ns": self.created_ns, "updated_ns": self.updated_ns,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spoiled"] = list(self.spoiled)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrintJob":
        job = cls(**{**data, "spoiled": tuple(data["spoiled"])})
        if job.state not in STATES:
            raise PrintJobError(f"print job {job.job_id} has the unknown state {job.state!r}; "
                                f"known: {', '.join(STATES)}", code="bad_request")
        return job


def new_job(job_id: str, record_id: str, max_attempts: int, now_ns: int) -> PrintJob:
    if not job_id or not record_id:
        raise PrintJobError("a print job needs a job id and the record id of its card", code="bad_request")
    if type(max_attempts) is not int or max_attempts < 1:
        raise PrintJobError(f"max_attempts must be a whole number of cards, at least 1, not {max_attempts!r}",
                            code="bad_request")
    return PrintJob(job_id, record_id, QUEUED, 1, max_attempts, None, "", (), now_ns, now_ns)


def next_action(job: PrintJob) -> Action:
    if job.state == QUEUED:
        return Action.START
    if job.state in TERMINAL:
        return Action.NONE
    if job.paused:
        return Action.WAIT
    if job.state == FEEDING:
        return Action.REJECT_CARD_THEN_FEED if job.reject_first else Action.FEED
    return Action.ENCODE if job.state == ENCODING else Action.PRINT


# -- transitions: each returns (the new job, what to do), or raises changing nothing ---------
def start(job: PrintJob, now_ns: int) -> tuple[PrintJob, Action]:
    """The printer is free: the job takes it. Saved as ``feeding`` before the card moves, so
    a restart knows a card may be inside."""
    _require(job, (QUEUED,), "start")
    job = replace(job, state=FEEDING, updated_ns=now_ns)
    return job, next_action(job)


def step_done(job: PrintJob, step: str, now_ns: int) -> tuple[PrintJob, Action]:
    _require_step(job, step, f"report the {step} step done")
    job = replace(job, state=_AFTER[job.state], reject_first=False, updated_ns=now_ns)
    return job, next_action(job)


def step_failed(job: PrintJob, step: str, code: str, message: str, now_ns: int) -> tuple[PrintJob, Action]:
    """Apply the failure table (module docstring) to the step the job is at."""
    _require_step(job, step, f"report the {step} step failed")
    if code in NEEDS_PERSON or code in DAEMON_LOST or (code == RIBBON and job.state != PRINTING):
        # a lost daemon's card is dealt with once it is back (printer_ready)
        return replace(job, paused=code, updated_ns=now_ns), Action.WAIT
    if code == RIBBON:  # while printing: this card is spoiled; the next waits for a new ribbon
        job = _spoil(job, code, RIBBON, now_ns)
        return job, Action.REJECT_CARD
    if code in SPOILS_CARD:
        job = _spoil(job, code, None, now_ns)
        return job, Action.REJECT_CARD if job.state == REJECTED else next_action(job)
    reason = f"{code} at {step}" + (f": {message}" if message else "")
    return _ended(job, REJECTED, reason, now_ns), Action.REJECT_CARD


def printer_ready(job: PrintJob, now_ns: int) -> tuple[PrintJob, Action]:
    """The condition the job waits on is gone. After a lost daemon the card inside is in an
    unknown state: it is spoiled, and a new attempt starts."""
    _require(job, ACTIVE, "resume it (printer_ready)")
    if not job.paused:
        raise PrintJobError(f"print job {job.job_id} is {_describe(job)}, not paused; allowed: {_allowed(job)}")
    if job.paused in DAEMON_LOST and _has_own_card(job):
        job = _spoil(job, job.paused, None, now_ns)
        return job, Action.REJECT_CARD if job.state == REJECTED else next_action(job)
    job = replace(job, paused=None, updated_ns=now_ns)
    return job, next_action(job)


def recover(job: PrintJob, now_ns: int) -> tuple[PrintJob, Action]:
    """A job as a restarted controller finds it. A card in the middle of a step is in an
    unknown state: it is spoiled and a new attempt starts. A pause stays (a restart does not
    change the printer; a ribbon pause dropped would spoil another card finding out)."""
    if job.state not in ACTIVE or not _has_own_card(job) or job.paused in DAEMON_LOST:
        return job, next_action(job)
    job = _spoil(job, RESTART, job.paused, now_ns)
    return job, Action.REJECT_CARD if job.state == REJECTED else next_action(job)


def cancel(job: PrintJob, reason: str, now_ns: int) -> tuple[PrintJob, Action]:
    """The operator withdraws the job; a card inside goes to the reject hopper."""
    _require(job, (QUEUED, *ACTIVE, REJECTED), "cancel")
    action = Action.REJECT_CARD if job.state in ACTIVE else Action.NONE
    return _ended(job, CANCELLED, reason or "cancelled by the operator", now_ns), action


def retry(job: PrintJob, now_ns: int) -> tuple[PrintJob, Action]:
    """Back in the queue with every attempt again (its card data was kept)."""
    _require(job, (REJECTED,), "retry")
    job = replace(job, state=QUEUED, attempt=1, paused=None, reason="", spoiled=(), reject_first=False,
                  updated_ns=now_ns)
    return job, next_action(job)


# -- the rules the transitions share ---------------------------------------------------------
def _has_own_card(job: PrintJob) -> bool:
    """The current attempt may have a card of its own in the printer (fed, being fed, encoded
    or printed), as against an attempt still to reject an earlier card first."""
    return job.state in (ENCODING, PRINTING) or (job.state == FEEDING and not job.reject_first)


def _spoil(job: PrintJob, code: str, paused: str | None, now_ns: int) -> PrintJob:
    spoiled = (*job.spoiled, code)
    if job.attempt >= job.max_attempts:
        names = ", ".join(c.removeprefix("printer_") for c in spoiled)
        plural = "s" if len(spoiled) > 1 else ""
        return _ended(replace(job, spoiled=spoiled), REJECTED, f"{len(spoiled)} card{plural} spoiled: {names}",
                      now_ns)
    return replace(job, state=FEEDING, attempt=job.attempt + 1, spoiled=spoiled, paused=paused,
                   reject_first=True, updated_ns=now_ns)


def _ended(job: PrintJob, state: str, reason: str, now_ns: int) -> PrintJob:
    return replace(job, state=state, reason=reason, paused=None, reject_first=False, updated_ns=now_ns)


def _require(job: PrintJob, states: tuple[str, ...], doing: str) -> None:
    if job.state not in states:
        raise PrintJobError(f"cannot {doing}: print job {job.job_id} is {_describe(job)}; "
                            f"allowed: {_allowed(job)}")


def _require_step(job: PrintJob, step: str, doing: str) -> None:
    if step not in STEPS:
        raise PrintJobError(f"unknown print step {step!r}; the steps are {', '.join(STEPS)}", code="bad_request")
    _require(job, ACTIVE, doing)
    if job.paused or _STEP_OF[job.state] != step:
        raise PrintJobError(f"cannot {doing}: print job {job.job_id} is {_describe(job)}; "
                            f"allowed: {_allowed(job)}")


def _describe(job: PrintJob) -> str:
    if job.state in ACTIVE:
        card = f"card {job.attempt} of {job.max_attempts}"
        if job.paused:
            return f"paused at {job.state} ({card}) waiting for {job.paused}"
        return f"{job.state} ({card})"
    if job.reason:
        return f"{job.state} ({job.reason})"
    return job.state


def _allowed(job: PrintJob) -> str:
    if job.state == QUEUED:
        return "start, cancel"
    if job.state in ACTIVE and job.paused:
        return f"printer_ready once {job.paused} is resolved, cancel"
    if job.state in ACTIVE:
        return f"the {_STEP_OF[job.state]} step done or failed, cancel"
    if job.state == REJECTED:
        return "retry, cancel"
    if job.state == CANCELLED:
        return "nothing: the card data is destroyed; a new card needs a new enrollment"
    return "nothing: the card is printed; a new card is a new job"
