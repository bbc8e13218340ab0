"""The collector's embedded storage: an SQLite index and one file per record, for one site.

Durability before acknowledgement: each record's file is written and fsynced, its directory
fsynced, and only then one transaction (``synchronous=FULL``) indexes the whole batch;
events of a batch go in one transaction. The index is the truth: a file is a record only
once a row names it, so a file is written under its final name (no temporary name and
rename), and a crash or a failed batch leaves at most stray files that no row names; they
are removed at the next start. A batch of records therefore costs one directory fsync per
station and one commit, not one per record (group commit). Records are the sealed envelopes
as the station sent them: this backend never sees plaintext.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from station.collector.storage import EventGap, NewRecord, StationEvent, StationInfo, StorageError, StoredRecord
from station.errors import StationError
from station.store import fsync_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS stations (
    station_id    TEXT PRIMARY KEY,
    last_seen_ns  INTEGER NOT NULL,
    status        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order: the merged stream
    station_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    t_ns        INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    body        TEXT NOT NULL,
    UNIQUE (station_id, seq)
);
CREATE TABLE IF NOT EXISTS records (
    record_id   TEXT PRIMARY KEY,
    station_id  TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    stored_ns   INTEGER NOT NULL,
    path        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_station ON records(station_id);
"""


class EmbeddedStorage:
    name = "embedded"

    def __init__(self, data_dir: Path, *, fsync: bool = True, read_only: bool = False):
        """``read_only``: a tool beside a running gateway (watch, export); it never cleans up."""
        self.data_dir = Path(data_dir)
        self.records_dir = self.data_dir / "records"
        self.fsync = fsync
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, dict[str, Any]]] = {}
        self._seen_flush_at = 0.0
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(self.data_dir / "collector.db", isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self.db.execute("PRAGMA busy_timeout=10000")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the collector's storage in {self.data_dir}: {exc}") from exc
        if not read_only:
            self._remove_strays()

    def _remove_strays(self) -> None:
        known = {row[0] for row in self.db.execute("SELECT path FROM records")}
        for station_dir in self.records_dir.iterdir():
            for path in station_dir.iterdir() if station_dir.is_dir() else ():
                if str(path.relative_to(self.data_dir)) not in known:
                    path.unlink(missing_ok=True)

    # -- events --------------------------------------------------------------------------------
    def last_event_seq(self, station_id: str) -> int:
        with self._lock:
            return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE station_id=?",
                                   (station_id,)).fetchone()[0]

    def put_events(self, station_id: str, events: list[StationEvent]) -> int:
        last = self.last_event_seq(station_id)
        new = [e for e in events if e.seq > last]
        if not new:
            return last
        for expected, event in enumerate(new, start=last + 1):
            if event.seq != expected:
                raise EventGap(station_id, expected, event.seq)
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    "INSERT INTO events(station_id, seq, t_ns, topic, body) VALUES (?, ?, ?, ?, ?)",
                    [(station_id, e.seq, e.t_ns, e.topic, json.dumps(e.body, ensure_ascii=False)) for e in new])
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                self.db.execute("ROLLBACK")
                raise StorageError(f"cannot store events of {station_id}: {exc}") from exc
        return new[-1].seq

    # -- records -------------------------------------------------------------------------------
    def put_records(self, records: list[NewRecord]) -> list[StoredRecord | StationError]:
        now = time.time_ns()
        outcomes: list[StoredRecord | StationError] = []
        fresh: dict[str, tuple[NewRecord, StoredRecord]] = {}
        for record in records:
            known = fresh[record.record_id][1] if record.record_id in fresh else self.find_record(record.record_id)
            if known is None:
                stored = StoredRecord(record.station_id, record.record_id, record.sha256, len(record.sealed), now,
                                      f"records/{record.station_id}/{record.record_id}.sealed")
                fresh[record.record_id] = (record, stored)
                outcomes.append(stored)
            elif known.sha256 == record.sha256:
                outcomes.append(dataclasses.replace(known, duplicate=True))
            else:
                outcomes.append(StationError(f"record {record.record_id} is stored already with sha256 "
                                             f"{known.sha256[:16]}…, not {record.sha256[:16]}…",
                                             code="record_conflict"))
        if not fresh:
            return outcomes
        try:
            self._write_files(list(fresh.values()))
        except OSError as exc:
            raise StorageError(f"cannot write records to {self.records_dir}: {exc}") from exc
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    "INSERT INTO records(record_id, station_id, sha256, size, stored_ns, path) VALUES (?,?,?,?,?,?)",
                    [(s.record_id, s.station_id, s.sha256, s.size, s.stored_ns, s.ref) for _, s in fresh.values()])
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                self.db.execute("ROLLBACK")
                raise StorageError(f"cannot index records in {self.data_dir}: {exc}") from exc
        return outcomes

    def _write_files(self, fresh: list[tuple[NewRecord, StoredRecord]]) -> None:
        """Every file of the batch, each one's write-back started as soon as it is written
        (the disk works on the batch while the rest is written); then every file's fsync
        and one fsync per directory."""
        files: list[int] = []
        directories: set[Path] = set()
        try:
            for record, stored in fresh:
                path = self.data_dir / stored.ref
                if path.parent not in directories:
                    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    directories.add(path.parent)
                files.append(fd := os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
                view = memoryview(record.sealed)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:  # never read back here: start writing it out, keep no cached copy
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if self.fsync:
                for fd in files:
                    os.fsync(fd)
        finally:
            for fd in files:
                os.close(fd)
        if self.fsync:
            for directory in directories:
                fsync_dir(directory)

    def find_record(self, record_id: str) -> StoredRecord | None:
        with self._lock:
            row = self.db.execute("SELECT station_id, record_id, sha256, size, stored_ns, path FROM records "
                                  "WHERE record_id=?", (record_id,)).fetchone()
        return StoredRecord(*row) if row else None

    def get_record(self, record_id: str) -> bytes:
        found = self.find_record(record_id)
        if found is None:
            raise StationError(f"record {record_id} is not at this collector", code="not_found")
        return (self.data_dir / found.ref).read_bytes()

    # -- stations ------------------------------------------------------------------------------
    def note_station(self, station_id: str, seen_ns: int, status: dict[str, Any]) -> None:
        """Kept in memory and written at most once a second: when a station was last heard of
        is worth no fsync per hello (200 stations reconnecting at once would queue 200)."""
        self._seen[station_id] = (seen_ns, status)
        if time.monotonic() >= self._seen_flush_at:
            self._flush_seen()

    def _flush_seen(self) -> None:
        self._seen_flush_at = time.monotonic() + 1.0
        seen, self._seen = self._seen, {}
        if not seen:
            return
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO stations(station_id, last_seen_ns, status) VALUES (?, ?, ?) "
                                "ON CONFLICT(station_id) DO UPDATE SET last_seen_ns=excluded.last_seen_ns, "
                                "status=excluded.status",
                                [(sid, ns, json.dumps(status)) for sid, (ns, status) in seen.items()])
            self.db.execute("COMMIT")

    def stations(self) -> list[StationInfo]:
        self._flush_seen()
        with self._lock:
            rows = self.db.execute(
                "SELECT s.station_id, s.last_seen_ns, "
                "(SELECT COALESCE(MAX(seq), 0) FROM events e WHERE e.station_id=s.station_id), "
                "(SELECT COUNT(*) FROM records r WHERE r.station_id=s.station_id), s.status "
                "FROM stations s ORDER BY s.station_id").fetchall()
        return [StationInfo(sid, seen, seq, count, json.loads(status)) for sid, seen, seq, count, status in rows]

    def events(self, station_id: str | None, since: int, *, follow: bool = False,
               timeout_s: float | None = None) -> Iterator[StationEvent]:
        position = 0
        quiet_since = time.monotonic()
        while True:
            where, params = "id > ? AND seq > ?", [position, since]
            if station_id is not None:
                where += " AND station_id = ?"
                params.append(station_id)
            with self._lock:
                rows = self.db.execute(f"SELECT id, station_id, seq, t_ns, topic, body FROM events WHERE {where} "
                                       "ORDER BY id LIMIT 1000", params).fetchall()
            for row_id, sid, seq, t_ns, topic, body in rows:
                position = row_id
                yield StationEvent(sid, seq, t_ns, topic, json.loads(body))
            if rows:
                quiet_since = time.monotonic()
                continue
            if not follow or (timeout_s is not None and time.monotonic() - quiet_since >= timeout_s):
                return
            time.sleep(0.2)

    def close(self) -> None:
        self._flush_seen()
        with self._lock:
            self.db.close()
