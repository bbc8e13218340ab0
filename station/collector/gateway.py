"""The collector gateway: stations connect here over CURVE and deliver records and events.

One ROUTER socket, CURVE server, ZAP domain ``collector``: a connecting key is looked up in
the allowlist (one public key bundle per station, minus the revoked), and the station id it
belongs to becomes the connection's ``User-Id``. Every message is attributed to that id,
never to what the message claims, and re-checked against the allowlist, so a revocation
applied by SIGHUP cuts a connected station off at its next message.

The main loop only decodes, spools record pieces, acknowledges their receipt and answers
pings. A complete record's hash and signatures are checked in a verifier thread; everything
that touches storage runs in one storage thread, in batches: while one batch is being
written the next accumulates (and the verifier checks the records after it), so a busy
collector writes many records per fsync (group commit) and a quiet one answers at once.
Nothing is acknowledged as stored before the backend says it is durable.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import zmq

from station import link, sealing
from station.collector.allowlist import Allowlist
from station.collector.spool import Spool, SpoolFull
from station.collector.storage import EventGap, NewRecord, StationEvent, Storage, StoredRecord
from station.daemon import Daemon, main_for
from station.errors import BadRequest, StationError
from station.paths import Paths

DOMAIN = "collector"
KEY_FILE = "collector.key"
SPOOL_SWEEP_EVERY_S = 600.0  # how often abandoned record pieces are looked for


@dataclass
class Op:
    """One storage operation and where its answer goes."""
    kind: str                          # hello, status, events, offer, record, confirm
    identity: bytes
    station: str
    message: link.LinkMessage
    blob: bytes | memoryview = b""     # a complete record
    record: NewRecord | None = None    # ... once its signatures verified
    replies: list[list] = field(default_factory=list)


def data_dir(config: dict[str, Any], paths: Paths) -> Path:
    return Path(config["data_dir"]) if config["data_dir"] else paths.state / "collector"


def open_storage(config: dict[str, Any], directory: Path, *, name: str = "collector",
                 read_only: bool = False) -> Storage:
    settings = config["storage"]
    if settings["backend"] == "jetstream":
        from station.collector.jetstream import JetStreamStorage
        if not settings["nats"]:
            raise StationError("storage.backend is jetstream but storage.nats lists no server", code="config_invalid")
        return JetStreamStorage(settings["nats"], replicas=settings["replicas"], collector=name)
    from station.collector.embedded import EmbeddedStorage
    return EmbeddedStorage(directory, fsync=settings["fsync"], read_only=read_only)


def load_key(directory: Path) -> tuple[bytes, bytes]:
    """The gateway's CURVE key pair (public, secret) from ``collector.key`` (Z85 secret, 0600)."""
    path = directory / KEY_FILE
    try:
        info = os.stat(path)
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise StationError(f"cannot read the collector key {path}: {exc.strerror}; create it with: "
                           f"station-collector init --data-dir {directory}", code="not_provisioned") from None
    if info.st_mode & 0o077:
        raise StationError(f"{path} is readable by group/others; run: chmod 600 {path}", code="bad_permissions")
    try:
        return zmq.curve_public(secret), secret
    except (ValueError, zmq.ZMQError):
        raise StationError(f"{path} does not hold a Z85 CURVE secret key", code="bad_key") from None


