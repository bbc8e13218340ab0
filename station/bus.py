"""The station bus over ZeroMQ: publisher, subscriber, command server and client.

Publishers number every message per topic and stamp it with the process's boot id, so a
subscriber can tell a lost message (a gap) from a restarted publisher (a new boot) and
resynchronise from a ``state`` snapshot asked on the command socket. Commands are
request/reply over ROUTER/DEALER with a correlation id and a deadline; a reply is either a
result or a structured error ``{code, message, retryable}``, never silence.

Sockets belong to the thread that made them; nothing here starts a thread.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import zmq

import jsonschema
import orjson

from station.envelope import (
    ENVELOPE_VERSION,
    MalformedMessage,
    Message,
    Payloads,
    decode,
    decode_request,
    dump_json,
    scan_corr,
    encode,
    make_header,
    name_payloads,
    payload_names,
    topic_for,
)
from station.errors import BadRequest, CommandError, DeadlineExceeded, StationError

log = logging.getLogger("station.bus")

EVENT_HWM = 1000
FRAME_HWM = 2
HEARTBEAT_S = 1.0
OFFLINE_AFTER_S = 3.0
ABANDON_CHECK_S = 0.2  # how often a waiting CommandClient.call asks whether to give up
# The largest request a command socket accepts: commands carry arguments, never images.
MAX_REQUEST_BYTES = 256 * 1024


def _strict_integer(_checker: Any, instance: Any) -> bool:
    return type(instance) is int  # JSON Schema's "integer" would take 2.0 (and Python's True)


# Argument schemas with integers that are integers: a finger position of 2.0 is a mistake.
ArgumentValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer))


def bind(socket: zmq.Socket, endpoint: str) -> None:
    """Bind, making an ``ipc://`` socket reachable by the station group and nobody else.

    Daemons run with ``UMask=0077``; connecting to a Unix socket needs write permission on
    the socket itself, so operators in group ``station`` get 0660 while the 0750 runtime
    directory keeps everyone else out.
    """
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        socket.bind(endpoint)
        os.chmod(path, 0o660)
    else:
        socket.bind(endpoint)


def check_tcp_secured(endpoint: str, curve: bool) -> None:
    """TCP carries biometric data only under CURVE; refuse a plain TCP endpoint outright."""
    if endpoint.startswith("tcp://") and not curve:
        raise StationError(f"refusing plain TCP endpoint {endpoint}: TCP requires CURVE keys", code="insecure")


class Publisher:
    """One PUB socket: per-topic sequence numbers, a boot id, a heartbeat when idle.

    A frame stream gets its own Publisher with ``hwm=FRAME_HWM`` (a 1080p frame is 6 MB; a
    default HWM would queue gigabytes), events and status another with the normal HWM.
    Payloads of 64 KiB and more are sent zero-copy: the caller must not modify them after
    ``publish``.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        *,
        kind: str,
        src: str,
        boot: str,
        hwm: int = EVENT_HWM,
        heartbeat_s: float = HEARTBEAT_S,
        heartbeat_fields: Callable[[], dict] | None = None,
        heartbeat_event: str = "heartbeat",
        watch_subscribers: bool = False,
    ):
        check_tcp_secured(endpoint, curve=False)
        self.kind, self.src, self.boot = kind, src, boot
        # Two publishers of one daemon (events, frames) must not share a topic: each topic's
        # sequence belongs to exactly one socket.
        self.heartbeat_event = heartbeat_event
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self._heartbeat_fields = heartbeat_fields
        # XPUB tells who subscribes to what, so a publisher can skip work nobody would see.
        self.socket = ctx.socket(zmq.XPUB if watch_subscribers else zmq.PUB)
        self.subscriptions: set[bytes] = set()
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        bind(self.socket, endpoint)
        self.seq: dict[str, int] = {}
        self._last_send = time.monotonic()

    def publish(
        self,
        event: str,
        fields: dict[str, Any] | None = None,
        payloads: Payloads | None = None,
        *,
        t_acq_ns: int | None = None,
        name: str | None = None,
    ) -> int:
        """Publish ``<kind>.<name>.<event>`` (name defaults to the source) with its payloads
        named in the header; returns its seq."""
        topic = topic_for(self.kind, name or self.src, event)
        seq = self.seq.get(topic, 0) + 1
        self.seq[topic] = seq
        frames = encode(topic, make_header(self.src, self.boot, seq, fields, t_acq_ns), payloads)
        for part in frames[2:]:
            memoryview(part)  # a bad part raises here, before half a message is sent
        # Part by part: pyzmq's send_multipart costs more than the send itself for small
        # events. copy=False hands payloads to libzmq; pyzmq still copies parts under its
        # copy threshold (64 KiB), which is exactly the zero-copy rule of the envelope.
        last = len(frames) - 1
        for i, part in enumerate(frames):
            self.socket.send(part, zmq.SNDMORE if i < last else 0, copy=False)
        self._last_send = time.monotonic()
        return seq

    def handle_subscriptions(self) -> None:
        """Read subscription changes (``watch_subscribers``): libzmq passes the first
        subscription to a topic prefix and the last unsubscription, so a set suffices."""
        while self.socket.poll(0):
            message = self.socket.recv()
            if message[:1] == b"\x01":
                self.subscriptions.add(message[1:])
            elif message[:1] == b"\x00":
                self.subscriptions.discard(message[1:])

    def subscribed(self, event: str, name: str | None = None) -> bool:
        """Would anyone receive ``<kind>.<name>.<event>``? (Only with ``watch_subscribers``.)"""
        topic = topic_for(self.kind, name or self.src, event).encode()
        return any(topic.startswith(prefix) for prefix in self.subscriptions)

    def tick(self, now: float | None = None) -> bool:
        """Send a heartbeat if nothing went out for ``heartbeat_s``; True if one was sent."""
        now = time.monotonic() if now is None else now
        if now - self._last_send < self.heartbeat_s:
            return False
        fields = self._heartbeat_fields() if self._heartbeat_fields else {}
        self.publish(self.heartbeat_event, fields)
        return True

    def snapshot(self) -> dict[str, int]:
        return dict(self.seq)

    def close(self) -> None:
        self.socket.close(linger=0)


