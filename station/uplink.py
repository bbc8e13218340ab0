"""station-uplink: delivers the store's sealed records and journaled events to central.

The only station process with network access. It connects out (carrier NAT lets nothing
in) over TCP with CURVE to a collector whose public key is pinned in config, trying the
configured endpoints in turn, and speaks ``station.link``:

- events go in journal order, one batch in flight, outside the record window, so they are
  never stuck behind a record backlog;
- records go oldest first, offered then sent in pieces under the window of
  ``station.delivery``; a record is marked delivered only on the collector's ``stored``,
  by a marker thread with its own connection to the store, so the loop goes on sending
  while a mark's fsync is under way;
- a failed connection is retried with capped, jittered exponential backoff; a path that
  goes silent (no answer to pings for ``stall_s``) is abandoned for the next endpoint;
- later, delivered records are confirmed by id and hash; one central does not have is sent
  again; a confirmed one is purged after the store's retention period.

Everything it knows is in the store (``station.outbox``), so a restart (or a SIGKILL) at any
point resumes: a record delivered but not yet marked is offered again and answered
``stored`` as a duplicate; a record half sent continues where the collector's spool ends.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

import zmq
import zmq.utils.monitor

from station import config, keyring, link
from station.daemon import Daemon, main_for
from station.delivery import Window
from station.errors import BadRequest, StationError
from station.outbox import Backlog, Outbox
from station.store import StoreError
from station.paths import Paths
from station.sealing import StationPublicKeys

CONNECT_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | \
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
OUTBOX_POLL_S = 0.5     # the store is read again this often for records and events, when it had none
STATUS_EVERY_S = 30.0
FIGURES_EVERY_S = 1.0


class Uplink(Daemon):
    kind = "uplink"
    section = "uplink"

    def __init__(self, name: str, paths: Paths, overrides=()):
        super().__init__(name, paths, overrides)
        self.store_config = config.load("controller", None, paths.etc)["store"]
        self.public_key, self._secret_key = keyring.load_transport(paths.keys)
        self.station_id = StationPublicKeys.from_pem((paths.keys / keyring.STATION_PUB).read_bytes()).station_id
        self.outbox: Outbox | None = None
        self.marks: Outbox | None = None  # the marker thread's own connection to the store
        self.marker = self.add_worker("marker")  # writes delivered marks: the loop never waits on their fsync
        self.socket: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.backoff = link.Backoff(self.config["backoff"]["initial_s"], self.config["backoff"]["max_s"])
        self.window = self._new_window()
        self.link_state = "idle"
        self.endpoint_index = 0
        self.endpoint = ""
        self.last_error = ""
        self.refused: dict[str, dict[str, Any]] = {}  # records central refused, for a person to see
        self._retry_at = 0.0
        self._connected_at = 0.0
        self._last_heard = self._last_sent = 0.0
        self._events_sent = 0         # highest journal seq sent on this connection
        self._events_inflight = False
        self._confirm_inflight = False
        self._next_confirm = self._next_outbox = self._next_journal = self._next_status = self._next_figures = 0.0
        self._queued: deque = deque()  # undelivered records not yet in the window
        self._stored: list[tuple[str, dict]] = []  # acknowledged, to mark delivered in one go
        self._marking: set[str] = set()  # record ids whose delivered mark the marker is writing
        self._after: tuple[int, str] | None = None
        self.backlog: Backlog | None = None
        self._sent_log: deque = deque()  # (time, bytes) for throughput
        self.store_errors = 0
        self.counters = {"records_delivered": 0, "records_duplicate": 0, "events_delivered": 0, "bytes_sent": 0,
                         "connects": 0, "stalls": 0, "records_missing": 0, "records_purged": 0}

    def _new_window(self) -> Window:
        return Window(self.config["window"]["bytes"], self.config["window"]["records"], self.config["chunk_bytes"])

    # -- connection ----------------------------------------------------------------------------
    def _connect(self, now: float) -> None:
        endpoints = self.config["collector"]["endpoints"]
        if not endpoints or not self.config["collector"]["server_key"]:
            self._set_link("idle", "no collector configured (collector.endpoints, collector.server_key)")
            return
        self.endpoint = endpoints[self.endpoint_index % len(endpoints)]
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.config["collector"]["server_key"].encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret_key)
        sock.setsockopt(zmq.MAXMSGSIZE, link.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 0)  # the window bounds what is queued, not the HWM
        sock.setsockopt(zmq.RECONNECT_IVL, 1000)
        self.monitor = sock.get_monitor_socket(CONNECT_EVENTS)
        sock.connect(self.endpoint)
        self.socket = sock
        self.add_reader(sock, self._on_link)
        self.add_reader(self.monitor, self._on_monitor)
        self.counters["connects"] += 1
        self._connected_at = self._last_heard = now
        self._set_link("connecting", self.endpoint)
        self._hello(now)

    def _hello(self, now: float) -> None:
        self._send(link.encode("hello", station=self.station_id, boot=self.boot, v=link.PROTOCOL,
                               status=self._status_report()), now)

    def _disconnect(self, reason: str, now: float, *, next_endpoint: bool = True) -> None:
        """Drop the connection; retry after a backoff delay (on the next endpoint)."""
        if self.socket is not None:
            self.remove_reader(self.socket)
            self.remove_reader(self.monitor)
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.socket.close(linger=0)
            self.socket = self.monitor = None
        self.window.clear()
        self._queued.clear()
        self._after = None
        self._events_inflight = self._confirm_inflight = False
        if next_endpoint:
            self.endpoint_index += 1
        delay = self.backoff.next_delay()
        self._retry_at = now + delay
        self.last_error = reason
        self._set_link("backoff", f"{reason}; retrying in {delay:.1f} s")
        self.log.warning("link to %s: %s; retrying in %.1f s", self.endpoint, reason, delay)

    def _set_link(self, state: str, detail: str) -> None:
        """The link's state is the daemon's status detail (the daemon itself stays ready)."""
        self.link_state = state
        self.set_state("ready", f"{state}: {detail}" if detail else state)

    def _on_monitor(self) -> None:
        while self.monitor is not None and self.monitor.poll(0):
            event = zmq.utils.monitor.recv_monitor_message(self.monitor)
            kind = event["event"]
            now = time.monotonic()
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.link_state == "connecting":
                self._hello(now)  # at once, not at the next heartbeat
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._disconnect("the collector refused this station's key (not on its allowlist, or revoked)",
                                 now)
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self._disconnect("CURVE handshake failed (is collector.server_key the collector's key?)", now)
            elif kind == zmq.EVENT_DISCONNECTED and self.link_state == "connected":
                self._disconnect("connection closed by the collector or the network", now)

    def _send(self, frames: list, now: float) -> bool:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:  # no connection yet (IMMEDIATE): the hello waits for the stall timer
            return False
        self._last_sent = now
        size = sum(len(f) for f in frames)
        self.counters["bytes_sent"] += size
        self._sent_log.append((now, size))
        return True

    # -- receiving -----------------------------------------------------------------------------
    def _on_link(self) -> None:
        now = time.monotonic()
        while self.socket is not None:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._last_heard = now
            try:
                message = link.decode(frames, link.COLLECTOR_OPS)
            except BadRequest as exc:
                self.log.warning("malformed message from the collector: %s", exc.message)
                continue
            try:
                getattr(self, f"_on_{message.op.replace('.', '_')}")(message, now)
            except StoreError as exc:
                self._store_failed(exc)  # what it would have marked is asked or sent again later
        try:
            self._mark_delivered()
            self._pump(now)
        except StoreError as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: StoreError) -> None:
        """The store cannot be written (a full disk): log it once a while, never a traceback;
        records not marked delivered are offered again and answered as duplicates."""
        self.store_errors += 1
        if self.store_errors == 1 or self.store_errors % 100 == 0:
            self.log.error("cannot update delivery state (%d times so far): %s", self.store_errors, exc.message)

    def _on_welcome(self, message: link.LinkMessage, now: float) -> None:
        self.backoff.reset()
        self._set_link("connected", f"{self.endpoint} ({message.header.get('collector', 'collector')})")
        self.log.info("connected to %s; central holds events up to %d", self.endpoint, message["last_seq"])
        journal_end = self.outbox.backlog().last_seq
        if message["last_seq"] > journal_end:
            self.log.error("central holds events of %s up to %d but this station's journal ends at %d: was the "
                           "store replaced? Events %d..%d of this store will not be accepted as new", self.station_id,
                           message["last_seq"], journal_end, journal_end + 1, message["last_seq"])
        if message["last_seq"] > self.outbox.events_acked():
            self.outbox.set_events_acked(min(message["last_seq"], journal_end))
        self._events_sent = message["last_seq"]
        self._next_journal = now
        self._next_confirm = now  # a reconnect is a good moment to confirm what was delivered

    def _on_events_ack(self, message: link.LinkMessage, now: float) -> None:
        self._events_inflight = False
        self.outbox.set_events_acked(message["last_seq"])
        self.counters["events_delivered"] = max(self.counters["events_delivered"], message["last_seq"])
        self._events_sent = max(self._events_sent, message["last_seq"])

    def _on_want(self, message: link.LinkMessage, now: float) -> None:
        self.window.want(message["record"], message["offset"])

    def _on_chunk_ack(self, message: link.LinkMessage, now: float) -> None:
        self.window.acked(message["record"], message["offset"])

    def _on_stored(self, message: link.LinkMessage, now: float) -> None:
        transfer = self.window.finish(message["record"])
        if transfer is None or transfer.sha256 != message["sha256"]:
            return
        self._stored.append((transfer.record_id, message["receipt"]))
        self.refused.pop(transfer.record_id, None)
        self.counters["records_duplicate" if message.header.get("duplicate") else "records_delivered"] += 1

    def _mark_delivered(self) -> None:
        """Every ``stored`` that arrived while the last marks were written, in one transaction
        (one fsync, not one each), written by the marker thread while the loop sends on."""
        if self._stored and not self._marking:
            stored, self._stored = self._stored, []
            self._marking = {record_id for record_id, _ in stored}
            self.marker.submit(lambda: self.marks.mark_delivered(stored), self._marked)

    def _marked(self, _result: None, error: BaseException | None) -> None:
        self._marking = set()
        if isinstance(error, StoreError):
            self._store_failed(error)  # not marked: offered again later, answered as duplicates
        elif error is not None:
            self.log.error("writing delivered marks failed: %r", error)
        self._mark_delivered()

    def _on_confirmed(self, message: link.LinkMessage, now: float) -> None:
        self._confirm_inflight = False
        if message["present"]:
            self.outbox.mark_confirmed(message["present"])
        for record_id in message["missing"]:
            self.log.warning("central does not hold delivered record %s; sending it again", record_id)
            self.outbox.mark_missing(record_id)
            self.counters["records_missing"] += 1
        self._purge()

    def _on_pong(self, message: link.LinkMessage, now: float) -> None:
        pass

    def _on_error(self, message: link.LinkMessage, now: float) -> None:
        code, text = message["code"], message["message"]
        record = message.header.get("record")
        if code == "not_allowed":
            self._disconnect(f"refused by the collector: {text}", now, next_endpoint=False)
        elif code == "event_gap":
            self._events_inflight = False
            self._events_sent = message.header.get("expected", 1) - 1
            self._next_journal = now
        elif record:
            self.window.finish(record)
            if message.header.get("retryable"):
                self.log.warning("record %s: %s (%s); offering it again", record, text, code)
            else:  # it will not be accepted as it is: a person must look (kept, retried slowly)
                self.refused[record] = {"code": code, "message": text, "at_ns": time.time_ns()}
                self.log.error("record %s refused by central: %s (%s); kept, retried after the backoff cap",
                               record, text, code)
        else:
            self.log.warning("collector error %s: %s", code, text)
            if message.header.get("retryable"):
                self._disconnect(f"collector: {text}", now, next_endpoint=False)

    # -- sending -------------------------------------------------------------------------------
    def _pump(self, now: float) -> None:
        if self.socket is None or self.link_state != "connected" or self.outbox is None:
            return
        self._send_events(now)
        self._send_records(now)
        self._send_confirm(now)

    def _send_events(self, now: float) -> None:
        if self._events_inflight or now < self._next_journal:
            return
        entries = self.outbox.journal_since(self._events_sent, self.config["event_batch"])
        if not entries:  # read the journal again in a while, not after every message received
            self._next_journal = now + OUTBOX_POLL_S
        elif self._send(link.encode("events", entries=[e.to_dict() for e in entries]), now):
            self._events_inflight = True

    def _refill(self, now: float) -> None:
        if len(self._queued) >= self.window.max_records or (not self._queued and now < self._next_outbox):
            return
        self._next_outbox = now + OUTBOX_POLL_S
        skip = {r for r, info in self.refused.items()
                if time.time_ns() - info["at_ns"] < self.config["backoff"]["max_s"] * 1e9}
        skip.update(record_id for record_id, _ in self._stored)  # stored, the mark not yet written
        skip.update(self._marking)
        for row in self.outbox.undelivered(limit=self.window.max_records * 2, after=self._after):
            self._after = (row.created_ns, row.record_id)
            if row.record_id not in self.window and row.record_id not in skip:
                self._queued.append(row)
        if not self._queued:
            self._after = None  # next time from the start: records given back by confirmation

    def _send_records(self, now: float) -> None:
        """Pieces of records in the window first, then new records while it has room."""
        self._send_pieces(now)
        self._refill(now)
        while self._queued and self.window.can_start():
            row = self._queued.popleft()
            if row.sealed_bytes <= self.window.chunk_bytes:  # one piece: no resumption to ask about
                self.window.start(row.record_id, row.sealed_sha256, row.sealed_bytes, offset=0)
                continue
            self.window.start(row.record_id, row.sealed_sha256, row.sealed_bytes)
            self._send(link.encode("offer", record=row.record_id, sha256=row.sealed_sha256, size=row.sealed_bytes),
                       now)
        self._send_pieces(now)

    def _send_pieces(self, now: float) -> None:
        for transfer, offset, length in self.window.next_pieces():
            try:
                data = self._read_piece(transfer.record_id, offset, length)
            except OSError as exc:
                self.log.error("record %s cannot be read from the store: %s", transfer.record_id, exc)
                self.window.finish(transfer.record_id)
                continue
            self._send(link.encode("chunk", data, record=transfer.record_id, sha256=transfer.sha256,
                                   size=transfer.size, offset=offset, final=offset + length >= transfer.size), now)

    def _read_piece(self, record_id: str, offset: int, length: int) -> bytes:
        with open(self.outbox.records_dir / f"{record_id}.sealed", "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise OSError(f"short read at {offset} ({len(data)} of {length} bytes)")
        return data

    def _send_confirm(self, now: float) -> None:
        if self._confirm_inflight or now < self._next_confirm:
            return
        self._next_confirm = now + self.config["confirm"]["every_s"]
        before = time.time_ns() - int(self.config["confirm"]["after_s"] * 1e9)
        rows = self.outbox.unconfirmed(before, limit=link.MAX_CONFIRM_PER_BATCH)
        if rows:
            if self._send(link.encode("confirm", records=[{"record": r.record_id, "sha256": r.sealed_sha256}
                                                          for r in rows]), now):
                self._confirm_inflight = True
        else:
            self._purge()

    def _purge(self) -> None:
        before = time.time_ns() - int(self.store_config["retention_days"] * 86400e9)
        for row in self.outbox.purgeable(before):
            self.outbox.purge(row.record_id)
            self.counters["records_purged"] += 1
            self.log.info("record %s confirmed by central; sealed payload purged after retention", row.record_id)

    # -- daemon hooks --------------------------------------------------------------------------
    def setup(self) -> None:
        self._set_link("idle", "starting")

    def tick(self, now: float) -> None:
        if self.outbox is None and not self._open_outbox():
            return
        if self.socket is None:
            if now >= self._retry_at:
                self._connect(now)
            return
        if now - self._last_heard > self.config["stall_s"]:
            self.counters["stalls"] += 1
            self._disconnect(f"no answer for {self.config['stall_s']:g} s (path black-holed or collector down)",
                             now)
            return
        if now - self._last_sent >= self.config["heartbeat_s"]:
            if self.link_state == "connecting":
                self._hello(now)
            else:
                self._send(link.encode("ping"), now)
        if now >= self._next_status and self.link_state == "connected":
            self._next_status = now + STATUS_EVERY_S
            self._send(link.encode("status", status=self._status_report()), now)
        try:
            self._pump(now)
        except StoreError as exc:
            self._store_failed(exc)

    def _open_outbox(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        try:
            outbox = Outbox(self.paths.store, fsync=self.store_config["fsync"])
            try:
                self.marks = Outbox(self.paths.store, fsync=self.store_config["fsync"])
            except StationError:
                outbox.close()
                raise
            self.outbox = outbox
            return True
        except StationError as exc:
            self._retry_at = time.monotonic() + 2.0
            self._set_link("waiting", exc.message)
            return False

    def _status_report(self) -> dict[str, Any]:
        backlog = self._backlog()
        return backlog.to_dict() if backlog else {}

    def _backlog(self) -> Backlog | None:
        now = time.monotonic()
        if self.outbox is not None and now >= self._next_figures:
            self._next_figures = now + FIGURES_EVERY_S
            self.backlog = self.outbox.backlog()
        return self.backlog

    def throughput_bps(self, now: float | None = None) -> float:
        """Bytes per second sent over the last 10 s."""
        now = time.monotonic() if now is None else now
        while self._sent_log and self._sent_log[0][0] < now - 10:
            self._sent_log.popleft()
        span = min(10.0, max(now - self._connected_at, 1.0))
        return sum(size for _, size in self._sent_log) / span

    def status_fields(self) -> dict[str, Any]:
        backlog = self._backlog()
        figures = backlog.to_dict() if backlog else {}
        oldest = figures.get("oldest_ns")
        return {
            "station": self.station_id, "link": self.link_state, "endpoint": self.endpoint,
            "last_error": self.last_error, "backlog": figures,
            "oldest_age_s": round((time.time_ns() - oldest) / 1e9, 1) if oldest else None,
            "inflight": {"records": self.window.records_inflight, "bytes": self.window.bytes_inflight},
            "throughput_bps": round(self.throughput_bps()), "refused": self.refused, **self.counters,
        }

    def apply_config(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        self.config = new
        self.backoff = link.Backoff(new["backoff"]["initial_s"], new["backoff"]["max_s"])
        if new["collector"] != old["collector"] or new["window"] != old["window"] or \
                new["chunk_bytes"] != old["chunk_bytes"]:
            self.window = self._new_window()
            if self.socket is not None:
                self._disconnect("configuration changed", time.monotonic(), next_endpoint=False)
            self.endpoint_index = 0
            self._retry_at = 0.0

    def poll_timeout_ms(self) -> int:
        collector = self.config["collector"]
        if self.socket is None and collector["endpoints"] and collector["server_key"] \
                and time.monotonic() >= self._retry_at:
            return 0  # a connection attempt is due (a new endpoint, the backoff over): no sleep first
        return 20 if self.link_state == "connected" else 50

    def shutdown(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.monitor.close(linger=0)
        self.marker.stop(timeout_s=5.0)
        if self.outbox is not None:
            if self._stored:  # acknowledged since the marker's last write
                try:
                    self.marks.mark_delivered(self._stored)
                except StoreError as exc:
                    self._store_failed(exc)
            self.marks.close()
            self.outbox.close()


def main(argv: list[str] | None = None) -> int:
    return main_for(Uplink, "station-uplink", "Delivers sealed records and journaled events to central.", argv,
                    instance=False, default_name="uplink")


if __name__ == "__main__":
    raise SystemExit(main())