class Collector(Daemon):
    kind = "collector"
    section = "collector"

    def __init__(self, name: str, paths: Paths, overrides=(), storage: Storage | None = None):
        super().__init__(name, paths, overrides)
        self.data_dir = data_dir(self.config, paths)
        self.public_key, secret = load_key(self.data_dir)
        self.allowlist = Allowlist.load(self.data_dir / self.config["stations_dir"], self.config["revoked"])
        self.zap.allow_curve(DOMAIN, self.allowlist.station_for_key)
        self.storage = storage or open_storage(self.config, self.data_dir, name=name)
        self.spool = Spool(self.data_dir / "spool", self._spool_cap(self.config))
        self._next_sweep = 0.0  # the first loop turn sweeps what a previous run left
        self.link = self.ctx.socket(zmq.ROUTER)
        self.link.setsockopt(zmq.LINGER, 0)
        self.link.setsockopt(zmq.CURVE_SERVER, 1)
        self.link.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.link.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
        self.link.setsockopt(zmq.MAXMSGSIZE, link.MAX_MESSAGE_BYTES)
        self.link.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self.link.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self.endpoints = []
        for endpoint in self.config["listen"]:
            try:
                self.link.bind(endpoint)
            except zmq.ZMQError as exc:
                raise StationError(f"cannot listen on {endpoint}: {exc}", code="config_invalid") from None
            self.endpoints.append(self.link.getsockopt(zmq.LAST_ENDPOINT).decode())
        self.add_reader(self.link, self._on_link)
        self.worker = self.add_worker("storage")
        self.verifier = self.add_worker("verify")  # checks the next records while a batch is stored
        self._queue: list[Op] = []
        self._writing = False
        self.counters = {"records_stored": 0, "records_duplicate": 0, "records_refused": 0, "events_stored": 0,
                         "bytes_received": 0, "malformed": 0, "not_allowed": 0, "spool_full": 0,
                         "spool_swept": 0}
        self.log.info("listening on %s (key %s), %s storage, %d station(s) allowed", ", ".join(self.endpoints),
                      self.public_key.decode(), self.storage.name, len(self.allowlist))

    # -- the link ------------------------------------------------------------------------------
    def _on_link(self) -> None:
        for _ in range(1000):  # bounded, so commands and the watchdog get their turn
            try:
                frames = self.link.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, body = frames[0].bytes, frames[1:]
            station = body[0].get("User-Id") if body else None
            self.counters["bytes_received"] += sum(len(f) for f in body)
            if not station or not self.allowlist.allowed(station):
                self.counters["not_allowed"] += 1
                self._send(identity, link.error("not_allowed", f"station {station} is not allowed at this collector "
                                                "(unknown or revoked)"))
                continue
            try:
                message = link.decode([f.buffer for f in body], link.STATION_OPS)
                self._handle(identity, station, message)
            except BadRequest as exc:
                self.counters["malformed"] += 1
                self._send(identity, link.error("bad_request", exc.message))
            except StationError as exc:
                if isinstance(exc, SpoolFull):
                    self.counters["spool_full"] += 1
                self._send(identity, link.error(exc.code, exc.message, retryable=exc.retryable))
            except OSError as exc:  # the spool's disk: the station sends again later
                self.log.error("spool of %s: %s", station, exc)
                self._send(identity, link.error("storage_unavailable", f"the collector cannot spool: {exc.strerror}",
                                                retryable=True))
            except Exception:  # a bug: answered and logged, never the end of the gateway
                self.log.exception("message from %s failed", station)
                self._send(identity, link.error("internal", "the collector failed on this message; see its log",
                                                retryable=True))

    def _handle(self, identity: bytes, station: str, message: link.LinkMessage) -> None:
        if message.op == "hello" and message["station"] != station:
            raise StationError(f"this connection's key belongs to station {station}, not {message['station']}",
                               code="wrong_station")
        if message.op == "ping":
            self._send(identity, link.encode("pong"))
        elif message.op == "chunk":
            self._on_chunk(identity, station, message)
        else:
            self._enqueue(Op(message.op, identity, station, message))

    def _on_chunk(self, identity: bytes, station: str, message: link.LinkMessage) -> None:
        """Spool a piece (a record in one piece is never spooled), acknowledge its receipt at
        once so the station's byte window moves on, and queue a complete record for the
        worker, which checks it and stores it; ``stored`` follows from there."""
        record, sha256, offset, payload = message["record"], message["sha256"], message["offset"], message.payload
        whole = offset == 0 and message["final"]
        if not whole:
            held = self.spool.append(station, record, sha256, offset, payload)
            if held != offset + len(payload):  # not where the station thinks: tell it where to go on
                self._send(identity, link.encode("want", record=record, offset=held))
                return
        self._send(identity, link.encode("chunk.ack", record=record, offset=offset + len(payload)))
        if message["final"]:  # a record in one piece is checked and stored from its frame, not copied
            blob = payload if whole else self.spool.read(station, record, sha256)
            op = Op("record", identity, station, message, blob=blob)
            self.verifier.submit(lambda: self._verify(op), lambda record, error: self._verified(op, record, error))

    def _verified(self, op: Op, record: NewRecord | None, error: BaseException | None) -> None:
        if error is not None:
            self.log.error("verifying record %s of %s failed: %r", op.message["record"], op.station, error)
            op.replies.append(link.error("internal", "the collector failed to check this record; see its log",
                                         retryable=True, record=op.message["record"]))
        if record is None:
            for frames in op.replies:
                self._send(op.identity, frames)
            return
        op.record, op.blob = record, b""
        self._enqueue(op)

    def _send(self, identity: bytes, frames: list) -> None:
        try:
            self.link.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:  # the station is gone or slow; it asks again after reconnecting
            pass

    # -- storage, in batches -------------------------------------------------------------------
    def _enqueue(self, op: Op) -> None:
        self._queue.append(op)
        self._write_next()

    def _write_next(self) -> None:
        if self._writing or not self._queue:
            return
        batch, self._queue = self._queue[:self.config["batch_max"]], self._queue[self.config["batch_max"]:]
        self._writing = True
        self.worker.submit(lambda: self._run_batch(batch), lambda _result, error: self._batch_done(batch, error))

    def _batch_done(self, batch: list[Op], error: BaseException | None) -> None:
        self._writing = False
        if error is not None:  # the whole batch failed (storage down): every sender is told to retry
            self.log.warning("storage batch of %d failed: %s", len(batch), error)
            message = getattr(error, "message", str(error))
            for op in batch:
                self._send(op.identity, link.error("storage_unavailable", message, retryable=True,
                                                   **({"record": op.message["record"]} if "record" in op.message.header
                                                      else {})))
        else:
            for op in batch:
                for frames in op.replies:
                    self._send(op.identity, frames)
        self._write_next()

    def _run_batch(self, batch: list[Op]) -> None:
        """In the worker: every op of the batch in order, the records stored together."""
        handlers: dict[str, Callable[[Op], None]] = {
            "hello": self._op_hello, "status": self._op_status, "events": self._op_events,
            "offer": self._op_offer, "confirm": self._op_confirm}
        records: list[tuple[Op, NewRecord]] = []
        for op in batch:
            if op.kind == "record":
                records.append((op, op.record))
            else:
                handlers[op.kind](op)
        if records:
            outcomes = self.storage.put_records([r for _, r in records])
            for (op, record), outcome in zip(records, outcomes):
                self._record_outcome(op, record, outcome)

    def _verify(self, op: Op) -> NewRecord | None:
        """In the verifier thread: the bytes are what was offered, sealed by the connection's
        station. None (with the refusal in ``op.replies``) when not."""
        record_id = op.message["record"]
        keys = self.allowlist.keys(op.station)
        try:
            if len(op.blob) != op.message["size"] or hashlib.sha256(op.blob).hexdigest() != op.message["sha256"]:
                raise StationError(f"record {record_id}: the bytes received do not match the offered size and "
                                   "sha256; send it again", code="hash_mismatch", retryable=True)
            header = sealing.verify(op.blob, keys)
            if header.record_id != record_id:
                raise StationError(f"the sealed record names itself {header.record_id}, offered as {record_id}",
                                   code="bad_seal")
        except StationError as exc:
            self.counters["records_refused"] += 1
            self.log.warning("refused record %s from %s: %s", record_id, op.station, exc.message)
            op.replies.append(link.error(exc.code, exc.message, retryable=exc.retryable, record=record_id))
            self.spool.discard(op.station, record_id, op.message["sha256"])
            return None
        return NewRecord(op.station, record_id, op.message["sha256"], op.blob)

    def _record_outcome(self, op: Op, record: NewRecord, outcome: StoredRecord | StationError) -> None:
        self.spool.discard(op.station, record.record_id, record.sha256)
        if isinstance(outcome, StationError):
            self.counters["records_refused"] += 1
            op.replies.append(link.error(outcome.code, outcome.message, retryable=outcome.retryable,
                                         record=record.record_id))
            return
        self.counters["records_duplicate" if outcome.duplicate else "records_stored"] += 1
        op.replies.append(link.encode("stored", record=record.record_id, sha256=record.sha256,
                                      receipt=outcome.receipt(self.name), duplicate=outcome.duplicate))

    def _op_hello(self, op: Op) -> None:
        self.storage.note_station(op.station, time.time_ns(), op.message.header.get("status", {}))
        op.replies.append(link.encode("welcome", last_seq=self.storage.last_event_seq(op.station),
                                      collector=self.name))

    def _op_status(self, op: Op) -> None:
        self.storage.note_station(op.station, time.time_ns(), op.message["status"])

    def _op_events(self, op: Op) -> None:
        events = [StationEvent(op.station, e["seq"], e["t_ns"], e["topic"], e["body"]) for e in op.message["entries"]]
        try:
            before = self.storage.last_event_seq(op.station)
            last = self.storage.put_events(op.station, events)
        except EventGap as exc:
            op.replies.append(link.error(exc.code, exc.message, retryable=True, expected=exc.expected))
            return
        self.counters["events_stored"] += max(0, last - before)
        op.replies.append(link.encode("events.ack", last_seq=last))

    def _op_offer(self, op: Op) -> None:
        record, sha256 = op.message["record"], op.message["sha256"]
        found = self.storage.find_record(record)
        if found is None:
            op.replies.append(link.encode("want", record=record,
                                          offset=self.spool.held(op.station, record, sha256)))
        elif found.sha256 == sha256 and found.station_id == op.station:
            self.counters["records_duplicate"] += 1
            op.replies.append(link.encode("stored", record=record, sha256=sha256, receipt=found.receipt(self.name),
                                          duplicate=True))
        else:
            op.replies.append(link.error("record_conflict", f"record {record} is stored already with other "
                                         "content or from another station", record=record))

    def _op_confirm(self, op: Op) -> None:
        present, missing = [], []
        for item in op.message["records"]:
            found = self.storage.find_record(item["record"])
            ok = found is not None and found.sha256 == item["sha256"] and found.station_id == op.station
            (present if ok else missing).append(item["record"])
        op.replies.append(link.encode("confirmed", present=present, missing=missing))

    # -- daemon hooks --------------------------------------------------------------------------
    def reload(self) -> list[str]:
        problems = super().reload()
        try:
            self.allowlist.reload(self.data_dir / self.config["stations_dir"], self.config["revoked"])
        except StationError as exc:
            self.log.error("allowlist not reloaded, keeping the previous one: %s", exc.message)
            return [*problems, f"allowlist not reloaded: {exc.message}"]
        self.log.info("allowlist: %d station(s) allowed, %d revoked", len(self.allowlist),
                      len(self.config["revoked"]))
        return problems

    def apply_config(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        fixed = [key for key in ("listen", "data_dir", "storage") if new[key] != old[key]]
        if fixed:
            raise StationError(f"{', '.join(fixed)} cannot change while running; restart the collector")
        self.config = new
        self.spool.max_station_bytes = self._spool_cap(new)
        self._next_sweep = 0.0

    @staticmethod
    def _spool_cap(config: dict[str, Any]) -> int:
        return int(config["spool"]["max_mib_per_station"]) << 20

    def tick(self, now: float) -> None:
        if now >= self._next_sweep:
            self._next_sweep = now + SPOOL_SWEEP_EVERY_S
            self._sweep_spool()

    def _sweep_spool(self) -> None:
        """Pieces of records no station has added to for ``spool.abandon_after_h`` go."""
        hours = float(self.config["spool"]["abandon_after_h"])
        try:
            files, size = self.spool.sweep(hours * 3600)
        except OSError as exc:
            self.log.error("sweeping the spool failed: %s", exc)
            return
        if files:
            self.counters["spool_swept"] += files
            self.log.info("removed %d abandoned record piece(s) from the spool (%d bytes, untouched for %g h)",
                          files, size, hours)

    def status_fields(self) -> dict[str, Any]:
        return {"endpoints": self.endpoints, "public_key": self.public_key.decode(), "storage": self.storage.name,
                "stations_allowed": len(self.allowlist), "queued": len(self._queue), **self.counters}

    def shutdown(self) -> None:
        self.verifier.stop(timeout_s=5.0)
        self.worker.stop(timeout_s=5.0)
        self.link.close(linger=0)
        self.storage.close()


def serve(argv: list[str] | None = None) -> int:
    return main_for(Collector, "station-collector serve", "Central's collector gateway.", argv,
                    instance=False, default_name="collector")