@dataclass
class StreamState:
    boot: str
    seq: dict[str, int] = field(default_factory=dict)
    last_seen: float = 0.0


class Subscriber:
    """A SUB socket that checks every message, tracks sequences and notices silence.

    A frame-stream subscriber must pass ``hwm=FRAME_HWM``: the receive side queues too, and
    a slow viewer at the default HWM would hold gigabytes of frames.

    ``on_gap(src, topic, expected, got)`` and ``on_boot(src, old, new)`` tell the owner to
    resynchronise (ask the source's ``state`` and pass it to ``apply_snapshot``). Malformed
    messages are counted by reason, logged once per reason, and dropped.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: Iterable[str] = (),
        topics: Iterable[str] = ("",),
        *,
        hwm: int = EVENT_HWM,
        on_gap: Callable[[str, str, int, int], None] | None = None,
        on_boot: Callable[[str, str, str], None] | None = None,
        offline_after_s: float = OFFLINE_AFTER_S,
        zap_domain: str | None = None,
    ):
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        if zap_domain:  # the publishers' credentials are checked (station.peers)
            self.socket.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        for endpoint in endpoints:
            self.connect(endpoint)
        self.on_gap, self.on_boot = on_gap, on_boot
        self.offline_after_s = offline_after_s
        self.streams: dict[str, StreamState] = {}
        self.malformed: dict[str, int] = {}
        self.gaps = 0
        self.stale = 0

    def connect(self, endpoint: str) -> None:
        check_tcp_secured(endpoint, curve=False)
        self.socket.connect(endpoint)

    def receive(self, timeout_ms: int | None = None) -> Message | None:
        """The next good message, or None on timeout or when the one received was dropped.

        Polls only when nothing is waiting (a pyzmq poll costs more than a small receive);
        topic and header arrive as bytes, payloads as zero-copy frames.
        """
        sock = self.socket
        try:
            topic = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            if timeout_ms is not None and not sock.poll(timeout_ms):
                return None
            topic = sock.recv()
        frames: list[Any] = [topic]
        if sock.getsockopt(zmq.RCVMORE):
            frames.append(sock.recv())
            while sock.getsockopt(zmq.RCVMORE):
                frames.append(sock.recv(copy=False))
        return self.accept(frames)

    def accept(self, frames: Sequence[Any], now: float | None = None) -> Message | None:
        """Check one received message against the envelope and the sequence state."""
        try:
            msg = decode(frames)
        except MalformedMessage as exc:
            count = self.malformed.get(exc.reason, 0) + 1
            self.malformed[exc.reason] = count
            if count == 1:
                log.warning("dropped malformed message (%s); further ones are only counted", exc)
            return None
        now = time.monotonic() if now is None else now
        stream = self.streams.get(msg.src)
        if stream is None:
            stream = self.streams[msg.src] = StreamState(boot=msg.boot)
        elif stream.boot != msg.boot:
            old = stream.boot
            stream.boot, stream.seq = msg.boot, {}
            if self.on_boot:
                self.on_boot(msg.src, old, msg.boot)
        stream.last_seen = now
        last = stream.seq.get(msg.topic)
        if last is not None:
            if msg.seq <= last:
                self.stale += 1
                return None
            if msg.seq > last + 1:
                self.gaps += 1
                if self.on_gap:
                    self.on_gap(msg.src, msg.topic, last + 1, msg.seq)
        stream.seq[msg.topic] = msg.seq
        return msg

    def apply_snapshot(self, src: str, boot: str, seq: dict[str, int]) -> None:
        """Adopt a source's snapshot: drop what it already covers, count gaps after it."""
        stream = self.streams.get(src)
        if stream is None or stream.boot != boot:
            stream = self.streams[src] = StreamState(boot=boot, last_seen=time.monotonic())
        for topic, n in seq.items():
            stream.seq[topic] = max(n, stream.seq.get(topic, 0))

    def offline(self, now: float | None = None) -> list[str]:
        """Sources silent for longer than ``offline_after_s``."""
        now = time.monotonic() if now is None else now
        return [src for src, s in self.streams.items() if now - s.last_seen > self.offline_after_s]

    def close(self) -> None:
        self.socket.close(linger=0)


