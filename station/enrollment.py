"""The enrollment session as a pure state machine: which step comes next, what each
command may do at that step, and what the policy says about a finger.

No sockets, no files, no clock of its own: the controller hands in what a device returned
and the time, persists the session this module returns, and only then answers the
officer. So every rule here is unit-tested without a process, and a restarted controller
resumes a session from its stored form alone.

Steps of an open session, in order (each is derived from what the session holds, so a
resumed session can never disagree with its own contents):

``portrait``        the token portrait (skipped when the policy does not require one)
``fingers``         each policy position, captured or declared an exception (``XX``/``UP``)
``exception_photo`` a photo in the camera's exception mode, when any finger is an exception
``review``          everything is there; the officer may retake anything, then finish

An open session ends ``finished`` (a record id), ``cancelled`` or ``expired``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from station.errors import StationError

PORTRAIT, FINGERS, EXCEPTION_PHOTO, REVIEW = "portrait", "fingers", "exception_photo", "review"
OPEN, FINISHED, CANCELLED, EXPIRED = "open", "finished", "cancelled", "expired"
STEPS = (PORTRAIT, FINGERS, EXCEPTION_PHOTO, REVIEW)

FINGER_NAMES = {
    1: "right thumb", 2: "right index", 3: "right middle", 4: "right ring", 5: "right little",
    6: "left thumb", 7: "left index", 8: "left middle", 9: "left ring", 10: "left little",
}


class SessionError(StationError):
    code = "session_error"


class WrongStep(SessionError):
    """The command does not fit the session's step (a finger before the portrait)."""

    code = "wrong_step"


@dataclass(frozen=True)
class Photo:
    """A portrait or exception photo as the camera reported it (images are captures)."""

    camera: str
    score: int | float | None
    passed: bool
    forced: bool
    mode: str
    width: int
    height: int
    captured_ns: int
    images: tuple[str, ...]  # capture names: the record JPEG first, then the chip image


@dataclass(frozen=True)
class Finger:
    """One finger position: the kept impression with its scores, or a declared exception."""

    position: int
    captured_ns: int
    scanner: str = ""
    nfiq2: int | None = None
    minutiae: int | None = None
    attempts: int = 0
    attempt_nfiq2: tuple[int, ...] = ()
    force_captured: bool = False
    width: int = 0
    height: int = 0
    resolution_ppi: int = 500
    exception: str | None = None  # ANSI/NIST 14.018 code, e.g. XX amputated

    @property
    def name(self) -> str:
        return FINGER_NAMES[self.position]

    @property
    def image(self) -> str:
        return f"finger-{self.position:02d}.gray8"

    @property
    def template(self) -> str:
        return f"finger-{self.position:02d}.iso19794-2"

    def summary(self) -> dict[str, Any]:
        """What the officer's screen and the event stream see: scores, never images."""
        if self.exception:
            return {"position": self.position, "name": self.name, "exception": self.exception}
        return {"position": self.position, "name": self.name, "nfiq2": self.nfiq2, "minutiae": self.minutiae,
                "attempts": self.attempts, "attempt_nfiq2": list(self.attempt_nfiq2),
                "force_captured": self.force_captured}


@dataclass(frozen=True)
class Session:
    session_id: str
    operator: str
    applicant: Mapping[str, str]
    policy: Mapping[str, Any]  # the enrollment policy in force when the session started
    started_ns: int
    updated_ns: int
    status: str = OPEN
    portrait: Photo | None = None
    exception_photo: Photo | None = None
    fingers: Mapping[int, Finger] = field(default_factory=dict)
    record_id: str = ""
    ended_reason: str = ""

    # -- derived ----------------------------------------------------------------------------
    @property
    def step(self) -> str:
        if self.status != OPEN:
            return self.status
        if self.policy["portrait_required"] and self.portrait is None:
            return PORTRAIT
        if self.missing_fingers():
            return FINGERS
        if self.exception_photo_needed() and self.exception_photo is None:
            return EXCEPTION_PHOTO
        return REVIEW

    def missing_fingers(self) -> list[int]:
        return [p for p in self.policy["finger_positions"] if p not in self.fingers]

    def exceptions(self) -> dict[int, str]:
        return {p: f.exception for p, f in self.fingers.items() if f.exception}

    def exception_photo_needed(self) -> bool:
        return bool(self.policy["exception_photo_required"] and self.exceptions())

    def captures(self) -> list[str]:
        """Names of every capture this session refers to (the rest may be destroyed)."""
        names: list[str] = []
        for photo in (self.portrait, self.exception_photo):
            if photo is not None:
                names += photo.images
        for finger in self.fingers.values():
            if not finger.exception:
                names += [finger.image, finger.template]
        return names

    def view(self) -> dict[str, Any]:
        """The session as the officer's screen needs it; no demographics, no images."""
        return {
            "session": self.session_id, "status": self.status, "step": self.step, "operator": self.operator,
            "finger_positions": list(self.policy["finger_positions"]), "missing": self.missing_fingers(),
            "next_finger": (self.missing_fingers() or [None])[0],
            "portrait": None if self.portrait is None else
            {"score": self.portrait.score, "passed": self.portrait.passed, "forced": self.portrait.forced},
            "exception_photo": self.exception_photo is not None,
            "exception_photo_needed": self.exception_photo_needed(),
            "fingers": [self.fingers[p].summary() for p in sorted(self.fingers)],
            "record": self.record_id or None, "started_ns": self.started_ns, "updated_ns": self.updated_ns,
        }

    # -- stored form ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fingers"] = [asdict(f) for f in self.fingers.values()]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Session":
        def photo(value: Mapping[str, Any] | None) -> Photo | None:
            return None if value is None else Photo(**{**value, "images": tuple(value["images"])})

        fingers = {}
        for item in data["fingers"]:
            finger = Finger(**{**item, "attempt_nfiq2": tuple(item["attempt_nfiq2"])})
            fingers[finger.position] = finger
        return cls(**{**data, "portrait": photo(data["portrait"]),
                      "exception_photo": photo(data["exception_photo"]), "fingers": fingers})


