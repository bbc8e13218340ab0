"""The scale-out collector backend: all state in a NATS JetStream cluster, gateways stateless.

Public contract for central subscribers (other services read these subjects directly):

- ``stations.<station>.events``: one message per journaled event, headers
  ``Station-Seq: <seq>`` and ``Nats-Msg-Id: <station>:<seq>``, body the compact UTF-8 JSON
  ``{"seq","t_ns","topic","body"}`` (stream ``STATION_EVENTS``).
- ``stations.<station>.records``: one message per sealed record, headers
  ``Nats-Msg-Id: <record_id>``, ``Record-Sha256``, ``Station-Id``, body the sealed bytes
  (stream ``STATION_RECORDS``).

Private to the backend: ``index.records.<record_id>`` (stream ``STATION_RECORD_INDEX``, one
create-only message per record: ``{station, sha256, size, stored_ns, stream_seq}``) and
``stations.<station>.status`` (stream ``STATION_STATUS``, the last ``note_station``).

Limits of the engine as packaged in Debian 12 (nats-server 2.9.10), and why none of them
loses or duplicates a record:

- Deduplication by ``Nats-Msg-Id`` holds only within ``duplicate_window``
  (``duplicate_window_s``, 24 h by default; the ids are kept in memory). The index is
  what makes a record stored once for ever: a delivery first looks the record id up in
  the index and stores nothing if it is there. The window covers the one gap the index
  leaves, a gateway dying between the record's PubAck and its index entry: the station
  retries (it never got a receipt), the record publish is answered ``duplicate`` with the
  original sequence, and the index entry is written then. So a station must retry an
  unconfirmed record within the window.
- ``max_payload`` (1 MB by default, raise it to at most 8MB in the server config) caps a
  record message; a larger record is refused before it is sent with
  ``record_too_large`` (not retryable) naming both sizes, because a message over the limit
  makes the server drop the whole connection.
- An R3 PubAck comes after a quorum of servers has the message, but 2.9.10 fsyncs only
  every 2 minutes: a power loss of the whole cluster at once can lose acknowledged
  messages. So the station keeps a record until a later confirmation (a receipt checked
  again after that time), not just until the first PubAck.
- Each distinct subject costs memory on every replica. Records therefore use one subject
  per station, not per record; only the index has a subject per record (its memory grows
  with the record count on every server: size them for it).
- Expected-last-sequence checks race on clustered streams before 2.9.21, so event order is
  kept by the gateway (each event published once, in order, on one connection) and made
  idempotent by ``Nats-Msg-Id``: each event is published after the previous one's PubAck
  and a failure stops the batch, so the stream holds a station's events in order. The
  per-station event count is still checked against the last sequence whenever a station
  resends, to refill an event lost with unsynced data (then it follows its successors:
  readers go by ``Station-Seq``).

Timeouts, all here: ``connect_timeout_s`` to reach a first server (then it reconnects for
ever); ``request_timeout_s`` for each JetStream request and for a batch's PubAcks;
``STREAM_SETUP_TIMEOUT_S`` per stream create or update (asked again after a timeout, up to
``STREAM_SETUP_DEADLINE_S`` for all streams); ten request timeouts as the
backstop of one blocking call; a follower of ``events`` wakes each second to see ``close``.

The ``Storage`` interface is blocking; the nats-py asyncio client runs on a private
event-loop thread and each call waits for its coroutine there. Every request has its own
timeout (``request_timeout_s``); any connection problem or timeout is a ``StorageError``
the station retries.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from station.collector.storage import EventGap, NewRecord, StationEvent, StationInfo, StorageError, StoredRecord
from station.errors import ConfigError, StationError
from station.sealing import RECORD_ID_RE, STATION_ID_RE

log = logging.getLogger(__name__)

EVENTS_STREAM = "STATION_EVENTS"
RECORDS_STREAM = "STATION_RECORDS"
INDEX_STREAM = "STATION_RECORD_INDEX"
STATUS_STREAM = "STATION_STATUS"
MAX_RECORD_MESSAGE = 8 * 1024 * 1024  # the records stream's max_msg_size; the server warns above 8MB
# Creating or updating a replicated stream goes through the meta leader and elects the
# stream's own raft group: seconds on a busy 2.9.10 cluster, longer than any data request.
STREAM_SETUP_TIMEOUT_S = 15
STREAM_SETUP_DEADLINE_S = 3.5 * STREAM_SETUP_TIMEOUT_S  # inside the 4 timeouts the set-up call may take

# JetStream API error codes this backend acts on (nats-server errors.json).
ERR_INSUFFICIENT_RESOURCES = 10023  # create: fewer servers than replicas
ERR_NO_MESSAGE = 10037            # get last/by sequence: nothing there
ERR_MESSAGE_TOO_BIG = 10054        # publish: over the stream's max_msg_size
ERR_STREAM_CONFIG_DIFFERS = 10058  # create: the stream exists with another configuration
ERR_REPLICAS_NOT_CLUSTERED = 10074  # create: replicas > 1 on a server without a cluster
ERR_SUBJECT_FULL = 10077           # discard-new-per-subject: the index entry already exists

_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
_T = TypeVar("_T")


def _events_subject(station_id: str) -> str:
    return f"stations.{station_id}.events"


def _records_subject(station_id: str) -> str:
    return f"stations.{station_id}.records"


def _status_subject(station_id: str) -> str:
    return f"stations.{station_id}.status"


def _index_subject(record_id: str) -> str:
    return f"index.records.{record_id}"


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _header_bytes(headers: dict[str, str]) -> int:
    """What the headers add to a message, as the server counts it against max_payload."""
    return len(b"NATS/1.0\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2


def _check_station_id(station_id: str) -> None:
    """Ids become subject tokens: a dot or a wildcard would address other subjects."""
    if not isinstance(station_id, str) or not STATION_ID_RE.fullmatch(station_id):
        raise StationError(f"invalid station id {station_id!r}: use 1-32 letters, digits or '-'",
                           code="bad_station_id")


def _check_record_id(record_id: str) -> None:
    if not isinstance(record_id, str) or not RECORD_ID_RE.fullmatch(record_id):
        raise StationError(f"invalid record id {record_id!r}: use 1-64 letters, digits, '-' or '_'",
                           code="bad_record")


def _describe(error: BaseException) -> str:
    if isinstance(error, nats.js.errors.APIError):
        return f"{error.description or type(error).__name__} (JetStream error {error.err_code})"
    return str(error) or type(error).__name__


def _stream_configs(replicas: int, duplicate_window_s: float) -> list[api.StreamConfig]:
    common = {"storage": api.StorageType.FILE, "num_replicas": replicas}
    return [
        api.StreamConfig(name=EVENTS_STREAM, subjects=[_events_subject("*")], duplicate_window=duplicate_window_s,
                         **common),
        api.StreamConfig(name=RECORDS_STREAM, subjects=[_records_subject("*")], duplicate_window=duplicate_window_s,
                         max_msg_size=MAX_RECORD_MESSAGE, allow_direct=True, **common),
        # Create-only entries: the first index message for a record wins, any later one is refused.
        api.StreamConfig(name=INDEX_STREAM, subjects=[_index_subject("*")], duplicate_window=duplicate_window_s,
                         max_msgs_per_subject=1, discard=api.DiscardPolicy.NEW, discard_new_per_subject=True,
                         **common),
        api.StreamConfig(name=STATUS_STREAM, subjects=[_status_subject("*")], max_msgs_per_subject=1,
                         discard=api.DiscardPolicy.OLD, **common),
    ]


class JetStreamStorage:
    """A ``Storage`` on a JetStream cluster; any number of gateways may share one."""

    name = "jetstream"

    def __init__(self, servers: list[str], *, replicas: int = 3, duplicate_window_s: float = 86400,
                 connect_timeout_s: float = 5, request_timeout_s: float = 5, collector: str = "collector"):
        self.servers = list(servers)
        self.collector = collector
        self.replicas = replicas
        self.request_timeout_s = request_timeout_s
        # A cached last event sequence is trusted for half the dedup window: a resend of
        # events another gateway stored meanwhile is then still dropped by Nats-Msg-Id.
        self._cache_ttl_s = duplicate_window_s / 2
        self._last_events: dict[str, tuple[int, float]] = {}  # touched on the loop thread only
        self._closed = False
        self.malformed_events = 0  # event messages not in the documented shape, skipped by events()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"jetstream-{collector}", daemon=True)
        self._thread.start()
        try:
            self._nc = self._call(self._connect(connect_timeout_s), "connect", connect_timeout_s + 1)
            self._js = self._nc.jetstream(timeout=request_timeout_s)
            self._call(self._ensure_streams(_stream_configs(replicas, duplicate_window_s)), "create streams",
                       4 * STREAM_SETUP_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "JetStreamStorage":
        """``nats://host:port[,nats://host:port...]`` (``tls://`` too), the form a config holds."""
        servers = [part.strip() for part in url.split(",") if part.strip()]
        problems = []
        for server in servers:
            try:
                parts = urlsplit(server)
                valid = parts.scheme in ("nats", "tls") and bool(parts.hostname) and parts.port is not None
            except ValueError:
                valid = False
            if not valid:
                problems.append(f"storage url {url!r}: {server!r} is not nats://host:port")
        if not servers:
            problems.append(f"storage url {url!r}: name at least one nats://host:port")
        if problems:
            raise ConfigError(problems)
        return cls(servers, **options)

    # -- the Storage interface ---------------------------------------------------------

    def last_event_seq(self, station_id: str) -> int:
        _check_station_id(station_id)
        return self._call(self._read_last_event(station_id), f"read last event of {station_id}")

    def put_events(self, station_id: str, events: list[StationEvent]) -> int:
        _check_station_id(station_id)
        return self._call(self._put_events(station_id, events), f"store events of {station_id}")

    def put_records(self, records: list[NewRecord]) -> list[StoredRecord | StationError]:
        return self._call(self._put_records(records), "store records")

    def find_record(self, record_id: str) -> StoredRecord | None:
        _check_record_id(record_id)
        return self._call(self._find_record(record_id), f"look up record {record_id}")

    def get_record(self, record_id: str) -> bytes:
        _check_record_id(record_id)
        return self._call(self._get_record(record_id), f"read record {record_id}")

    def note_station(self, station_id: str, seen_ns: int, status: dict[str, Any]) -> None:
        _check_station_id(station_id)
        body = _compact({"seen_ns": seen_ns, "status": status})
        self._call(self._js.publish(_status_subject(station_id), body), f"note station {station_id}")

    def stations(self) -> list[StationInfo]:
        return self._call(self._stations(), "list stations")

    def events(self, station_id: str | None, since: int, *, follow: bool = False,
               timeout_s: float | None = None) -> Iterator[StationEvent]:
        """An ordered consumer (in memory, gone with the subscription) over the events stream:
        nothing is left on the servers when the reader stops."""
        if station_id is not None:
            _check_station_id(station_id)
        subject = _events_subject(station_id or "*")
        subscription, pending = self._call(self._subscribe_ordered(subject), f"replay {subject}")
        try:
            if pending == 0 and not follow:
                return
            while True:
                # Wait in slices so close() ends a follower that waits for ever.
                wait = self.request_timeout_s if not follow else min(timeout_s or 1.0, 1.0)
                silent_since = time.monotonic()
                messages: list[Msg] = []
                while not messages:
                    if self._closed:
                        return
                    messages = self._call(self._next_messages(subscription, wait), f"replay {subject}")
                    silence = time.monotonic() - silent_since
                    if messages:
                        break
                    if not follow:
                        raise StorageError(f"replay of {subject} stalled: no message for {silence:.0f} s "
                                           "although the stream has more; retry later")
                    if timeout_s is not None and silence >= timeout_s:
                        return
                for message in messages:
                    event = self._decode_event(message)
                    if event is not None and event.seq > since:
                        yield event
                    if not follow and message.metadata.num_pending == 0:
                        return
        finally:
            if not self._closed:
                self._call(self._unsubscribe(subscription), "end replay")

    def close(self) -> None:
        """Close the connection and end the loop thread; a call still waiting (a follower of
        ``events``) gets a ``StorageError`` at once."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(self.request_timeout_s + 1)
            except (concurrent.futures.TimeoutError, *_NATS_ERRORS) as error:
                log.warning("closing the JetStream connection: %s", _describe(error))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.request_timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        try:
            nc = getattr(self, "_nc", None)
            if nc is not None:
                await asyncio.wait_for(nc.close(), self.request_timeout_s)
        finally:
            waiting = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    def __enter__(self) -> "JetStreamStorage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop thread -------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, _T], action: str, budget_s: float | None = None) -> _T:
        """Run on the loop thread and wait. Inner requests time out on their own; the budget
        (ten of them by default) is a backstop so a worker thread never hangs."""
        if self._closed:
            coroutine.close()
            raise StorageError(f"{action}: the JetStream storage is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        budget = budget_s if budget_s is not None else 10 * self.request_timeout_s
        try:
            return future.result(budget + 1)
        except StationError:
            raise
        except concurrent.futures.CancelledError:
            raise StorageError(f"{action}: the JetStream storage was closed meanwhile") from None
        # Since Python 3.11 the backstop's TimeoutError is also asyncio's and nats-py's.
        except (concurrent.futures.TimeoutError, *_NATS_ERRORS) as error:
            if not future.done():
                future.cancel()
                raise StorageError(f"{action}: no answer from JetStream ({', '.join(self.servers)}) "
                                   f"within {budget:.0f} s; retry later") from None
            raise StorageError(f"{action}: {_describe(error)} (JetStream at {', '.join(self.servers)}); "
                               "retry later") from error

    async def _connect(self, connect_timeout_s: float) -> nats.NATS:
        """Keep trying every server for ``connect_timeout_s``; once connected, reconnect for ever
        (a gateway outlives any one server)."""
        last_error: list[BaseException] = []
        up = asyncio.Event()  # set once connected: only then is a disconnect news

        async def disconnected() -> None:
            if up.is_set() and not self._closed:
                log.warning("JetStream: disconnected; reconnecting to %s", ", ".join(self.servers))

        async def reconnected() -> None:
            log.info("JetStream: reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

        async def error(exc: Exception) -> None:
            last_error[:] = [exc]
            if up.is_set():
                log.warning("JetStream connection: %s", _describe(exc))

        nc = nats.NATS()
        try:
            await asyncio.wait_for(nc.connect(
                self.servers, name=self.collector, connect_timeout=connect_timeout_s, max_reconnect_attempts=-1,
                reconnect_time_wait=0.5, disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error),
                connect_timeout_s)
        except asyncio.TimeoutError:
            await nc.close()
            why = _describe(last_error[0]) if last_error else "no answer"
            raise StorageError(f"cannot connect to JetStream at {', '.join(self.servers)} within "
                               f"{connect_timeout_s:g} s: {why}; is nats-server running there?") from None
        up.set()
        return nc

    async def _ensure_streams(self, configs: list[api.StreamConfig]) -> None:
        """Create, or bring to this configuration: idempotent, so gateways may start together,
        and a request that timed out is asked again (a cluster electing its leaders answers
        nothing for a while) until ``STREAM_SETUP_DEADLINE_S``."""
        jsm = self._nc.jsm(timeout=STREAM_SETUP_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_SETUP_DEADLINE_S
        for config in configs:
            while True:
                try:
                    await self._ensure_stream(jsm, config)
                    break
                except nats.errors.TimeoutError:
                    if loop.time() + STREAM_SETUP_TIMEOUT_S > deadline:
                        raise
                    log.warning("JetStream did not answer creating stream %s within %d s; asking again",
                                config.name, STREAM_SETUP_TIMEOUT_S)

    @staticmethod
    async def _ensure_stream(jsm: Any, config: api.StreamConfig) -> None:
        try:
            await jsm.add_stream(config)
        except nats.js.errors.APIError as error:
            if error.err_code in (ERR_INSUFFICIENT_RESOURCES, ERR_REPLICAS_NOT_CLUSTERED):
                raise StorageError(
                    f"cannot create stream {config.name} with replicas {config.num_replicas}: "
                    f"{_describe(error)}; replicas must not exceed the JetStream servers up "
                    "(1 for a single server)",
                    retryable=error.err_code == ERR_INSUFFICIENT_RESOURCES) from error
            if error.err_code != ERR_STREAM_CONFIG_DIFFERS:
                raise
            await jsm.update_stream(config)

    async def _last_message(self, stream: str, subject: str) -> api.RawStreamMsg | None:
        """Asked of the stream leader (not a direct get) so a write just acknowledged is seen."""
        try:
            return await self._js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError as error:
            if error.err_code == ERR_NO_MESSAGE:
                return None
            raise

    async def _subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        info = await self._js.stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    # -- events ----------------------------------------------------------------------

    async def _read_last_event(self, station_id: str) -> int:
        message = await self._last_message(EVENTS_STREAM, _events_subject(station_id))
        last = int(message.headers["Station-Seq"]) if message and message.headers else 0
        self._last_events[station_id] = (last, time.monotonic())
        return last

    async def _put_events(self, station_id: str, events: list[StationEvent]) -> int:
        cached = self._last_events.get(station_id)
        if cached and time.monotonic() - cached[1] < self._cache_ttl_s:
            last = cached[0]
            if events and events[0].seq != last + 1:  # a resend or a gap: another gateway may have written
                last = await self._read_last_event(station_id)
        else:
            last = await self._read_last_event(station_id)
        new = [event for event in events if event.seq > last]
        expected = last + 1
        for event in new:
            if event.seq != expected:
                raise EventGap(station_id, expected, event.seq)
            expected += 1
        resent = [event for event in events if event.seq <= last]
        if resent and await self._events_missing(station_id, last):
            # The station never got our acknowledgement and an event is missing below the last:
            # send its resent events again; Nats-Msg-Id drops the ones the stream already has.
            new = sorted(resent, key=lambda event: event.seq) + new
        if not new:
            return last
        self._last_events.pop(station_id, None)  # in doubt until every PubAck is in
        acks = await self._publish_in_order([self._event_message(station_id, event) for event in new])
        failed = [(event.seq, ack) for event, ack in zip(new, acks) if isinstance(ack, BaseException)]
        if failed:
            seq, error = failed[0]
            raise StorageError(f"station {station_id}: event {seq} not stored ({_describe(error)}; "
                               f"{len(failed)} of {len(new)} failed); resend from the last acknowledged")
        last = max(last, new[-1].seq)
        self._last_events[station_id] = (last, time.monotonic())
        return last

    async def _events_missing(self, station_id: str, last: int) -> bool:
        count = (await self._subject_counts(EVENTS_STREAM, _events_subject(station_id))).get(
            _events_subject(station_id), 0)
        if count > last:
            log.error("station %s: %d event messages for sequences 1..%d: some stored twice", station_id, count, last)
        elif count < last:
            log.warning("station %s: %d event messages for sequences 1..%d; refilling from the resend",
                        station_id, count, last)
        return count < last

    @staticmethod
    def _event_message(station_id: str, event: StationEvent) -> tuple[str, bytes, dict[str, str]]:
        body = _compact({"seq": event.seq, "t_ns": event.t_ns, "topic": event.topic, "body": event.body})
        headers = {"Station-Seq": str(event.seq), "Nats-Msg-Id": f"{station_id}:{event.seq}"}
        return _events_subject(station_id), body, headers

    async def _publish_in_order(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> list[Any]:
        """Publish one at a time, each after the previous one's PubAck, stopping at the first
        failure: a leader change can then never store event N+1 without event N, so the
        stream holds each station's events in ``Station-Seq`` order. A station's events are
        a few per minute; one round trip each is cheap."""
        outcomes: list[Any] = []
        for subject, body, headers in messages:
            try:
                outcomes.append(await self._js.publish(subject, body, timeout=self.request_timeout_s,
                                                       headers=headers))
            except _NATS_ERRORS as error:
                outcomes.append(error)
                break
        return outcomes + [outcomes[-1]] * (len(messages) - len(outcomes))

    async def _subscribe_ordered(self, subject: str) -> tuple[Any, int]:
        subscription = await self._js.subscribe(subject, stream=EVENTS_STREAM, ordered_consumer=True,
                                                deliver_policy=api.DeliverPolicy.ALL)
        info = await subscription.consumer_info()
        # A push consumer starts delivering at once: what it holds is what it sent plus the rest.
        return subscription, info.num_pending + (info.delivered.consumer_seq if info.delivered else 0)

    @staticmethod
    async def _next_messages(subscription: Any, wait_s: float, limit: int = 256) -> list[Msg]:
        """The next message (waiting up to ``wait_s``) and those already delivered after it."""
        try:
            messages = [await subscription.next_msg(timeout=wait_s)]
        except nats.errors.TimeoutError:
            return []
        while len(messages) < limit and subscription.pending_msgs:
            messages.append(await subscription.next_msg(timeout=wait_s))
        return messages

    @staticmethod
    async def _unsubscribe(subscription: Any) -> None:
        try:
            await subscription.unsubscribe()
        except nats.errors.Error as error:
            log.info("ending a replay: %s", _describe(error))

    def _decode_event(self, message: Msg) -> StationEvent | None:
        """None for a message some other publisher put on an events subject: a reader of the
        journal skips it (logged and counted) rather than stopping at it."""
        try:
            body = json.loads(message.data)
            return StationEvent(message.subject.split(".")[1], int(body["seq"]), int(body["t_ns"]),
                                str(body["topic"]), dict(body["body"]))
        except (ValueError, TypeError, KeyError) as error:
            self.malformed_events += 1
            log.warning("skipped a malformed event on %s (stream sequence %s): %s; %d so far", message.subject,
                        message.metadata.sequence.stream, error, self.malformed_events)
            return None

    # -- records ---------------------------------------------------------------------

    async def _put_records(self, records: list[NewRecord]) -> list[StoredRecord | StationError]:
        return list(await asyncio.gather(*(self._put_record(record) for record in records)))

    async def _put_record(self, record: NewRecord) -> StoredRecord | StationError:
        try:
            _check_station_id(record.station_id)
            _check_record_id(record.record_id)
            existing = await self._find_record(record.record_id)
            if existing is not None:
                return self._judge(dataclasses.replace(existing, duplicate=True), record)
            headers = {"Nats-Msg-Id": record.record_id, "Record-Sha256": record.sha256,
                       "Station-Id": record.station_id}
            self._check_size(record, _header_bytes(headers))
            try:
                ack = await self._js.publish(_records_subject(record.station_id), record.sealed, headers=headers)
            except nats.js.errors.APIError as error:
                if error.err_code == ERR_MESSAGE_TOO_BIG:
                    raise StationError(f"record {record.record_id}: {len(record.sealed)} bytes refused by stream "
                                       f"{RECORDS_STREAM}: {_describe(error)}", code="record_too_large") from error
                raise
            stored = StoredRecord(record.station_id, record.record_id, record.sha256, len(record.sealed),
                                  time.time_ns(), f"{RECORDS_STREAM}:{ack.seq}", duplicate=bool(ack.duplicate))
            if ack.duplicate:
                # Stored within the dedup window by a delivery that wrote no index entry yet:
                # index what is really stored, which may not be this record.
                stored = await self._stored_message(record.record_id, ack.seq)
            entry = _compact({"station": stored.station_id, "sha256": stored.sha256, "size": stored.size,
                              "stored_ns": stored.stored_ns, "stream_seq": ack.seq})
            try:
                await self._js.publish(_index_subject(record.record_id), entry)
            except nats.js.errors.APIError as error:
                if error.err_code != ERR_SUBJECT_FULL:
                    raise
                existing = await self._find_record(record.record_id)  # another gateway indexed it first
                if existing is None:
                    raise
                return self._judge(dataclasses.replace(existing, duplicate=True), record)
            return self._judge(stored, record)
        except StationError as error:
            return error
        except _NATS_ERRORS as error:
            return StorageError(f"record {record.record_id}: {_describe(error)} (JetStream at "
                                f"{', '.join(self.servers)}); retry later")

    def _check_size(self, record: NewRecord, header_bytes: int) -> None:
        """Refuse before sending: a message over max_payload makes the server drop the connection."""
        size = len(record.sealed) + header_bytes
        max_payload = self._nc.max_payload
        if size <= min(max_payload, MAX_RECORD_MESSAGE):
            return
        if max_payload < MAX_RECORD_MESSAGE:
            remedy = "raise max_payload in the configuration of every nats-server (at most 8MB) and restart them"
        else:
            remedy = (f"{MAX_RECORD_MESSAGE} bytes is the most this collector stores in one message, "
                      "so the station must seal smaller records")
        raise StationError(f"record {record.record_id} is {len(record.sealed)} bytes ({size} with headers), over "
                           f"the NATS server's max_payload of {max_payload} bytes: {remedy}",
                           code="record_too_large")

    @staticmethod
    def _judge(stored: StoredRecord, record: NewRecord) -> StoredRecord | StationError:
        if stored.sha256 != record.sha256:
            return StationError(f"record {record.record_id} is stored with sha256 {stored.sha256} "
                                f"({stored.ref}); this delivery has {record.sha256}: a record id names one "
                                "sealed record only", code="record_conflict")
        return stored

    async def _stored_message(self, record_id: str, stream_seq: int) -> StoredRecord:
        message = await self._js.get_msg(RECORDS_STREAM, seq=stream_seq)
        headers = message.headers or {}
        data = message.data or b""
        stored_ns = int(message.time.timestamp() * 1e9) if message.time else time.time_ns()
        return StoredRecord(headers.get("Station-Id", message.subject.split(".")[1]), record_id,
                            headers.get("Record-Sha256") or hashlib.sha256(data).hexdigest(), len(data), stored_ns,
                            f"{RECORDS_STREAM}:{stream_seq}", duplicate=True)

    async def _index_entry(self, record_id: str) -> dict[str, Any] | None:
        message = await self._last_message(INDEX_STREAM, _index_subject(record_id))
        return json.loads(message.data) if message else None

    async def _find_record(self, record_id: str) -> StoredRecord | None:
        entry = await self._index_entry(record_id)
        if entry is None:
            return None
        return StoredRecord(entry["station"], record_id, entry["sha256"], entry["size"], entry["stored_ns"],
                            f"{RECORDS_STREAM}:{entry['stream_seq']}")

    async def _get_record(self, record_id: str) -> bytes:
        entry = await self._index_entry(record_id)
        if entry is None:
            raise StationError(f"no record {record_id} in {INDEX_STREAM}", code="not_found")
        seq = entry["stream_seq"]
        try:
            # Any replica answers a direct get; one that has not applied the message yet says 404.
            message = await self._js.get_msg(RECORDS_STREAM, seq=seq, direct=True)
        except nats.js.errors.NotFoundError:
            try:
                message = await self._js.get_msg(RECORDS_STREAM, seq=seq)
            except nats.js.errors.NotFoundError as error:
                raise StationError(f"record {record_id} is indexed at {RECORDS_STREAM}:{seq} but that message "
                                   "is gone (deleted or purged)", code="not_found") from error
        data = message.data or b""
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StationError(f"record {record_id} at {RECORDS_STREAM}:{seq} does not match its sha256 "
                               f"{entry['sha256']}", code="record_corrupt")
        return data

    # -- stations --------------------------------------------------------------------

    async def _stations(self) -> list[StationInfo]:
        status, events, records = await asyncio.gather(
            self._subject_counts(STATUS_STREAM, _status_subject("*")),
            self._subject_counts(EVENTS_STREAM, _events_subject("*")),
            self._subject_counts(RECORDS_STREAM, _records_subject("*")))
        ids = sorted({subject.split(".")[1] for counts in (status, events, records) for subject in counts})

        async def one(station_id: str) -> StationInfo:
            seen_ns, reported = 0, {}
            if _status_subject(station_id) in status:
                message = await self._last_message(STATUS_STREAM, _status_subject(station_id))
                if message and message.data:
                    note = json.loads(message.data)
                    seen_ns, reported = note.get("seen_ns", 0), note.get("status", {})
            last = await self._read_last_event(station_id) if _events_subject(station_id) in events else 0
            return StationInfo(station_id, seen_ns, last, records.get(_records_subject(station_id), 0), reported)

        return list(await asyncio.gather(*(one(station_id) for station_id in ids)))
