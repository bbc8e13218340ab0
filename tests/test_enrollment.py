"""The session state machine and finger policy, pure: every transition, cancel at every
step, expiry, exceptions with their photo, and the stored form a restart resumes from."""
import json

import pytest
import yaml

from station import config, enrollment
from station.enrollment import Finger, Photo, SessionError, WrongStep

POLICY = {**config.load("enrollment"), "finger_positions": [1, 2, 3]}
APPLICANT = {"full_name": "Nguyễn Thị Hương", "sex": "F"}


def photo(mode: str = "icao", prefix: str = "") -> Photo:
    return Photo("cam0", 88, True, False, mode, 480, 640, 5, (f"{prefix}portrait.jpg", f"{prefix}portrait-chip.jp2"))


def finger(position: int, nfiq2: int = 60) -> Finger:
    return Finger(position, 10, scanner="fp0", nfiq2=nfiq2, minutiae=40, attempts=1, attempt_nfiq2=(nfiq2,),
                  width=256, height=288)


def new(policy=POLICY) -> enrollment.Session:
    return enrollment.start("s1", "op7", APPLICANT, policy, now_ns=1)


def test_steps_follow_the_officers_flow_to_review_and_finish():
    s = new()
    assert s.step == "portrait" and s.view()["next_finger"] == 1
    with pytest.raises(WrongStep, match="next: the portrait"):
        enrollment.finger_taken(s, finger(1), 2)
    s = enrollment.portrait_taken(s, photo(), 2)
    assert s.step == "fingers"
    with pytest.raises(SessionError, match="not complete; next: finger 1 \\(right thumb\\)") as incomplete:
        enrollment.finishable(s)
    assert incomplete.value.code == "incomplete"
    for position in (2, 1, 3):  # any order within the fingers step
        s = enrollment.finger_taken(s, finger(position), 3)
    assert s.step == "review" and s.missing_fingers() == []
    done = enrollment.finished(s, "r" * 32, 4)
    assert done.step == "finished" and done.record_id == "r" * 32
    with pytest.raises(SessionError) as closed:
        enrollment.finger_taken(done, finger(1), 5)
    assert closed.value.code == "session_closed"


def test_an_exception_needs_its_photo_before_review():
    s = enrollment.portrait_taken(new(), photo(), 2)
    s = enrollment.finger_taken(s, finger(1), 3)
    s = enrollment.exception_declared(s, 2, "XX", 4)
    s = enrollment.finger_taken(s, finger(3), 5)
    assert s.step == "exception_photo" and s.exceptions() == {2: "XX"}
    with pytest.raises(SessionError, match="the exception photo"):
        enrollment.finishable(s)
    s = enrollment.exception_photo_taken(s, photo("exception", "exception-"), 6)
    assert s.step == "review"
    # the exception finger has no image or template among the captures to keep
    assert set(s.captures()) == {"portrait.jpg", "portrait-chip.jp2", "exception-portrait.jpg",
                                 "exception-portrait-chip.jp2", "finger-01.gray8", "finger-01.iso19794-2",
                                 "finger-03.gray8", "finger-03.iso19794-2"}
    # capturing the finger after all replaces the exception; the photo is then not needed
    s = enrollment.finger_taken(s, finger(2), 7)
    assert s.exceptions() == {} and not s.exception_photo_needed() and s.step == "review"


def test_exception_photo_only_when_policy_asks_and_only_with_an_exception():
    s = enrollment.portrait_taken(new(), photo(), 2)
    with pytest.raises(WrongStep):
        enrollment.exception_photo_taken(s, photo("exception"), 3)
    relaxed = new({**POLICY, "exception_photo_required": False})
    relaxed = enrollment.portrait_taken(relaxed, photo(), 2)
    for position, reason in ((1, "XX"), (2, "UP"), (3, "XX")):
        relaxed = enrollment.exception_declared(relaxed, position, reason, 3)
    assert relaxed.step == "review"


