"""The print queue's policy, pure: the happy path, every row of the failure table at every
step, the attempt limit, a restart's recovery, cancel and retry, refused transitions, the
stored form; and a property over any sequence of events: never done without feed, encode
and print succeeding on one card, never more cards than max_attempts."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station import printing
from station.errors import StationError
from station.printing import Action, PrintJob, PrintJobError

STEP_STATES = [("feed", "feeding"), ("encode", "encoding"), ("print", "printing")]


def queued(max_attempts: int = 3) -> PrintJob:
    return printing.new_job("j1", "r1", max_attempts, now_ns=10)


def at(state: str, max_attempts: int = 3) -> PrintJob:
    """A job on its first card, at ``state``."""
    job, _ = printing.start(queued(max_attempts), 20)
    for step, step_state in STEP_STATES:
        if job.state == state:
            return job
        job, _ = printing.step_done(job, step, 30)
    assert job.state == state
    return job


def test_a_job_feeds_encodes_prints_and_is_done():
    job = queued()
    assert (job.state, job.attempt, job.paused, job.spoiled, job.created_ns) == ("queued", 1, None, (), 10)
    assert printing.next_action(job) is Action.START
    job, action = printing.start(job, 11)
    assert (job.state, action, job.updated_ns) == ("feeding", Action.FEED, 11)
    job, action = printing.step_done(job, "feed", 12)
    assert (job.state, action) == ("encoding", Action.ENCODE)
    job, action = printing.step_done(job, "encode", 13)
    assert (job.state, action) == ("printing", Action.PRINT)
    job, action = printing.step_done(job, "print", 14)
    assert (job.state, action, job.attempt, job.spoiled, job.reason) == ("done", Action.NONE, 1, (), "")
    assert job.created_ns == 10 and job.updated_ns == 14 and printing.next_action(job) is Action.NONE


@pytest.mark.parametrize("step,state", STEP_STATES)
@pytest.mark.parametrize("code", ["printer_jam", "encoding_failed"])
def test_a_jam_or_a_failed_chip_spoils_the_card_and_a_new_one_is_fed(step, state, code):
    job, action = printing.step_failed(at(state), step, code, "the card jammed", 40)
    assert (job.state, job.attempt, job.spoiled, job.paused) == ("feeding", 2, (code,), None)
    assert action is Action.REJECT_CARD_THEN_FEED and printing.next_action(job) is action
    assert job.updated_ns == 40 and job.reason == ""
    job, action = printing.step_done(job, "feed", 41)  # the old card rejected, the new one fed
    assert (job.state, action, job.attempt) == ("encoding", Action.ENCODE, 2)


@pytest.mark.parametrize("step,state", STEP_STATES)
@pytest.mark.parametrize("code", ["printer_cover_open", "printer_feeder"])
def test_a_person_must_act_the_job_pauses_then_continues_the_same_step(step, state, code):
    job, action = printing.step_failed(at(state), step, code, "close the cover", 40)
    assert (job.state, job.paused, job.attempt, job.spoiled, action) == (state, code, 1, (), Action.WAIT)
    assert printing.next_action(job) is Action.WAIT
    with pytest.raises(PrintJobError, match=f"paused at {state} .*waiting for {code}"):
        printing.step_done(job, step, 41)
    job, action = printing.printer_ready(job, 42)
    assert (job.state, job.paused, job.attempt, job.spoiled) == (state, None, 1, ())
    assert action is {"feed": Action.FEED, "encode": Action.ENCODE, "print": Action.PRINT}[step]


@pytest.mark.parametrize("step,state", STEP_STATES[:2])
def test_a_ribbon_out_before_printing_only_pauses(step, state):
    job, action = printing.step_failed(at(state), step, "printer_ribbon", "ribbon ended", 40)
    assert (job.state, job.paused, job.attempt, job.spoiled, action) == (state, "printer_ribbon", 1, (), Action.WAIT)
    job, action = printing.printer_ready(job, 41)
    assert (job.state, job.paused, job.attempt) == (state, None, 1)
    assert action is (Action.FEED if step == "feed" else Action.ENCODE)


def test_a_ribbon_out_while_printing_spoils_the_card_rejects_it_then_waits_for_a_new_ribbon():
    job, action = printing.step_failed(at("printing"), "print", "printer_ribbon", "ribbon ended", 40)
    assert action is Action.REJECT_CARD  # the half-printed card goes out now
    assert (job.state, job.attempt, job.spoiled, job.paused) == ("feeding", 2, ("printer_ribbon",), "printer_ribbon")
    assert printing.next_action(job) is Action.WAIT
    job, action = printing.printer_ready(job, 41)
    assert (job.state, job.attempt, job.paused, action) == ("feeding", 2, None, Action.REJECT_CARD_THEN_FEED)
    assert job.spoiled == ("printer_ribbon",)  # the new ribbon spoils nothing more


@pytest.mark.parametrize("step,state", STEP_STATES)
@pytest.mark.parametrize("code", ["device_error", "driver_offline", "deadline_exceeded"])
def test_a_lost_printer_daemon_pauses_and_on_its_return_the_card_is_rejected_and_a_new_one_fed(step, state, code):
    job, action = printing.step_failed(at(state), step, code, "no reply", 40)
    assert (job.state, job.paused, job.attempt, job.spoiled, action) == (state, code, 1, (), Action.WAIT)
    job, action = printing.printer_ready(job, 41)
    assert (job.state, job.attempt, job.spoiled, job.paused) == ("feeding", 2, (code,), None)
    assert action is Action.REJECT_CARD_THEN_FEED


def test_a_lost_daemon_while_rejecting_an_earlier_card_does_not_spoil_another():
    job, _ = printing.step_failed(at("encoding"), "encode", "printer_jam", "", 40)
    job, _ = printing.step_failed(job, "feed", "driver_offline", "", 41)
    job, action = printing.printer_ready(job, 42)
    assert (job.attempt, job.spoiled, action) == (2, ("printer_jam",), Action.REJECT_CARD_THEN_FEED)


@pytest.mark.parametrize("step,state", STEP_STATES)
@pytest.mark.parametrize("code", ["printer_command", "printer_parameter", "internal", "bad_request",
                                  "printer_error", "something_new"])
def test_a_configuration_problem_or_a_bug_rejects_the_job_without_retry(step, state, code):
    job, action = printing.step_failed(at(state), step, code, "the printer refused Pr;9", 40)
    assert (job.state, action, job.attempt, job.spoiled, job.paused) == ("rejected", Action.REJECT_CARD, 1, (), None)
    assert job.reason == f"{code} at {step}: the printer refused Pr;9"
    assert printing.next_action(job) is Action.NONE


def test_after_max_attempts_spoiled_cards_the_job_is_rejected_naming_each():
    job = at("feeding")
    job, action = printing.step_failed(job, "feed", "printer_jam", "", 1)
    job, _ = printing.step_done(job, "feed", 2)
    job, action = printing.step_failed(job, "encode", "printer_jam", "", 3)
    assert (job.attempt, action) == (3, Action.REJECT_CARD_THEN_FEED)
    job, _ = printing.step_done(job, "feed", 4)
    job, action = printing.step_failed(job, "encode", "encoding_failed", "verify failed", 5)
    assert (job.state, action, job.attempt) == ("rejected", Action.REJECT_CARD, 3)
    assert job.reason == "3 cards spoiled: jam, jam, encoding_failed"
    assert job.spoiled == ("printer_jam", "printer_jam", "encoding_failed")


def test_one_card_allowed_one_spoiled_ends_it():
    job, action = printing.step_failed(at("printing", max_attempts=1), "print", "printer_ribbon", "", 5)
    assert (job.state, action, job.paused, job.reason) == ("rejected", Action.REJECT_CARD, None,
                                                          "1 card spoiled: ribbon")


# -- a restarted controller ----------------------------------------------------------------
@pytest.mark.parametrize("state", ["feeding", "encoding", "printing"])
def test_a_restart_mid_step_rejects_the_card_and_starts_a_new_attempt(state):
    job, action = printing.recover(at(state), 50)
    assert (job.state, job.attempt, job.spoiled, job.paused) == ("feeding", 2, ("controller_restart",), None)
    assert action is Action.REJECT_CARD_THEN_FEED and job.updated_ns == 50


def test_a_restart_on_the_last_card_rejects_the_job():
    job, _ = printing.step_failed(at("encoding", max_attempts=2), "encode", "printer_jam", "", 40)
    job, _ = printing.step_done(job, "feed", 41)
    job, action = printing.recover(job, 50)
    assert (job.state, action) == ("rejected", Action.REJECT_CARD)
    assert job.reason == "2 cards spoiled: jam, controller_restart"


def test_a_restart_keeps_a_pause_and_spoils_the_card_once():
    job, _ = printing.step_failed(at("encoding"), "encode", "printer_cover_open", "", 40)
    job, action = printing.recover(job, 50)
    assert (job.state, job.attempt, job.paused, action) == ("feeding", 2, "printer_cover_open", Action.WAIT)
    again, action = printing.recover(job, 60)  # a second restart before the cover is closed
    assert again == job and action is Action.WAIT
    job, action = printing.printer_ready(job, 70)
    assert (job.attempt, job.spoiled, action) == (2, ("controller_restart",), Action.REJECT_CARD_THEN_FEED)


def test_a_restart_counts_nothing_twice():
    spoiled, _ = printing.step_failed(at("printing"), "print", "printer_ribbon", "", 40)
    assert printing.recover(spoiled, 50) == (spoiled, Action.WAIT)  # its card was spoiled already
    lost, _ = printing.step_failed(at("printing"), "print", "driver_offline", "", 40)
    assert printing.recover(lost, 50) == (lost, Action.WAIT)  # the daemon's return spoils it, once
    job, _ = printing.printer_ready(lost, 60)
    assert job.spoiled == ("driver_offline",)


@pytest.mark.parametrize("job,action", [
    (queued(), Action.START), (at("done"), Action.NONE),
    (printing.cancel(at("encoding"), "", 40)[0], Action.NONE),
    (printing.step_failed(at("feeding"), "feed", "internal", "", 40)[0], Action.NONE),
], ids=["queued", "done", "cancelled", "rejected"])
def test_a_restart_leaves_queued_and_ended_jobs_alone(job, action):
    assert printing.recover(job, 99) == (job, action)


# -- the operator ------------------------------------------------------------------------
@pytest.mark.parametrize("state,action", [("queued", Action.NONE), ("feeding", Action.REJECT_CARD),
                                          ("encoding", Action.REJECT_CARD), ("printing", Action.REJECT_CARD)])
def test_cancel_ends_a_job_and_rejects_a_card_inside(state, action):
    job = queued() if state == "queued" else at(state)
    job, got = printing.cancel(job, "applicant left", 60)
    assert (job.state, got, job.reason, job.paused, job.updated_ns) == ("cancelled", action, "applicant left", None, 60)


def test_cancel_a_paused_or_rejected_job_and_not_a_done_or_cancelled_one():
    paused, _ = printing.step_failed(at("encoding"), "encode", "printer_cover_open", "", 40)
    job, action = printing.cancel(paused, "", 41)
    assert (job.state, action, job.paused, job.reason) == ("cancelled", Action.REJECT_CARD, None,
                                                          "cancelled by the operator")
    rejected, _ = printing.step_failed(at("encoding"), "encode", "internal", "", 40)
    job, action = printing.cancel(rejected, "", 41)
    assert (job.state, action) == ("cancelled", Action.NONE)
    with pytest.raises(PrintJobError, match="is cancelled .*allowed: nothing: the card data is destroyed") as refused:
        printing.cancel(job, "", 42)
    assert refused.value.code == "print_job_state"
    with pytest.raises(PrintJobError, match="cannot cancel: print job j1 is done; allowed: nothing"):
        printing.cancel(at("done"), "", 42)


def test_retry_puts_a_rejected_job_back_in_the_queue_with_every_attempt():
    job, _ = printing.step_failed(at("printing", max_attempts=1), "print", "printer_jam", "", 40)
    job, action = printing.retry(job, 50)
    assert (job.state, action, job.attempt, job.spoiled, job.reason, job.paused) == ("queued", Action.START, 1, (),
                                                                                     "", None)
    assert (job.created_ns, job.updated_ns, job.max_attempts) == (10, 50, 1)
    job, action = printing.start(job, 51)
    assert action is Action.FEED and not job.reject_first


@pytest.mark.parametrize("state", ["queued", "feeding", "encoding", "printing", "done", "cancelled"])
def test_retry_is_refused_unless_the_job_was_rejected(state):
    if state == "cancelled":  # its card data is destroyed: nothing to print again
        job, _ = printing.cancel(at("encoding"), "", 40)
    else:
        job = queued() if state == "queued" else at(state)
    with pytest.raises(PrintJobError, match=f"cannot retry: print job j1 is {state}"):
        printing.retry(job, 50)


# -- refused transitions -------------------------------------------------------------------
def test_impossible_transitions_say_the_state_and_what_is_allowed():
    with pytest.raises(PrintJobError, match=r"cannot report the feed step done: print job j1 is queued; "
                                            r"allowed: start, cancel"):
        printing.step_done(queued(), "feed", 1)
    with pytest.raises(PrintJobError, match=r"cannot report the print step done: print job j1 is encoding "
                                            r"\(card 1 of 3\); allowed: the encode step done or failed, cancel"):
        printing.step_done(at("encoding"), "print", 1)
    with pytest.raises(PrintJobError, match=r"cannot report the encode step failed: .* is done"):
        printing.step_failed(at("done"), "encode", "printer_jam", "", 1)
    with pytest.raises(PrintJobError, match="cannot start: print job j1 is feeding"):
        printing.start(at("feeding"), 1)
    with pytest.raises(PrintJobError, match=r"is encoding \(card 1 of 3\), not paused"):
        printing.printer_ready(at("encoding"), 1)
    with pytest.raises(PrintJobError, match=r"cannot resume it \(printer_ready\): print job j1 is queued"):
        printing.printer_ready(queued(), 1)
    rejected, _ = printing.step_failed(at("feeding"), "feed", "printer_command", "unknown command", 1)
    with pytest.raises(PrintJobError, match=r"is rejected \(printer_command at feed: unknown command\); "
                                            r"allowed: retry, cancel"):
        printing.step_done(rejected, "feed", 2)
    paused, _ = printing.step_failed(at("feeding"), "feed", "printer_feeder", "", 1)
    with pytest.raises(PrintJobError, match="allowed: printer_ready once printer_feeder is resolved, cancel"):
        printing.step_failed(paused, "feed", "printer_jam", "", 2)


def test_bad_arguments_are_bad_requests():
    for call in (lambda: printing.step_done(at("feeding"), "laminate", 1),
                 lambda: printing.new_job("j1", "r1", 0, 1), lambda: printing.new_job("j1", "r1", 2.0, 1),
                 lambda: printing.new_job("", "r1", 3, 1)):
        with pytest.raises(PrintJobError) as bad:
            call()
        assert bad.value.code == "bad_request" and isinstance(bad.value, StationError)
    with pytest.raises(PrintJobError, match="unknown print step 'laminate'; the steps are feed, encode, print"):
        printing.step_done(at("feeding"), "laminate", 1)


# -- the stored form -------------------------------------------------------------------------
def test_the_stored_form_round_trips_through_json_and_the_view_holds_only_ids_and_codes():
    job, _ = printing.step_failed(at("printing"), "print", "printer_ribbon", "ribbon ended", 40)
    stored = json.loads(json.dumps(job.to_dict()))
    assert PrintJob.from_dict(stored) == job and stored["spoiled"] == ["printer_ribbon"]
    assert job.view() == {"job": "j1", "record": "r1", "state": "feeding", "attempt": 2, "max_attempts": 3,
                          "paused": "printer_ribbon", "reason": None, "spoiled": ["printer_ribbon"], "next": "wait",
                          "created_ns": 10, "updated_ns": 40}
    with pytest.raises(PrintJobError, match="unknown state 'lost'"):
        PrintJob.from_dict({**stored, "state": "lost"})


# -- any sequence of events ----------------------------------------------------------------
CODES = sorted(printing.NEEDS_PERSON | printing.SPOILS_CARD | printing.DAEMON_LOST | printing.FATAL
               | {printing.RIBBON, "printer_error"})
EVENTS = st.one_of(
    st.sampled_from([("start",), ("ready",), ("recover",), ("cancel",), ("retry",)]),
    st.just(("as_told",)),  # do what next_action says, and succeed: most sequences then reach done
    st.tuples(st.just("done"), st.sampled_from(printing.STEPS)),
    st.tuples(st.just("failed"), st.sampled_from(printing.STEPS), st.sampled_from(CODES)),
)
AS_TOLD = {Action.START: ("start",), Action.WAIT: ("ready",), Action.FEED: ("done", "feed"),
           Action.REJECT_CARD_THEN_FEED: ("done", "feed"), Action.ENCODE: ("done", "encode"),
           Action.PRINT: ("done", "print"), Action.NONE: ("retry",)}


@settings(max_examples=400, deadline=None)
@given(max_attempts=st.integers(1, 4), events=st.lists(EVENTS, max_size=60))
def test_any_sequence_of_events_keeps_the_card_promises(max_attempts, events):
    """Done only after feed, encode and print succeeded on one card, with no restart or lost
    daemon between; never more cards than allowed; every spoiled card rejected before the
    next feed."""
    job = printing.new_job("j1", "r1", max_attempts, 0)
    succeeded: list[str] = []  # steps done on the current card
    for now, event in enumerate(events, start=1):
        before = job
        if event == ("as_told",):
            event = AS_TOLD[printing.next_action(job)]
        try:
            if event[0] == "start":
                job, action = printing.start(job, now)
            elif event[0] == "ready":
                job, action = printing.printer_ready(job, now)
            elif event[0] == "recover":
                job, action = printing.recover(job, now)
            elif event[0] == "cancel":
                job, action = printing.cancel(job, "", now)
            elif event[0] == "retry":
                job, action = printing.retry(job, now)
            elif event[0] == "done":
                job, action = printing.step_done(job, event[1], now)
            else:
                job, action = printing.step_failed(job, event[1], event[2], "", now)
        except PrintJobError as exc:
            assert exc.code == "print_job_state" and job is before
            continue
        if event[0] == "done":
            succeeded.append(event[1])
        # a new card, or one whose state is unknown: nothing done before counts
        if job.attempt != before.attempt or event[0] in ("retry", "recover") or (
                event[0] == "ready" and before.paused in printing.DAEMON_LOST):
            succeeded = []
        if before.state == "done":
            assert job == before  # a printed card stays printed
        elif job.state == "done":
            assert succeeded == ["feed", "encode", "print"], (events, succeeded)
            assert before.state == "printing" and event == ("done", "print")
        assert 1 <= job.attempt <= job.max_attempts == max_attempts
        if job.state in ("rejected", "cancelled") and len(job.spoiled) == job.attempt:
            assert job.attempt == max_attempts  # ended by its last card (then perhaps cancelled)
        else:
            assert len(job.spoiled) == job.attempt - 1
        if job.state == "rejected" and "spoiled" in job.reason:
            assert len(job.spoiled) == max_attempts and job.reason.startswith(f"{max_attempts} card")
        assert job.state in printing.STATES
        if job.state == "feeding" and job.attempt > 1 and not job.paused:
            assert printing.next_action(job) is Action.REJECT_CARD_THEN_FEED
        if job.state in printing.TERMINAL:
            assert job.paused is None and printing.next_action(job) is Action.NONE
        if job.state in ("rejected", "cancelled") and before.state in printing.ACTIVE:
            assert action is Action.REJECT_CARD  # a card that may be inside goes to the hopper
        assert PrintJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