class Request:
    """One command received by a ``CommandServer``; answered once, now or later."""

    def __init__(self, server: "CommandServer", identity: bytes, header: dict, payloads: list[Any]):
        self._server = server
        self.identity = identity
        self.header = header
        self.cmd: str = header["cmd"]
        self.corr: str = header["corr"]
        self.args: dict = header.get("args") or {}
        self.deadline_ns: int = header["deadline_ns"]
        self.payloads = payloads
        self.names: list[str] = header.get("payloads", [])
        self.done = False

    def payload(self, name: str) -> Any:
        """The request's payload named ``name``; ``bad_request`` naming those it has."""
        if name not in self.names:
            raise BadRequest(f"'{self.cmd}' needs a payload named {name!r} (it has {self.names or 'none'})")
        return self.payloads[self.names.index(name)]

    @property
    def remaining_s(self) -> float:
        return (self.deadline_ns - time.time_ns()) / 1e9

    def reply(self, result: dict | None = None, payloads: Payloads | None = None) -> None:
        """Answer with ``result`` and the payloads by name (``{"image": ..., "template": ...}``)."""
        body: dict[str, Any] = {"ok": True, "result": result or {}}
        self._send(body, name_payloads(body, payloads or {}))

    def fail(self, error: StationError) -> None:
        self._send({"ok": False, "error": error.as_reply()}, ())

    def _send(self, body: dict, payloads: Sequence[Any]) -> None:
        if self.done:
            return
        self.done = True
        self._server._pending.pop(self.corr, None)
        self._server.send(self.identity, self.corr, self.cmd, body, payloads)


Handler = Callable[[Request], "dict | None"]


