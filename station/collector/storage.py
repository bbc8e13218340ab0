"""Where the collector keeps what stations deliver: one interface, two backends.

The gateway acknowledges a record or an event to a station only after the backend said it
is stored durably, so every method here returns only once its write is safe (fsync for the
embedded backend, the JetStream PubAck for the scale-out one). Every write is idempotent:
a record delivered twice (a lost ack, a resend after confirmation) is stored once; events
are kept per station by their journal sequence, in order and without gaps.

- ``EmbeddedStorage`` (``station/collector/embedded.py``): SQLite index plus one file per
  record in a data directory; one site, used by ``make demo``.
- ``JetStreamStorage`` (``station/collector/jetstream.py``): all state in a NATS JetStream
  cluster; many stateless gateways share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from station.errors import StationError


class StorageError(StationError):
    """The backend could not store or read; the station retries later."""
    code = "storage_unavailable"
    retryable = True


class EventGap(StationError):
    """A station sent events that do not follow the last one stored (never stored)."""
    code = "event_gap"

    def __init__(self, station_id: str, expected: int, got: int):
        super().__init__(f"station {station_id}: expected event {expected}, got {got}")
        self.details = {"expected": expected, "got": got}
        self.expected = expected


@dataclass(frozen=True)
class StationEvent:
    """One journaled event of one station, as the station numbered it."""
    station_id: str
    seq: int
    t_ns: int
    topic: str
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"station": self.station_id, "seq": self.seq, "t_ns": self.t_ns, "topic": self.topic,
                "body": self.body}


@dataclass(frozen=True)
class NewRecord:
    """A sealed record whose header signatures the gateway has verified."""
    station_id: str
    record_id: str
    sha256: str              # of the sealed bytes, hex
    sealed: bytes | memoryview  # as received: the message frame of a record sent in one piece


@dataclass(frozen=True)
class StoredRecord:
    station_id: str
    record_id: str
    sha256: str
    size: int
    stored_ns: int
    ref: str                 # where the backend keeps it (file name, stream sequence)
    duplicate: bool = False  # True when this call found it already stored

    def receipt(self, collector: str) -> dict[str, Any]:
        """What the station keeps once it purged the payload: proof of where it went."""
        return {"collector": collector, "record": self.record_id, "sha256": self.sha256, "size": self.size,
                "stored_ns": self.stored_ns, "ref": self.ref}


@dataclass(frozen=True)
class StationInfo:
    station_id: str
    last_seen_ns: int = 0
    last_seq: int = 0
    records: int = 0
    status: dict[str, Any] = field(default_factory=dict)  # what the station last reported (backlog)

    def to_dict(self) -> dict[str, Any]:
        return {"station": self.station_id, "last_seen_ns": self.last_seen_ns, "last_seq": self.last_seq,
                "records": self.records, "status": self.status}


class Storage(Protocol):
    """Blocking calls; the gateway runs them in its worker thread, batch by batch."""

    name: str  # "embedded" or "jetstream"

    def last_event_seq(self, station_id: str) -> int:
        """The highest event sequence stored for a station (0 if none)."""

    def put_events(self, station_id: str, events: list[StationEvent]) -> int:
        """Store events in order. Those at or below the last stored are skipped (a resend);
        the first new one must be last + 1, else ``EventGap`` and nothing is stored.
        Returns the new last stored sequence."""

    def put_records(self, records: list[NewRecord]) -> list[StoredRecord | StationError]:
        """Store a batch durably; one outcome per record, in order. A record already stored
        with the same hash is a duplicate (not stored again); with another hash it is an
        error (``record_conflict``)."""

    def find_record(self, record_id: str) -> StoredRecord | None:
        ...

    def get_record(self, record_id: str) -> bytes:
        """The sealed bytes; ``StationError(code="not_found")`` if absent."""

    def note_station(self, station_id: str, seen_ns: int, status: dict[str, Any]) -> None:
        """Remember when a station was last heard of and what it reported (its backlog)."""

    def stations(self) -> list[StationInfo]:
        ...

    def events(self, station_id: str | None, since: int, *, follow: bool = False,
               timeout_s: float | None = None) -> Iterator[StationEvent]:
        """Stored events (all stations merged, or one) with seq > ``since`` per station;
        with ``follow``, keep waiting for new ones (until ``timeout_s`` of silence)."""

    def close(self) -> None:
        ...