# -- transitions: each returns the new session, or raises without changing anything ---------
def start(session_id: str, operator: str, applicant: Mapping[str, str], policy: Mapping[str, Any],
          now_ns: int) -> Session:
    if not operator:
        raise SessionError("a session needs the signed-in operator", code="bad_request")
    return Session(session_id, operator, dict(applicant), dict(policy), now_ns, now_ns)


def _require_open(session: Session) -> None:
    if session.status != OPEN:
        raise SessionError(f"session {session.session_id} is {session.status}; start a new one",
                           code="session_closed")


def _require_step(session: Session, allowed: tuple[str, ...], doing: str) -> None:
    _require_open(session)
    if session.step not in allowed:
        raise WrongStep(f"cannot {doing} at step '{session.step}' of session {session.session_id}; "
                        f"next: {describe_next(session)}")


def describe_next(session: Session) -> str:
    step = session.step
    if step == FINGERS:
        position = session.missing_fingers()[0]
        return f"finger {position} ({FINGER_NAMES[position]})"
    return {PORTRAIT: "the portrait", EXCEPTION_PHOTO: "the exception photo",
            REVIEW: "review, then finish"}.get(step, step)


def check_position(session: Session, position: Any) -> int:
    """A policy finger position; ``1.0`` or ``true`` are not positions."""
    positions = session.policy["finger_positions"]
    if type(position) is not int or position not in positions:
        raise SessionError(f"finger position {position!r} is not in the enrollment policy {list(positions)}",
                           code="bad_request")
    return position


def portrait_allowed(session: Session) -> None:
    """A portrait, or a retake, at any step until the session finishes."""
    _require_step(session, STEPS, "take the portrait")


def portrait_taken(session: Session, photo: Photo, now_ns: int) -> Session:
    portrait_allowed(session)
    return replace(session, portrait=photo, updated_ns=now_ns)


def exception_photo_allowed(session: Session) -> None:
    _require_step(session, (EXCEPTION_PHOTO, REVIEW), "take the exception photo")
    if not session.exceptions():
        raise WrongStep("an exception photo belongs to a session with a finger exception")


def exception_photo_taken(session: Session, photo: Photo, now_ns: int) -> Session:
    exception_photo_allowed(session)
    return replace(session, exception_photo=photo, updated_ns=now_ns)


def finger_allowed(session: Session, position: Any) -> int:
    """Check before the scanner is asked: the right step, a policy position."""
    _require_step(session, (FINGERS, EXCEPTION_PHOTO, REVIEW), "capture a finger")
    return check_position(session, position)


def finger_taken(session: Session, finger: Finger, now_ns: int) -> Session:
    finger_allowed(session, finger.position)
    return replace(session, fingers={**session.fingers, finger.position: finger}, updated_ns=now_ns)


def exception_declared(session: Session, position: Any, reason: Any, now_ns: int) -> Session:
    _require_step(session, (FINGERS, EXCEPTION_PHOTO, REVIEW), "declare a finger exception")
    position = check_position(session, position)
    reasons = session.policy["exception_reasons"]
    if not isinstance(reason, str) or reason not in reasons:
        raise SessionError(f"a finger exception needs a reason among {sorted(reasons)} "
                           f"({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}), not {reason!r}",
                           code="bad_request")
    finger = Finger(position, now_ns, exception=reason)
    return replace(session, fingers={**session.fingers, position: finger}, updated_ns=now_ns)


def finishable(session: Session) -> None:
    """Raise unless the record can be built now (the officer reviewed a complete session)."""
    _require_open(session)
    if session.step != REVIEW:
        raise SessionError(f"session {session.session_id} is not complete; next: {describe_next(session)}",
                           code="incomplete")


def finished(session: Session, record_id: str, now_ns: int) -> Session:
    finishable(session)
    return replace(session, status=FINISHED, record_id=record_id, updated_ns=now_ns)


def cancelled(session: Session, reason: str, now_ns: int) -> Session:
    _require_open(session)
    return replace(session, status=CANCELLED, ended_reason=reason or "cancelled by the operator", updated_ns=now_ns)


def expired(session: Session, now_ns: int) -> Session:
    _require_open(session)
    return replace(session, status=EXPIRED, ended_reason="idle past the policy's expiry", updated_ns=now_ns)


def is_idle(session: Session, now_ns: int) -> bool:
    return session.status == OPEN and now_ns - session.updated_ns > session.policy["session_expiry_s"] * 1e9


# -- the finger policy ----------------------------------------------------------------------
def keep_best(attempts: list[dict[str, Any]], accept: int) -> tuple[int, bool]:
    """Index of the attempt to keep and whether it is force-captured: the first that reaches
    the accept level, else the best one (the highest NFIQ 2, earliest on a tie)."""
    for index, attempt in enumerate(attempts):
        if attempt["nfiq2"] >= accept:
            return index, False
    best = max(range(len(attempts)), key=lambda i: (attempts[i]["nfiq2"], -i))
    return best, True


def duplicate_of(scores: Mapping[int, int], threshold: int) -> tuple[int, int] | None:
    """The other position this impression matches (position, score), if any reaches the
    policy's duplicate threshold: a swapped or repeated finger."""
    hits = [(score, position) for position, score in scores.items() if score >= threshold]
    if not hits:
        return None
    score, position = max(hits)
    return position, score
