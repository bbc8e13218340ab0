"""The station controller: enrollment sessions, record sealing and commit, the event journal,
driver supervision.

It knows no serial bytes: it asks the driver daemons for captures over their command
sockets and watches their event streams for status and silence. The rules live in pure
modules (``enrollment`` the session state machine, ``record`` the record building,
``sealing`` the envelope); this daemon wires them to sockets and the store. Every session
transition is written to the store, with its journal event and audit line, before it is
acknowledged; a restarted controller resumes every open session where it was.

Commands on ``controller.cmd`` (operators, the console, the demo, ``stationctl``):

``session.start {applicant, operator}``          -> the session (demographics validated)
``session.get {session}`` / ``session.list``     -> where a session is (after a restart too)
``session.review {session}``                     -> the session with the applicant's demographics and
                                                    the record portrait (payload), for the officer's check
``session.portrait {session}``                   -> portrait quality (images kept, encrypted)
``session.finger {session, position}``           -> the kept impression's scores
``session.exception {session, position, reason}`` / ``session.exception_photo {session}``
``session.finish {session}``                     -> ``{record}`` once sealed and committed
``session.cancel {session, reason}``, ``session.abort {session}`` (stop the capture under
way), ``events.since {since, limit}``, ``record.list``,
``record.get {record}`` (the sealed envelope as payload), ``status``,
``print.status`` / ``print.retry {job}`` / ``print.cancel {job, reason}`` (instant issuance:
``issuance.py``)

Slow work (driver calls, WSQ, signing, sealing, the fsynced commit) runs in a worker
thread; the main loop keeps serving heartbeats, status and other commands meanwhile.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from station import biometrics, config, demographics, enrollment, issuance, keyring, peers, record, sealing
from station.bus import CommandClient, Reply, Request, Subscriber
from station.daemon import Daemon, main_for
from station.enrollment import Finger, Photo, Session, SessionError
from station.envelope import Message
from station.errors import CommandError, ConfigError, DeadlineExceeded, StationError
from station.paths import Paths
from station.store import RecordStore, StoreError, Tx
from station.wsq_ahead import WsqAhead

log = logging.getLogger("station.controller")

JOURNAL_PAGE = 500
EXPIRY_CHECK_S = 1.0
ABORT_TIMEOUT_S = 0.5  # a running driver answers cancel at once


@dataclass
class DriverLink:
    """What the controller knows of one driver daemon."""

    kind: str
    name: str
    online: bool = False
    state: str = "unknown"
    boot: str = ""
    identity: dict[str, Any] = field(default_factory=dict)  # from its snapshot, for the manifest


class Controller(Daemon):
    kind = "station"
    section = "controller"

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        self.keys = keyring.load(paths.keys)
        self.store = RecordStore(paths.store, cipher=self.keys.capture, fsync=self.config["store"]["fsync"],
                                 legacy_sealer=self._seal_legacy)
        self.sessions: dict[str, Session] = {
            s.session_id: s for s in map(Session.from_dict, self.store.open_sessions())}
        self.busy: set[str] = set()
        self.events_not_journaled = 0  # progress events a full disk refused (logged)
        self._published = self.store.last_seq()  # what a restart published before is replayable
        self._next_expiry_check = 0.0
        self.worker = self.add_worker("controller-io")
        self.wsq_ahead = WsqAhead()  # accepted fingers WSQ-encoded while the next is taken
        self.drivers: dict[str, DriverLink] = {}
        self.driver_events: Subscriber | None = None
        self._snapshot_client: dict[str, CommandClient] = {}
        self._resync_at: dict[str, float] = {}  # driver -> when to ask its snapshot
        self._connect_drivers(self.config)
        self.print_queue = issuance.PrintQueue(
            self.store, self.add_worker("controller-printing"), self._call_printer, self._printer_online,
            {**self.config["printing"], "etc": self.paths.etc}, self._publish_journal)
        # ``operator``: who at the station asked (an officer may take over a colleague's
        # session); audited as the actor, the session's own operator otherwise.
        session = {"session": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                   "operator": {"type": "string", "minLength": 1, "maxLength": 64}}
        position = {"position": {"type": "integer", "minimum": 1, "maximum": 10}}
        job = {"job": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
               "operator": {"type": "string", "minLength": 1, "maxLength": 64}}
        for cmd, handler, args, required in (
            ("status", self._cmd_status, None, ()),
            ("session.start", self._cmd_start, {"applicant": {"type": "object", "maxProperties": 32},
                                                "operator": {"type": "string", "minLength": 1, "maxLength": 64}},
             ("applicant", "operator")),
            ("session.get", self._cmd_get, session, ("session",)),
            ("session.list", self._cmd_list, None, ()),
            ("session.review", self._cmd_review, session, ("session",)),
            ("session.portrait", self._cmd_portrait, session, ("session",)),
            ("session.exception_photo", self._cmd_exception_photo, session, ("session",)),
            ("session.finger", self._cmd_finger, {**session, **position}, ("session", "position")),
            ("session.exception", self._cmd_exception,
             {**session, **position, "reason": {"type": "string", "pattern": "^[A-Z]{2}$"}},
             ("session", "position", "reason")),
            ("session.finish", self._cmd_finish, session, ("session",)),
            ("session.cancel", self._cmd_cancel, {**session, "reason": {"type": "string", "maxLength": 200}},
             ("session",)),
            ("session.abort", self._cmd_abort, session, ("session",)),
            ("events.since", self._cmd_events_since,
             {"since": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},  # SQLite's INTEGER
              "limit": {"type": "integer", "minimum": 1, "maximum": JOURNAL_PAGE}}, ()),
            ("record.list", self._cmd_record_list, None, ()),
            ("record.get", self._cmd_record_get, {"record": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
             ("record",)),
            ("print.status", self._cmd_print_status, None, ()),
            ("print.retry", self._cmd_print_retry, job, ("job",)),
            ("print.cancel", self._cmd_print_cancel, {**job, "reason": {"type": "string", "maxLength": 200}},
             ("job",)),
        ):
            self.commands.register(cmd, handler, args, required)

    def load_config(self) -> dict[str, Any]:
        """The controller's file and the enrollment policy, applied (or rejected) together."""
        controller = config.load("controller", None, self.paths.etc, self.overrides)
        if controller["printing"]["instant_issuance"] and not controller["drivers"]["printer"]:
            raise ConfigError([f"{self.paths.etc}/controller.yaml: printing.instant_issuance is on but "
                               "drivers.printer names no printer: add one (e.g. [printer0]) or turn it off"])
        return {**controller, "enrollment": config.load("enrollment", None, self.paths.etc)}

    @property
    def policy(self) -> dict[str, Any]:
        return self.config["enrollment"]

    # -- driver supervision -----------------------------------------------------------------
    def _connect_drivers(self, cfg: dict[str, Any]) -> None:
        """(Re)build the links to the configured drivers; keeps what is known of drivers
        that stay, so a reload does not mark a running scanner offline."""
        links = {}
        for kind in ("camera", "fingerprint", "printer"):
            for driver in cfg["drivers"][kind]:
                old = self.drivers.get(driver)
                links[driver] = old if old is not None and old.kind == kind else DriverLink(kind, driver)
        subscriber = Subscriber(
            self.ctx, [self.paths.pub(n) for n in links], on_gap=self._resync,
            on_boot=lambda src, old, new: self._resync(src), offline_after_s=cfg["offline_after_s"],
            zap_domain=peers.PUBLISHERS)
        clients = {n: CommandClient(self.ctx, self.paths.cmd(n), name=n) for n in links}
        if self.driver_events is not None:
            self.remove_reader(self.driver_events.socket)
            self.driver_events.close()
            for client in self._snapshot_client.values():
                client.close()
        self.drivers, self.driver_events, self._snapshot_client = links, subscriber, clients
        self._resync_at = {n: 0.0 for n in links if links[n].online}
        self.add_reader(subscriber.socket, self._on_driver_events)

    def apply_config(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        if new["drivers"] != old["drivers"] or new["offline_after_s"] != old["offline_after_s"]:
            self._connect_drivers(new)
        # Open sessions keep the policy they started under; new ones take the new policy.
        self.config = new
        self.print_queue.settings = {**new["printing"], "etc": self.paths.etc}

    def setup(self) -> None:
        biometrics.warm_up(assessing=False)  # duplicate-finger comparisons need it from the second finger on
        self._publish_journal()
        self.set_state("ready", f"station {self.keys.station_id}: {self.store.counts()['records']} records, "
                                f"{len(self.sessions)} open sessions")

    def _resync(self, src: str, *_: Any) -> None:
        self._resync_at.setdefault(src, 0.0)

    def _on_driver_events(self) -> None:
        while self.driver_events.socket.poll(0):
            msg = self.driver_events.receive()
            if msg is not None:
                self._track(msg)

    def _track(self, msg: Message) -> None:
        link = self.drivers.get(msg.src)
        if link is None:
            return
        if not link.online:
            link.online = True
            self._resync(msg.src)  # joined late or came back: adopt its snapshot
            self._journal("station.drivers.online", {"driver": link.name, "kind": link.kind})
        if msg.event in ("status", "heartbeat"):
            link.state = msg.get("state", link.state)

    def tick(self, now: float) -> None:
        self.worker.drain()
        for src in self.driver_events.offline(now):
            link = self.drivers.get(src)
            if link and link.online:
                link.online = False
                log.warning("driver %s is silent for more than %.0f s: offline", src, self.driver_events.offline_after_s)
                self._journal("station.drivers.offline", {"driver": src, "kind": link.kind})
        for src, when in list(self._resync_at.items()):
            if now >= when:
                self._snapshot(src, now)
        if now >= self._next_expiry_check:
            self._next_expiry_check = now + EXPIRY_CHECK_S
            self._expire_idle_sessions()
        self.print_queue.tick(now)

    def _snapshot(self, src: str, now: float) -> None:
        """Late-joiner resync: we are subscribed already; adopt the driver's own counters."""
        try:
            snap = self._snapshot_client[src].call("state", timeout_s=0.2).result
        except StationError:
            self._resync_at[src] = now + 1.0  # busy or restarting: ask again in a second
            return
        del self._resync_at[src]
        self.driver_events.apply_snapshot(src, snap["boot"], snap["seq"])
        link = self.drivers[src]
        link.state, link.boot = snap["state"], snap["boot"]
        link.identity = {"kind": link.kind, "boot": snap["boot"], **snap.get("status", {})}

    def healthy(self) -> bool:
        return (self.worker.stuck_for() < 2 * self.config["capture_timeout_s"] + 10
                and self.print_queue.worker.stuck_for() < 3 * self.config["printing"]["step_timeout_s"])

    def shutdown(self) -> None:
        self.worker.stop()
        self.wsq_ahead.close()
        self.print_queue.worker.stop()
        for client in self._snapshot_client.values():
            client.close()
        self.driver_events.close()
        self.store.close()

    # -- persistence: every transition is stored, journaled and audited, then answered ------
    def _journal(self, topic: str, body: dict[str, Any]) -> None:
        """An event that changes no session (a driver came or went, a finger attempt). When
        the store cannot take it (a full disk) it is counted and logged, not raised: it is
        progress news, and no session depends on it."""
        try:
            with self.store.transaction() as tx:
                tx.journal(topic, body)
        except StoreError as exc:
            self.events_not_journaled += 1
            if self.events_not_journaled == 1 or self.events_not_journaled % 100 == 0:
                log.error("event %s not journaled (%d so far): %s", topic, self.events_not_journaled, exc.message)
            return
        self._publish_journal()

    def _write_session(self, tx: Tx, session: Session, topic: str, body: dict[str, Any], action: str,
                       captures: dict[str, bytes] | None = None, actor: str = "") -> None:
        """One transition inside ``tx``: captures, the session's state (encrypted; none once
        it ended, and its captures destroyed), its journal event and audit line."""
        sid, is_open = session.session_id, session.status == enrollment.OPEN
        for name, data in (captures or {}).items():
            tx.put_capture(sid, name, data)
        tx.save_session(sid, session.status, session.operator, session.started_ns, session.updated_ns,
                        session.to_dict() if is_open else None, session.record_id)
        tx.keep_captures(sid, session.captures() if is_open else [])
        tx.journal(topic, {"session": sid, "step": session.step, **body})
        tx.audit(actor or session.operator, action, session_id=sid, record_id=session.record_id or None, **body)

    def _save(self, session: Session, topic: str, body: dict[str, Any], action: str,
              captures: dict[str, bytes] | None = None, actor: str = "") -> None:
        """A transition from the main loop, then its event published. ``actor``: who did it,
        when not the session's operator (``system`` for expiry)."""
        with self.store.transaction() as tx:
            self._write_session(tx, session, topic, body, action, captures, actor)
        if session.status == enrollment.OPEN:
            self.sessions[session.session_id] = session
        else:
            self.sessions.pop(session.session_id, None)
            self.wsq_ahead.drop(session.session_id)
        self._publish_journal()

    def _publish_journal(self) -> None:
        """Publish committed journal entries in sequence order, from the main thread."""
        while True:
            entries = self.store.journal_since(self._published, JOURNAL_PAGE)
            for entry in entries:
                _, name, event = entry.topic.split(".", 2)
                self.events.publish(event, {**entry.body, "jseq": entry.seq}, name=name)
                self._published = entry.seq
            if len(entries) < JOURNAL_PAGE:
                return

    def _expire_idle_sessions(self) -> None:
        now = time.time_ns()
        for session in [s for s in self.sessions.values() if s.session_id not in self.busy]:
            if enrollment.is_idle(session, now):
                self._save(enrollment.expired(session, now), "station.enrollment.session.expired",
                           {"reason": "idle"}, "session.expired", actor="system")
                log.info("session %s expired after %d s idle; its captures are destroyed", session.session_id,
                         session.policy["session_expiry_s"])

    # -- commands ---------------------------------------------------------------------------
    def _cmd_status(self, request: Request) -> dict:
        return {
            "station": self.keys.station_id,
            "drivers": {n: {"kind": d.kind, "online": d.online, "state": d.state} for n, d in self.drivers.items()},
            "sessions": sorted(self.sessions),
            "store": self.store.counts(),
            "journal_seq": self._published,
            "events_not_journaled": self.events_not_journaled,
            "free_mb": self.store.free_bytes() // 2**20,
        }

    def _session(self, request: Request, *, idle: bool = True) -> Session:
        sid = request.args.get("session")
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            raise SessionError(f"no open session {sid!r}; start one with session.start", code="no_session")
        if idle and sid in self.busy:
            raise SessionError("the session is busy with another capture; wait for it", code="busy", retryable=True)
        return session

    @staticmethod
    def _actor(request: Request) -> str:
        return request.args.get("operator", "")

    def _driver(self, kind: str) -> str:
        names = self.config["drivers"][kind]
        name = names[0]
        if not self.drivers[name].online:
            raise SessionError(f"{kind} {name} is offline: check the cable and its service", code="driver_offline",
                               retryable=True)
        return name

    def _cmd_start(self, request: Request) -> dict:
        operator = request.args["operator"]
        applicant = demographics.validate(request.args["applicant"])
        floor = self.config["store"]["min_free_mb"]
        free_mb = self.store.free_bytes() // 2**20
        if free_mb < floor:
            raise SessionError(f"only {free_mb} MB free under {self.paths.state} (the floor is {floor} MB): no new "
                               "enrollment until records are delivered or space is freed", code="disk_low",
                               retryable=True)
        now = time.time_ns()
        session = enrollment.start(secrets.token_hex(8), operator, applicant, self.policy, now)
        self._save(session, "station.enrollment.session.started", {"operator": operator}, "session.start")
        return session.view()

    def _ended(self, request: Request) -> tuple[str, str] | None:
        """(status, record id) when the request names a session that has ended; the schema
        has checked the id already."""
        sid = request.args["session"]
        return None if sid in self.sessions else self.store.session_outcome(sid)

    def _cmd_get(self, request: Request) -> dict:
        ended = self._ended(request)
        if ended is not None:
            return {"session": request.args["session"], "status": ended[0], "record": ended[1] or None}
        return self._session(request, idle=False).view()

    def _cmd_list(self, request: Request) -> dict:
        return {"sessions": [s.view() for s in sorted(self.sessions.values(), key=lambda s: s.started_ns)]}

    def _cmd_review(self, request: Request) -> None:
        """What the officer checks before finish: the session, the applicant's demographics
        and the record portrait (payload ``portrait.jpg``; ``exception-photo.jpg`` when there is one)
        for the officer's screen only."""
        session = self._session(request, idle=False)
        images = {}
        for name, photo in (("portrait.jpg", session.portrait), ("exception-photo.jpg", session.exception_photo)):
            if photo is not None:  # the record JPEG, first of its images
                images[name] = self.store.capture(session.session_id, photo.images[0])
        request.reply({**session.view(), "applicant": dict(session.applicant)}, images)

    def _in_worker(self, request: Request, session: Session, job: Callable[[], Any],
                   finish: Callable[[Any], dict], *, committed_by_job: bool = False) -> None:
        """Run ``job`` (blocking calls to drivers, sealing) in the worker; persist and answer
        from the main loop. A capture that completes after its request's deadline is
        discarded (the officer was already told it failed); a job that committed by itself
        (``committed_by_job``) is always taken in, answered or not."""
        sid = session.session_id

        def done(result: Any, error: BaseException | None) -> None:
            self.busy.discard(sid)
            if error is None and request.done:
                if committed_by_job:
                    finish(result)
                    self._publish_journal()
                else:
                    log.warning("%s for session %s completed after its deadline: discarded", request.cmd, sid)
                return
            if error is None:
                try:
                    request.reply(finish(result))
                except Exception as exc:  # answered below, like a failure in the job itself
                    error = exc
                finally:
                    self._publish_journal()
            if error is None:
                return
            if isinstance(error, StationError):
                request.fail(error)
            else:
                log.error("%s failed", request.cmd, exc_info=error)
                request.fail(StationError(f"{request.cmd} failed: {error!r}", code="internal"))

        self.busy.add(sid)
        self.worker.submit(job, done)

    def _call_driver(self, request: Request, driver: str, cmd: str, args: dict) -> Reply:
        """One command to a driver, from the worker thread, within the operator's deadline.
        A driver that does not answer in time is told to stop the work it started."""
        timeout = min(float(self.config["capture_timeout_s"]), max(request.remaining_s - 0.5, 0.5))
        client = CommandClient(self.ctx, self.paths.cmd(driver), name=driver)
        stream = self.driver_events.streams.get(driver)
        boot = stream.boot if stream else None

        def gone() -> StationError | None:
            """The driver died (went silent, or came back as a new process): no reply will come."""
            stream = self.driver_events.streams.get(driver)
            if not self.drivers[driver].online or (boot and stream and stream.boot != boot):
                return StationError(f"{driver} stopped during '{cmd}' (it is offline or restarted); try again",
                                    code="driver_offline", retryable=True)
            return None

        try:
            return client.call(cmd, args, timeout_s=timeout, abandon=gone)
        except DeadlineExceeded:
            self._cancel_driver(client, driver, float(self.config["command_timeout_s"]))
            raise
        finally:
            client.close()

    def _cancel_driver(self, client: CommandClient, driver: str, timeout_s: float) -> None:
        try:
            client.call("cancel", timeout_s=timeout_s)
        except StationError as exc:
            log.warning("could not cancel the capture on %s: %s", driver, exc.message)

    def _take_photo(self, request: Request, session: Session, mode: str,
                    taken: Callable[[Session, Photo, int], Session], prefix: str, what: str) -> None:
        camera = self._driver("camera")

        def finish(reply: Reply) -> dict:
            result = reply.result
            chip = [n for n in reply.names if n.startswith("portrait-chip.")]
            if "portrait.jpg" not in reply.names or len(chip) != 1:
                raise StationError(f"camera {camera} sent the images {reply.names}, not portrait.jpg and one "
                                   "portrait-chip image", code="internal")
            sent = ("portrait.jpg", chip[0])  # the record JPEG first, then the chip image
            names = [f"{prefix}{name}" for name in sent]
            token = result.get("token") or {}
            now = time.time_ns()
            photo = Photo(camera, result.get("score"), bool(result.get("passed")), bool(result.get("forced")), mode,
                          int(token.get("width", 0)), int(token.get("height", 0)), now, tuple(names))
            current = self.sessions[session.session_id]
            updated = taken(current, photo, now)
            figures = {"score": photo.score, "passed": photo.passed, "forced": photo.forced}
            self._save(updated, f"station.enrollment.{what}.captured", figures, f"session.{what}",
                       captures={n: bytes(reply.payload(m)) for n, m in zip(names, sent)},
                       actor=self._actor(request))
            return {**updated.view(), "hint": result.get("hint"), "hint_code": result.get("hint_code"), **figures}

        self._in_worker(request, session, lambda: self._call_driver(request, camera, "capture", {"mode": mode}),
                        finish)

    def _cmd_portrait(self, request: Request) -> None:
        session = self._session(request)
        enrollment.portrait_allowed(session)
        self._take_photo(request, session, "icao", enrollment.portrait_taken, "", "portrait")

    def _cmd_exception_photo(self, request: Request) -> None:
        session = self._session(request)
        enrollment.exception_photo_allowed(session)
        self._take_photo(request, session, "exception", enrollment.exception_photo_taken, "exception-",
                         "exception_photo")

    def _cmd_finger(self, request: Request) -> None:
        """Capture one finger under the policy: up to N attempts until NFIQ 2 reaches the
        accept level, else keep the best attempt flagged force-captured; refuse a finger that
        matches one of the applicant's other positions (duplicate or swapped finger)."""
        session = self._session(request)
        position = enrollment.finger_allowed(session, request.args.get("position"))
        scanner = self._driver("fingerprint")
        policy = session.policy
        accept, attempts_allowed = policy["nfiq2_accept"], policy["attempts"]
        earlier = {p: self.store.capture(session.session_id, f.template)
                   for p, f in session.fingers.items() if p != position and not f.exception}
        sid = session.session_id

        def job() -> tuple[list[Reply], int]:
            attempts: list[Reply] = []
            spent = 0
            missed: StationError | None = None
            for attempt in range(1, attempts_allowed + 1):
                spent = attempt
                try:
                    reply = self._call_driver(request, scanner, "capture", {"position": position})
                except CommandError as exc:
                    if exc.code != "no_fingerprint":
                        raise
                    missed = exc  # a smudge or a lifted finger: a spent attempt, not the end
                    self.worker.post(lambda a=attempt: self._journal(
                        "station.enrollment.finger.attempt", {"session": sid, "position": position, "attempt": a,
                                                              "nfiq2": None, "no_fingerprint": True}))
                    continue
                nfiq2 = int(reply.result["nfiq2"])
                self.worker.post(lambda a=attempt, q=nfiq2: self._journal(
                    "station.enrollment.finger.attempt", {"session": sid, "position": position, "attempt": a,
                                                          "nfiq2": q}))
                self._refuse_duplicate(position, bytes(reply.payload("template")), earlier, policy)
                attempts.append(reply)
                if nfiq2 >= accept:
                    break
            if not attempts:
                raise missed
            return attempts, spent

        def finish(outcome: tuple[list[Reply], int]) -> dict:
            attempts, spent = outcome
            scores = [int(r.result["nfiq2"]) for r in attempts]
            index, forced = enrollment.keep_best([{"nfiq2": s} for s in scores], accept)
            kept = attempts[index]
            result, now = kept.result, time.time_ns()
            finger = Finger(position, now, scanner=scanner, nfiq2=scores[index], minutiae=result.get("minutiae"),
                            attempts=spent, attempt_nfiq2=tuple(scores), force_captured=forced,
                            width=int(result["width"]), height=int(result["height"]),
                            resolution_ppi=int(result.get("resolution_ppi", 500)))
            updated = enrollment.finger_taken(self.sessions[sid], finger, now)
            image = bytes(kept.payload("image"))
            self._save(updated, "station.enrollment.finger.captured",
                       {"position": position, "nfiq2": finger.nfiq2, "force_captured": forced}, "session.finger",
                       captures={finger.image: image, finger.template: bytes(kept.payload("template"))},
                       actor=self._actor(request))
            if len(image) == finger.width * finger.height:  # else the record's builder says what is wrong
                self.wsq_ahead.submit(sid, np.frombuffer(image, np.uint8).reshape(finger.height, finger.width))
            return {**finger.summary(), "session": updated.view()}

        self._in_worker(request, session, job, finish)

    def _refuse_duplicate(self, position: int, template: bytes, earlier: dict[int, bytes],
                          policy: dict[str, Any]) -> None:
        scores = {other: biometrics.compare(template, t) for other, t in earlier.items()}
        hit = enrollment.duplicate_of(scores, policy["duplicate_finger_threshold"])
        if hit is not None:
            other, score = hit
            raise SessionError(
                f"same finger as {enrollment.FINGER_NAMES[other]} (position {other}, match score {score}): "
                f"place the {enrollment.FINGER_NAMES[position]}", code="duplicate_finger", retryable=True)

    def _cmd_exception(self, request: Request) -> dict:
        session = self._session(request)
        now = time.time_ns()
        updated = enrollment.exception_declared(session, request.args.get("position"), request.args.get("reason"),
                                                now)
        position = request.args["position"]
        self._save(updated, "station.enrollment.finger.exception",
                   {"position": position, "reason": request.args["reason"]}, "session.exception",
                   actor=self._actor(request))
        return {"position": position, "reason": request.args["reason"], "session": updated.view()}

    def _cmd_finish(self, request: Request) -> dict | None:
        ended = self._ended(request)
        if ended is not None and ended[0] == enrollment.FINISHED:
            return {"record": ended[1], "repeated": True}  # the first answer was lost
        session = self._session(request)
        sid = session.session_id
        enrollment.finishable(session)
        record_id = secrets.token_hex(16)
        devices = {n: self.drivers[n].identity for n in self.drivers}
        station_id, destination = self.keys.station_id, self.config["record"]["destination"]
        actor = self._actor(request)
        printing = self.config["printing"]
        queued: list[Any] = []

        def job() -> dict:
            started = time.perf_counter()
            now = time.time_ns()
            bundle = record.build(session, lambda name: self.store.capture(sid, name), record_id=record_id,
                                  station_id=station_id, destination=destination, devices=devices, now_ns=now,
                                  wsq_encode=self.wsq_ahead.encoder(sid))
            card = self._card(session, printing) if printing["instant_issuance"] else None
            sealed = sealing.seal(bundle.data, record_id=record_id, content_type=record.CONTENT_TYPE,
                                  signer=self.keys.signer, central=self.keys.central, created_ns=now)
            closed = enrollment.finished(session, record_id, time.time_ns())
            summary = bundle.summary()
            figures = {"record": record_id, "fingers": summary["fingers"], "exceptions": summary["exceptions"],
                       "force_captured": summary["force_captured"], "sealed_bytes": len(sealed)}
            def closing(tx: Tx) -> None:
                self._write_session(tx, closed, "station.enrollment.completed", figures, "session.finish",
                                    actor=actor)
                if card is not None:
                    queued.append(self.print_queue.queue_in(tx, record_id, card, now))

            row = self.store.commit_record(record_id, sid, record.CONTENT_TYPE, sealed, summary, closing)
            return {"record": record_id, "sealed_bytes": row.sealed_bytes, "sealed_sha256": row.sealed_sha256,
                    "seconds": round(time.perf_counter() - started, 3), "closed": closed}

        def finish(result: dict) -> dict:
            closed = result.pop("closed")
            self.sessions.pop(closed.session_id, None)
            self.wsq_ahead.drop(closed.session_id)
            log.info("record %s sealed and committed (%d bytes)", record_id, result["sealed_bytes"])
            for print_job in queued:
                self.print_queue.adopt(print_job)
                result["print_job"] = print_job.job_id
            return result

        self._in_worker(request, session, job, finish, committed_by_job=True)
        return None

    def _card(self, session: Session, printing: Mapping[str, Any]) -> bytes | None:
        """The card data for instant issuance; None (logged and journaled) when this
        applicant's card cannot be made here, which never stops the record's commit."""
        try:
            return issuance.card_for(session, lambda name: self.store.capture(session.session_id, name),
                                     date.today(), printing["authority"])
        except StationError as exc:
            log.error("no card for session %s: %s", session.session_id, exc.message)
            body = {"session": session.session_id, "error": exc.code}
            self.worker.post(lambda: self._journal("station.print.not_queued", body))
            return None

    # -- instant issuance -------------------------------------------------------------------
    def _printer_online(self) -> bool:
        printers = self.config["drivers"]["printer"]
        return bool(printers) and self.drivers[printers[0]].online

    def _call_printer(self, cmd: str, args: dict, payloads: Mapping[str, Any], timeout_s: float) -> Reply:
        """One command to the printer daemon from the print queue's worker thread."""
        printers = self.config["drivers"]["printer"]
        if not printers or not self._printer_online():
            raise StationError(f"printer {printers[0] if printers else '(none)'} is offline: check the printer and "
                               "its service", code="driver_offline", retryable=True)
        driver = printers[0]
        client = CommandClient(self.ctx, self.paths.cmd(driver), name=driver)
        stream = self.driver_events.streams.get(driver)
        boot = stream.boot if stream else None

        def gone() -> StationError | None:
            stream = self.driver_events.streams.get(driver)
            if not self.drivers[driver].online or (boot and stream and stream.boot != boot):
                return StationError(f"{driver} stopped during '{cmd}'", code="driver_offline", retryable=True)
            return None

        try:
            return client.call(cmd, args, timeout_s=timeout_s, payloads=payloads, abandon=gone)
        finally:
            client.close()

    def _cmd_print_status(self, request: Request) -> dict:
        return {"printer": (self.config["drivers"]["printer"] or [None])[0], "online": self._printer_online(),
                "instant_issuance": self.config["printing"]["instant_issuance"], "jobs": self.print_queue.views()}

    def _cmd_print_retry(self, request: Request) -> dict:
        job = self.print_queue.retry(request.args["job"])
        self._audit_print(request, "print.retry", job)
        return job.view()

    def _cmd_print_cancel(self, request: Request) -> dict:
        job = self.print_queue.cancel(request.args["job"], request.args.get("reason", ""))
        self._audit_print(request, "print.cancel", job)
        return job.view()

    def _audit_print(self, request: Request, action: str, job: Any) -> None:
        with self.store.transaction() as tx:
            tx.audit(self._actor(request) or "operator", action, record_id=job.record_id, job=job.job_id)

    def _cmd_cancel(self, request: Request) -> dict:
        session = self._session(request)
        reason = request.args.get("reason", "")
        self._save(enrollment.cancelled(session, reason, time.time_ns()), "station.enrollment.session.cancelled",
                   {"reason": reason or "cancelled by the operator"}, "session.cancel", actor=self._actor(request))
        return {"cancelled": session.session_id}

    def _cmd_abort(self, request: Request) -> dict:
        """Stop the capture a session is waiting for (the applicant stepped away): the
        driver stops, and the capture's own request is answered ``cancelled``."""
        session = self._session(request, idle=False)
        if session.session_id not in self.busy:
            return {"aborted": False}
        for kind in ("camera", "fingerprint"):
            driver = self.config["drivers"][kind][0]
            if not self.drivers[driver].online:
                continue
            client = CommandClient(self.ctx, self.paths.cmd(driver), name=driver)
            try:
                self._cancel_driver(client, driver, ABORT_TIMEOUT_S)  # on the main loop: short
            finally:
                client.close()
        return {"aborted": True}

    def _cmd_events_since(self, request: Request) -> dict:
        since, limit = request.args.get("since", 0), request.args.get("limit", JOURNAL_PAGE)
        entries = self.store.journal_since(since, limit)
        return {"events": [e.to_dict() for e in entries], "last_seq": self.store.last_seq()}

    def _cmd_record_list(self, request: Request) -> dict:
        return {"records": [r.to_dict() for r in self.store.records()]}

    def _cmd_record_get(self, request: Request) -> None:
        record_id = request.args["record"]
        sealed = self.store.sealed(record_id)  # not_found for an unknown id
        request.reply(self.store.get(record_id).to_dict(), {"sealed": sealed})

    # -- migration of schema-1 plaintext records --------------------------------------------
    def _seal_legacy(self, record_id: str, manifest: dict[str, Any], files: dict[str, bytes]) -> bytes:
        return sealing.seal(record.pack_legacy(manifest, files), record_id=record_id,
                            content_type="application/vnd.station.legacy-record+zip", signer=self.keys.signer,
                            central=self.keys.central)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(Controller, "station-controller", "Station controller: sessions, records, drivers",
                    argv, instance=False, default_name="controller")