class CommandServer:
    """A ROUTER socket dispatching named commands to handlers.

    A handler returns a result dict (replied at once), or None after keeping the request to
    answer later (a capture that takes seconds). A handler that raises ``StationError``
    produces that structured error; any other exception is logged with its traceback and
    answered as ``internal`` — it never kills the daemon. A kept request still open at its
    deadline is answered with ``deadline_exceeded`` by ``expire()``.

    Nothing a sender puts on the socket can cost more than its own decoding: a frame over
    ``max_bytes`` is refused by libzmq itself (it drops the connection), a request whose
    frames add up to more is refused here, every other message is answered if it
    carries a usable correlation id (``bad_request`` saying what is wrong, the arguments
    checked against the command's schema) and otherwise counted by reason and dropped, and
    no exception leaves ``handle_ready``.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, *, name: str, max_bytes: int = MAX_REQUEST_BYTES,
                 zap_domain: str | None = None):
        check_tcp_secured(endpoint, curve=False)
        self.name = name
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self.max_bytes = max_bytes
        if zap_domain:  # the callers' credentials are checked (station.peers)
            self.socket.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())
        bind(self.socket, endpoint)
        self.handlers: dict[str, Handler] = {}
        self.validators: dict[str, jsonschema.protocols.Validator] = {}
        self._pending: dict[str, Request] = {}
        self.malformed: dict[str, int] = {}

    def register(self, cmd: str, handler: Handler, args: dict[str, dict] | None = None,
                 required: Sequence[str] = ()) -> None:
        """``args``: a JSON Schema per argument the command takes; unknown arguments and
        missing ``required`` ones are refused with ``bad_request`` naming them."""
        schema = {"type": "object", "additionalProperties": False, "properties": args or {},
                  "required": list(required)}
        self.handlers[cmd] = handler
        self.validators[cmd] = ArgumentValidator(schema)

    def pending(self) -> list[Request]:
        return list(self._pending.values())

    def handle_ready(self) -> None:
        """Serve every request already waiting on the socket, without blocking."""
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            try:
                self._dispatch(frames)
            except Exception as exc:  # one message never reaches the main loop, whatever it is
                self._count("dispatch_failed", repr(exc)[:200])

    def _count(self, reason: str, detail: str = "") -> None:
        count = self.malformed[reason] = self.malformed.get(reason, 0) + 1
        if count == 1:
            log.warning("%s: dropped a malformed request (%s: %s); further ones are only counted",
                        self.name, reason, detail)

    def send(self, identity: bytes, corr: str, cmd: str | None, body: dict, payloads: Sequence[Any] = ()) -> None:
        header = {"v": ENVELOPE_VERSION, "corr": corr, **({"cmd": cmd} if cmd else {}), **body}
        try:
            raw = dump_json(header)
        except (TypeError, orjson.JSONEncodeError) as exc:  # a handler's result that JSON cannot carry
            log.error("%s: reply to '%s' does not encode: %s", self.name, cmd, exc)
            error = {"code": "internal", "retryable": False, "message": f"{self.name}: the reply to '{cmd}' "
                     "could not be encoded; this is a bug, see the daemon's log"}
            raw, payloads = dump_json({"v": ENVELOPE_VERSION, "corr": corr, "ok": False, "error": error}), ()
        self.socket.send_multipart([identity, raw, *payloads], copy=False)

    def _refuse(self, identity: bytes, corr: str, cmd: str | None, message: str) -> None:
        self.send(identity, corr, cmd, {"ok": False, "error": BadRequest(f"{self.name}: {message}").as_reply()})

    def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self._count("too_few_frames")
            return
        identity, raw, payloads = frames[0], frames[1], frames[2:]
        size = sum(len(f) for f in frames[1:])
        if size > self.max_bytes:  # libzmq's limit is per frame; this one is per request
            self._count("too_large", f"{size} bytes in {len(frames) - 1} frames")
            corr = scan_corr(raw)
            if corr is not None:
                self._refuse(identity, corr, None, f"request of {size} bytes; the limit is {self.max_bytes}")
            return
        try:
            header = decode_request(raw)
        except MalformedMessage as exc:
            self._count(exc.reason, str(exc))
            if exc.corr is not None:
                self._refuse(identity, exc.corr, None, f"malformed request ({exc})")
            return
        cmd, corr = header["cmd"], header["corr"]
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            self.send(identity, corr, cmd, {"ok": False, "error": StationError(
                f"{self.name}: unknown command '{cmd}' (known: {known})", code="unknown_command").as_reply()})
            return
        problems = [f"{'.'.join(map(str, e.absolute_path)) or 'args'}: {e.message[:200]}"
                    for e in self.validators[cmd].iter_errors(header.get("args") or {})]
        if problems:
            self._refuse(identity, corr, cmd, f"bad arguments to '{cmd}': {'; '.join(problems[:5])}")
            return
        try:
            payload_names(header, len(payloads))
        except MalformedMessage as exc:
            self._count(exc.reason, str(exc))
            self._refuse(identity, corr, cmd, f"malformed request ({exc}): name each payload in 'payloads'")
            return
        request = Request(self, identity, header, payloads)
        if request.remaining_s <= 0:
            request.fail(DeadlineExceeded(f"{self.name}: request '{request.cmd}' arrived after its deadline"))
            return
        self._pending[request.corr] = request
        try:
            result = handler(request)
        except StationError as exc:
            request.fail(exc)
            return
        except Exception as exc:  # a bug in one handler must not take the daemon down
            log.exception("%s: command '%s' failed", self.name, request.cmd)
            request.fail(StationError(f"{self.name}: internal error in '{request.cmd}': {exc!r}"[:500],
                                      code="internal"))
            return
        if result is not None:
            request.reply(result)

    def expire(self) -> None:
        """Answer kept requests whose deadline has passed."""
        now = time.time_ns()
        for request in [r for r in self._pending.values() if r.deadline_ns <= now]:
            request.fail(DeadlineExceeded(f"{self.name}: '{request.cmd}' did not complete before its deadline"))

    def close(self) -> None:
        self.socket.close(linger=0)


@dataclass
class Reply:
    result: dict
    payloads: list[bytes]
    names: list[str] = field(default_factory=list)

    def payload(self, name: str) -> bytes:
        """The payload the reply's header names ``name``."""
        if name not in self.names:
            raise CommandError(f"the reply has no payload {name!r} (it has {self.names or 'none'})",
                               code="internal")
        return self.payloads[self.names.index(name)]