def test_portrait_can_be_skipped_by_policy_and_retaken_in_review():
    s = new({**POLICY, "portrait_required": False})
    assert s.step == "fingers"
    s = enrollment.portrait_taken(s, photo(), 2)  # an optional portrait is still allowed
    for position in (1, 2, 3):
        s = enrollment.finger_taken(s, finger(position), 3)
    retaken = enrollment.portrait_taken(s, Photo("cam0", 95, True, False, "icao", 480, 640, 9, ("p.jpg", "p.jp2")), 9)
    assert retaken.step == "review" and retaken.portrait.score == 95 and retaken.updated_ns == 9


@pytest.mark.parametrize("position", [1.0, True, "1", None, 0, 11, 4, [1]])
def test_only_policy_positions_that_are_integers_are_fingers(position):
    s = enrollment.portrait_taken(new(), photo(), 2)
    with pytest.raises(SessionError) as bad:
        enrollment.finger_allowed(s, position)
    assert bad.value.code == "bad_request"
    with pytest.raises(SessionError):
        enrollment.exception_declared(s, position, "XX", 3)


def test_exception_reason_must_be_from_the_policy():
    s = enrollment.portrait_taken(new(), photo(), 2)
    with pytest.raises(SessionError, match="XX amputated") as bad:
        enrollment.exception_declared(s, 1, "ZZ", 3)
    assert bad.value.code == "bad_request"


def steps_reached():
    """A session at each open step, built the way an officer gets there."""
    s = new()
    yield "portrait", s
    s = enrollment.portrait_taken(s, photo(), 2)
    yield "fingers", s
    s = enrollment.finger_taken(enrollment.exception_declared(s, 1, "UP", 3), finger(2), 3)
    s = enrollment.finger_taken(s, finger(3), 4)
    yield "exception_photo", s
    yield "review", enrollment.exception_photo_taken(s, photo("exception", "exception-"), 5)


@pytest.mark.parametrize("step,session", list(steps_reached()))
def test_cancel_at_every_step_ends_the_session_and_keeps_no_capture(step, session):
    assert session.step == step
    gone = enrollment.cancelled(session, "applicant left", 100)
    assert gone.step == "cancelled" and gone.ended_reason == "applicant left"
    with pytest.raises(SessionError) as again:
        enrollment.cancelled(gone, "", 101)
    assert again.value.code == "session_closed"


@pytest.mark.parametrize("step,session", list(steps_reached()))
def test_stored_form_resumes_the_same_session_at_every_step(step, session):
    stored = json.loads(json.dumps(session.to_dict()))  # what the store keeps (encrypted)
    resumed = enrollment.Session.from_dict(stored)
    assert resumed == session and resumed.step == step and resumed.view() == session.view()


def test_idle_sessions_expire_after_the_policy_time():
    s = new({**POLICY, "session_expiry_s": 60})
    assert not enrollment.is_idle(s, 1 + 59 * 10**9)
    assert enrollment.is_idle(s, 2 + 60 * 10**9)
    gone = enrollment.expired(s, 61 * 10**9)
    assert gone.status == "expired" and not enrollment.is_idle(gone, 10**15)


def test_best_attempt_policy():
    assert enrollment.keep_best([{"nfiq2": 30}, {"nfiq2": 45}], accept=40) == (1, False)
    assert enrollment.keep_best([{"nfiq2": 30}, {"nfiq2": 35}, {"nfiq2": 12}], accept=40) == (1, True)
    assert enrollment.keep_best([{"nfiq2": 20}, {"nfiq2": 20}], accept=40) == (0, True)  # earliest on a tie


def test_duplicate_finger_is_the_strongest_match_at_or_above_threshold():
    assert enrollment.duplicate_of({1: 12, 3: 79}, threshold=80) is None
    assert enrollment.duplicate_of({1: 150, 3: 80}, threshold=80) == (1, 150)


def test_view_carries_no_demographics():
    s = enrollment.portrait_taken(new(), photo(), 2)
    text = json.dumps(s.view(), ensure_ascii=False)
    assert "Nguyễn" not in text and "full_name" not in text


def test_packaged_policy_has_every_key_the_state_machine_reads():
    packaged = yaml.safe_load(open(config._packaged_dir() / "enrollment.yaml"))
    assert {"exception_photo_required", "session_expiry_s", "portrait_required", "finger_positions"} <= set(packaged)
