"""The station controller: enrollment sessions, record commit, driver supervision.

It knows no serial bytes: it asks the driver daemons for captures over their command
sockets and watches their event streams for status and silence. Operators (and the demo,
and ``stationctl``) drive sessions through the control socket ``controller.cmd``:

``session.start {applicant, operator}`` -> ``{session}``
``session.portrait {session}``           -> portrait quality (image kept in the session)
``session.finger {session, position}``   -> finger capture summary
``session.exception {session, position, reason}``
``session.finish {session}``             -> ``{record}`` only after the store committed it
``session.cancel {session}``, ``status``

Blocking calls to drivers run in a worker thread; the main loop keeps serving heartbeats,
status and other commands meanwhile.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from station import biometrics
from station import config
from station.bus import CommandClient, Reply, Request, Subscriber
from station.daemon import Daemon, main_for
from station.envelope import Message
from station.errors import StationError
from station.paths import Paths
from station.store import RecordStore
from station.worker import Worker

log = logging.getLogger("station.controller")

FINGER_NAMES = {
    1: "right thumb", 2: "right index", 3: "right middle", 4: "right ring", 5: "right little",
    6: "left thumb", 7: "left index", 8: "left middle", 9: "left ring", 10: "left little",
}


class SessionError(StationError):
    code = "session_error"


@dataclass
class Session:
    session_id: str
    applicant: dict[str, Any]
    operator: str
    started_ns: int = field(default_factory=time.time_ns)
    portrait: dict[str, Any] | None = None
    portrait_files: dict[str, bytes] = field(default_factory=dict)
    fingers: dict[int, dict[str, Any]] = field(default_factory=dict)
    finger_images: dict[int, bytes] = field(default_factory=dict)
    finger_templates: dict[int, bytes] = field(default_factory=dict)
    exceptions: dict[int, str] = field(default_factory=dict)
    busy: bool = False


@dataclass
class DriverLink:
    """What the controller knows of one driver daemon."""

    kind: str
    name: str
    online: bool = False
    state: str = "unknown"
    boot: str = ""


class Controller(Daemon):
    kind = "station"
    section = "controller"

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        self.policy = config.load("enrollment", None, paths.etc)
        self.store = RecordStore(paths.state / "store", fsync=self.config["store"]["fsync"])
        self.sessions: dict[str, Session] = {}
        self.drivers: dict[str, DriverLink] = {}
        endpoints = []
        for kind in ("camera", "fingerprint"):
            for driver in self.config["drivers"][kind]:
                self.drivers[driver] = DriverLink(kind, driver)
                endpoints.append(paths.pub(driver))
        self.driver_events = Subscriber(
            self.ctx, endpoints, on_gap=self._resync, on_boot=lambda src, old, new: self._resync(src),
            offline_after_s=self.config["offline_after_s"],
        )
        self.add_reader(self.driver_events.socket, self._on_driver_events)
        self._resync_at: dict[str, float] = {}  # driver -> when to ask its snapshot
        self._snapshot_client = {n: CommandClient(self.ctx, paths.cmd(n), name=n) for n in self.drivers}
        self.worker = Worker("controller-io")
        for cmd, handler in {
            "status": self._cmd_status,
            "session.start": self._cmd_start,
            "session.portrait": self._cmd_portrait,
            "session.finger": self._cmd_finger,
            "session.exception": self._cmd_exception,
            "session.finish": self._cmd_finish,
            "session.cancel": self._cmd_cancel,
        }.items():
            self.commands.register(cmd, handler)

    # -- driver supervision -----------------------------------------------------------------
    def setup(self) -> None:
        counts = self.store.counts()
        self.set_state("ready", f"{sum(counts.values())} records in store")

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
            self.events.publish("online", {"driver": link.name, "kind": link.kind}, name="drivers")
        if msg.event in ("status", "heartbeat"):
            link.state = msg.get("state", link.state)

    def tick(self, now: float) -> None:
        self.worker.drain()
        for src in self.driver_events.offline(now):
            link = self.drivers.get(src)
            if link and link.online:
                link.online = False
                log.warning("driver %s is silent for more than %.0f s: offline", src, self.driver_events.offline_after_s)
                self.events.publish("offline", {"driver": src, "kind": link.kind}, name="drivers")
        for src, when in list(self._resync_at.items()):
            if now >= when:
                self._snapshot(src, now)

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

    def healthy(self) -> bool:
        return self.worker.stuck_for() < 2 * self.config["capture_timeout_s"] + 10

    def shutdown(self) -> None:
        self.worker.stop()
        for client in self._snapshot_client.values():
            client.close()
        self.driver_events.close()
        self.store.close()

    # -- commands ---------------------------------------------------------------------------
    def _cmd_status(self, request: Request) -> dict:
        return {
            "drivers": {n: {"kind": d.kind, "online": d.online, "state": d.state} for n, d in self.drivers.items()},
            "sessions": list(self.sessions),
            "store": self.store.counts(),
        }

    def _session(self, request: Request) -> Session:
        session = self.sessions.get(str(request.args.get("session", "")))
        if session is None:
            raise SessionError(f"no open session {request.args.get('session')!r}; start one with session.start")
        if session.busy:
            raise SessionError("the session is busy with another capture; wait for it", retryable=True)
        return session

    def _driver(self, kind: str) -> str:
        names = self.config["drivers"][kind]
        if not names:
            raise SessionError(f"no {kind} configured in controller.yaml drivers.{kind}")
        name = names[0]
        if not self.drivers[name].online:
            raise SessionError(f"{kind} {name} is offline: check the cable and its service", code="driver_offline",
                               retryable=True)
        return name

    def _cmd_start(self, request: Request) -> dict:
        applicant = request.args.get("applicant")
        operator = request.args.get("operator")
        if not isinstance(applicant, dict) or not isinstance(operator, str) or not operator:
            raise SessionError("session.start needs applicant (an object) and operator (an id)", code="bad_request")
        session = Session(secrets.token_hex(8), applicant, operator)
        self.sessions[session.session_id] = session
        self.events.publish("session.started", {"session": session.session_id, "operator": operator}, name="enrollment")
        return {"session": session.session_id, "finger_positions": self.policy["finger_positions"]}

    def _in_worker(self, request: Request, session: Session, job: Callable[[], Any],
                   finish: Callable[[Any], dict]) -> None:
        """Run ``job`` (blocking calls to drivers) in the worker; answer from the main loop."""

        def done(result: Any, error: BaseException | None) -> None:
            session.busy = False
            if error is None:
                try:
                    request.reply(finish(result))
                    return
                except Exception as exc:  # answered below, like a failure in the job itself
                    error = exc
            if isinstance(error, StationError):
                request.fail(error)
            else:
                log.error("%s failed", request.cmd, exc_info=error)
                request.fail(StationError(f"{request.cmd} failed: {error!r}", code="internal"))

        session.busy = True
        self.worker.submit(job, done)

    def _call_driver(self, request: Request, driver: str, cmd: str, args: dict) -> Reply:
        """One command to a driver, from the worker thread, within the operator's deadline."""
        timeout = min(float(self.config["capture_timeout_s"]), max(request.remaining_s - 0.5, 0.5))
        client = CommandClient(self.ctx, self.paths.cmd(driver), name=driver)
        try:
            return client.call(cmd, args, timeout_s=timeout)
        finally:
            client.close()

    def _cmd_portrait(self, request: Request) -> None:
        session = self._session(request)
        camera = self._driver("camera")
        mode = request.args.get("mode", "icao")

        def finish(reply: Reply) -> dict:
            result = reply.result
            session.portrait = {"camera": camera, **{k: v for k, v in result.items() if k != "images"}}
            session.portrait_files = {name: bytes(p) for name, p in zip(result.get("images", []), reply.payloads, strict=True)}
            self.events.publish("portrait.captured", {"session": session.session_id, "score": result.get("score"),
                                                      "forced": result.get("forced", False)}, name="enrollment")
            return {"score": result.get("score"), "passed": result.get("passed"), "forced": result.get("forced"),
                    "hint": result.get("hint"), "images": list(session.portrait_files)}

        self._in_worker(request, session, lambda: self._call_driver(request, camera, "capture", {"mode": mode}),
                        finish)

    def _cmd_finger(self, request: Request) -> None:
        """Capture one finger under the policy: up to N attempts until NFIQ 2 reaches the
        accept level, else keep the best attempt flagged force-captured; refuse a finger that
        matches one of the applicant's other positions (duplicate or swapped finger)."""
        session = self._session(request)
        position = request.args.get("position")
        if position not in self.policy["finger_positions"]:
            raise SessionError(f"finger position {position!r} is not in the enrollment policy "
                               f"{self.policy['finger_positions']}", code="bad_request")
        scanner = self._driver("fingerprint")
        accept, attempts = self.policy["nfiq2_accept"], self.policy["attempts"]
        earlier = {p: t for p, t in session.finger_templates.items() if p != position}
        sid = session.session_id

        def job() -> tuple[Reply, list[int]]:
            best: Reply | None = None
            scores: list[int] = []
            for attempt in range(1, attempts + 1):
                reply = self._call_driver(request, scanner, "capture", {"position": position})
                nfiq2 = int(reply.result["nfiq2"])
                scores.append(nfiq2)
                self.worker.post(lambda a=attempt, q=nfiq2: self.events.publish(
                    "finger.attempt", {"session": sid, "position": position, "attempt": a, "nfiq2": q},
                    name="enrollment"))
                self._refuse_duplicate(position, bytes(reply.payloads[1]), earlier)
                if best is None or nfiq2 > int(best.result["nfiq2"]):
                    best = reply
                if nfiq2 >= accept:
                    break
            return best, scores

        def finish(outcome: tuple[Reply, list[int]]) -> dict:
            reply, scores = outcome
            result = reply.result
            forced = int(result["nfiq2"]) < accept
            summary = {"position": position, "name": FINGER_NAMES[position], "nfiq2": result["nfiq2"],
                       "minutiae": result.get("minutiae"), "attempts": len(scores), "attempt_nfiq2": scores,
                       "force_captured": forced}
            session.fingers[position] = {"scanner": scanner, "width": result["width"], "height": result["height"],
                                         "resolution_ppi": result.get("resolution_ppi", 500), **summary}
            session.finger_images[position] = bytes(reply.payloads[0])
            session.finger_templates[position] = bytes(reply.payloads[1])
            session.exceptions.pop(position, None)
            self.events.publish("finger.captured", {"session": sid, "position": position, "nfiq2": result["nfiq2"],
                                                    "force_captured": forced}, name="enrollment")
            return summary

        self._in_worker(request, session, job, finish)

    def _refuse_duplicate(self, position: int, template: bytes, earlier: dict[int, bytes]) -> None:
        threshold = self.policy["duplicate_finger_threshold"]
        for other, other_template in earlier.items():
            score = biometrics.compare(template, other_template)
            if score >= threshold:
                raise SessionError(
                    f"same finger as {FINGER_NAMES[other]} (position {other}, match score {score}): "
                    f"place the {FINGER_NAMES[position]}", code="duplicate_finger", retryable=True)

    def _cmd_exception(self, request: Request) -> dict:
        session = self._session(request)
        position, reason = request.args.get("position"), request.args.get("reason")
        reasons = self.policy["exception_reasons"]
        if position not in self.policy["finger_positions"] or reason not in reasons:
            raise SessionError(f"an exception needs a policy finger position and a reason among {sorted(reasons)}",
                               code="bad_request")
        session.exceptions[position] = reason
        for captured in (session.fingers, session.finger_images, session.finger_templates):
            captured.pop(position, None)
        return {"position": position, "reason": reason}

    def _cmd_finish(self, request: Request) -> dict:
        session = self._session(request)
        missing = [p for p in self.policy["finger_positions"]
                   if p not in session.fingers and p not in session.exceptions]
        if missing:
            raise SessionError(f"fingers not captured and not declared as exceptions: {missing}", code="incomplete")
        if self.policy["portrait_required"] and session.portrait is None:
            raise SessionError("no portrait captured yet", code="incomplete")
        record_id = secrets.token_hex(16)
        files = dict(session.portrait_files)
        for position, image in session.finger_images.items():
            finger = session.fingers[position]
            pixels = np.frombuffer(image, np.uint8).reshape(finger["height"], finger["width"])
            files[f"finger-{position:02d}.wsq"] = biometrics.wsq_encode(pixels)
            files[f"finger-{position:02d}.iso19794-2"] = session.finger_templates[position]
        manifest = {
            "record": record_id, "session": session.session_id, "station": self.name,
            "operator": session.operator, "applicant": session.applicant,
            "started_ns": session.started_ns, "portrait": session.portrait,
            "fingers": {str(p): f for p, f in session.fingers.items()},
            "exceptions": {str(p): r for p, r in session.exceptions.items()},
        }
        stored = self.store.commit(record_id, session.session_id, manifest, files)
        del self.sessions[session.session_id]
        self.events.publish("completed", {"session": session.session_id, "record": record_id,
                                          "fingers": len(session.fingers), "exceptions": len(session.exceptions)},
                            name="enrollment")
        log.info("record %s committed (%d files)", record_id, len(files))
        return {"record": record_id, "directory": str(stored.directory),
                "files": [f["name"] for f in stored.manifest["files"]]}

    def _cmd_cancel(self, request: Request) -> dict:
        session = self._session(request)
        del self.sessions[session.session_id]
        self.events.publish("session.cancelled", {"session": session.session_id}, name="enrollment")
        return {"cancelled": session.session_id}


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(Controller, "station-controller", "Station controller: sessions, records, drivers",
                    argv, instance=False, default_name="controller")