def request_header(cmd: str, args: dict | None, timeout_s: float) -> dict[str, Any]:
    """A command's header, with a fresh ``corr`` and a deadline ``timeout_s`` from now."""
    return {"v": ENVELOPE_VERSION, "corr": secrets.token_hex(8), "cmd": cmd, "args": args or {},
            "deadline_ns": time.time_ns() + int(timeout_s * 1e9)}


def reply_header(frame: bytes) -> dict[str, Any] | None:
    """A reply's first frame decoded; None for one that is not a JSON object."""
    try:
        reply = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return None
    return reply if isinstance(reply, dict) else None


def reply_outcome(peer: str, cmd: str, reply: dict[str, Any], frames: list[Any]) -> Reply:
    """What a reply to ``cmd`` says: its result and named payloads, or its error raised."""
    if not reply.get("ok"):
        raise CommandError.from_reply(reply.get("error") or {})
    try:
        names = payload_names(reply, len(frames))
    except MalformedMessage as exc:
        raise CommandError(f"{peer} answered '{cmd}' with {exc}", code="internal") from None
    return Reply(reply.get("result") or {}, frames, names)


class CommandClient:
    """A DEALER socket for request/reply with one daemon; one thread uses it at a time."""

    def __init__(self, ctx: zmq.Context, endpoint: str, *, name: str | None = None):
        check_tcp_secured(endpoint, curve=False)
        self.endpoint = endpoint
        self.name = name or endpoint
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.stale_replies = 0

    def call(self, cmd: str, args: dict | None = None, *, timeout_s: float = 5.0,
             payloads: Payloads | None = None, abandon: Callable[[], StationError | None] | None = None) -> Reply:
        """Send ``cmd`` and wait for its reply; raise ``CommandError`` or ``DeadlineExceeded``.

        ``abandon``, asked every ``ABANDON_CHECK_S`` while waiting, returns an error when the
        reply can no longer come (the peer died): that error is raised at once instead of
        waiting out the deadline."""
        deadline = time.monotonic() + timeout_s
        header = request_header(cmd, args, timeout_s)
        parts = name_payloads(header, payloads or {})
        self.socket.send_multipart([dump_json(header), *parts], copy=False)
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise DeadlineExceeded(f"no reply from {self.name} to '{cmd}' within {timeout_s:g} s")
            if not self.socket.poll(min(remaining_ms, int(ABANDON_CHECK_S * 1000)) if abandon else remaining_ms):
                reason = abandon() if abandon else None
                if reason is not None:
                    raise reason
                continue
            frames = self.socket.recv_multipart()
            reply = reply_header(frames[0])
            if reply is None or reply.get("corr") != header["corr"]:
                self.stale_replies += 1  # a reply to a request we already gave up on
                continue
            return reply_outcome(self.name, cmd, reply, frames[1:])

    def close(self) -> None:
        self.socket.close(linger=0)
