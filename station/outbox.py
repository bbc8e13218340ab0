"""The uplink's side of the record store: what is still to deliver, and what central said.

The controller owns the store (its writer lock, recovery, migrations). The uplink opens the
same SQLite database without that lock and writes only what belongs to delivery, each in
its own short transaction: a record's ``delivered_ns`` and receipt on the collector's
``stored``, ``confirmed_ns`` when a later ``confirm`` finds it at central, ``purged_ns``
once its sealed file is removed after the retention period; and the journal cursor
``events_acked``. SQLite's locking serialises these writes with the controller's.

A record's life here: committed -> delivered (acked) -> confirmed -> purged. A record that
central cannot find on confirmation goes back to undelivered and is sent again.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.store import SCHEMA_VERSION, SEALED_SUFFIX, JournalEntry, RecordRow, StoreError, fsync_dir

_COLUMNS = ("record_id, session_id, created_ns, content_type, sealed_bytes, sealed_sha256, summary, "
            "delivered_ns, confirmed_ns, purged_ns")


@dataclass(frozen=True)
class Backlog:
    """What is waiting to reach central: the uplink's status and ``stationctl uplink``."""
    records: int
    bytes: int
    events: int
    oldest_ns: int | None         # the oldest undelivered record or event
    unconfirmed: int              # delivered, not yet confirmed
    last_seq: int
    events_acked: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Outbox:
    def __init__(self, root: Path, *, fsync: bool = True, read_only: bool = False):
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.fsync = fsync
        self._lock = threading.Lock()
        path = self.root / "store.db"
        if not path.exists():
            raise StoreError(f"no record store in {self.root} yet; the controller creates it",
                             code="store_not_ready", retryable=True)
        try:
            target, uri = (f"file:{path}?mode=ro", True) if read_only else (str(path), False)
            self.db = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=10000")
            self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self.db.execute("PRAGMA secure_delete=ON")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the record store in {self.root}: {exc}", retryable=True) from exc
        if version != SCHEMA_VERSION:
            self.db.close()
            raise StoreError(f"the record store in {self.root} has schema {version}, this uplink needs "
                             f"{SCHEMA_VERSION}; the controller migrates it when it starts",
                             code="store_not_ready", retryable=True)

    def _rows(self, where: str, params: tuple = (), limit: int = -1) -> list[RecordRow]:
        with self._lock:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM records WHERE {where} "
                                   "ORDER BY created_ns, record_id LIMIT ?", (*params, limit)).fetchall()
        return [RecordRow(*r[:6], json.loads(r[6]), *r[7:]) for r in rows]

    def _write(self, sql: str, params: tuple) -> int:
        with self._lock:
            try:
                return self.db.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"could not update delivery state in {self.root}: {exc}", retryable=True) from exc

    # -- records -------------------------------------------------------------------------------
    def records(self) -> list[RecordRow]:
        return self._rows("1")

    def undelivered(self, limit: int = 100, after: tuple[int, str] | None = None) -> list[RecordRow]:
        """Records not yet acknowledged by the collector, oldest first (after a position)."""
        if after is None:
            return self._rows("delivered_ns IS NULL", limit=limit)
        return self._rows("delivered_ns IS NULL AND (created_ns, record_id) > (?, ?)", after, limit)

    def unconfirmed(self, delivered_before_ns: int, limit: int = 500) -> list[RecordRow]:
        return self._rows("delivered_ns IS NOT NULL AND confirmed_ns IS NULL AND delivered_ns <= ?",
                          (delivered_before_ns,), limit)

    def sealed(self, record_id: str) -> bytes:
        return (self.records_dir / f"{record_id}{SEALED_SUFFIX}").read_bytes()

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        """One transaction: a burst of acknowledgements costs one fsync."""
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(sql, rows)
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise StoreError(f"could not update delivery state in {self.root}: {exc}", retryable=True) from exc

    def mark_delivered(self, receipts: list[tuple[str, dict[str, Any]]], now_ns: int | None = None) -> None:
        """(record id, the collector's receipt) of each record it acknowledged as stored."""
        now_ns = now_ns or time.time_ns()
        self._write_many("UPDATE records SET delivered_ns=?, receipt=? WHERE record_id=? AND delivered_ns IS NULL",
                         [(now_ns, json.dumps(receipt, sort_keys=True), rid) for rid, receipt in receipts])

    def mark_confirmed(self, record_ids: list[str], now_ns: int | None = None) -> None:
        now_ns = now_ns or time.time_ns()
        self._write_many("UPDATE records SET confirmed_ns=? WHERE record_id=? AND confirmed_ns IS NULL",
                         [(now_ns, rid) for rid in record_ids])

    def mark_missing(self, record_id: str) -> None:
        """Central does not have it after all: deliver it again."""
        self._write("UPDATE records SET delivered_ns=NULL, receipt=NULL WHERE record_id=? AND purged_ns IS NULL",
                    (record_id,))

    def purgeable(self, confirmed_before_ns: int, limit: int = 500) -> list[RecordRow]:
        return self._rows("confirmed_ns IS NOT NULL AND confirmed_ns <= ? AND purged_ns IS NULL",
                          (confirmed_before_ns,), limit)

    def purge(self, record_id: str, now_ns: int | None = None) -> None:
        """Remove a confirmed record's sealed payload; its row (id, hashes, receipt) stays."""
        row = self._rows("record_id=?", (record_id,))
        if not row or row[0].confirmed_ns is None:
            raise StoreError(f"record {record_id} is not confirmed by central; not purging", code="bad_request")
        self._write("UPDATE records SET purged_ns=? WHERE record_id=? AND purged_ns IS NULL",
                    (now_ns or time.time_ns(), record_id))
        (self.records_dir / f"{record_id}{SEALED_SUFFIX}").unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.records_dir)

    def receipt(self, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT receipt FROM records WHERE record_id=?", (record_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    # -- events --------------------------------------------------------------------------------
    def events_acked(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT value FROM uplink WHERE name='events_acked'").fetchone()
        return row[0] if row else 0

    def set_events_acked(self, seq: int) -> None:
        self._write("INSERT INTO uplink(name, value) VALUES('events_acked', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value=MAX(value, excluded.value)", (seq,))

    def journal_since(self, seq: int, limit: int) -> list[JournalEntry]:
        with self._lock:
            rows = self.db.execute("SELECT seq, t_ns, topic, body FROM journal WHERE seq > ? ORDER BY seq LIMIT ?",
                                   (seq, limit)).fetchall()
        return [JournalEntry(s, t, topic, json.loads(body)) for s, t, topic, body in rows]

    # -- figures -------------------------------------------------------------------------------
    def backlog(self) -> Backlog:
        with self._lock:
            records, size, oldest_record = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(sealed_bytes), 0), MIN(created_ns) FROM records "
                "WHERE delivered_ns IS NULL").fetchone()
            unconfirmed = self.db.execute("SELECT COUNT(*) FROM records WHERE delivered_ns IS NOT NULL "
                                          "AND confirmed_ns IS NULL").fetchone()[0]
            last_seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()[0]
            row = self.db.execute("SELECT value FROM uplink WHERE name='events_acked'").fetchone()
            acked = row[0] if row else 0
            oldest_event = self.db.execute("SELECT t_ns FROM journal WHERE seq > ? ORDER BY seq LIMIT 1",
                                           (acked,)).fetchone()
        oldest = [t for t in (oldest_record, oldest_event[0] if oldest_event else None) if t is not None]
        return Backlog(records=records, bytes=size, events=last_seq - acked, oldest_ns=min(oldest) if oldest else None,
                       unconfirmed=unconfirmed, last_seq=last_seq, events_acked=acked)

    def close(self) -> None:
        with self._lock:
            self.db.close()

