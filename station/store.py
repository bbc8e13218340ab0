"""The station's durable state: sealed records, open sessions, the event journal, the audit
log, in one SQLite database (WAL, ``synchronous=FULL``) plus one sealed file per record.

What is at rest is never in the clear: a record is the sealed envelope the controller hands
in (signed, encrypted to central), and an open session's state and captures are encrypted
here with the station's capture key before they touch the database. Deleted pages are
zeroed (``secure_delete``).

A record is committed before the operator is told "done": the sealed blob is written to a
temporary name, fsynced, renamed and its directory fsynced; then one transaction inserts
the record's row (with its outbox state), closes the session, destroys its captures and
journals the event. A crash at any point leaves either no row (and a stray file that
``recover()`` removes) or a complete record.

One process writes (the controller): it holds an exclusive lock on ``writer.lock``, and
only it runs recovery and migrations; tools open the store read-only and touch nothing.
The uplink is the one exception, through ``station.outbox``: it writes only the delivery
columns of committed records, its event cursor, and removes a sealed file it purges.

The print queue lives here too (``print_jobs``, schema 4): each job's state as
``station.printing`` keeps it (no personal data), and the card data it prints, encrypted
like a capture and bound to the job id; the card data is destroyed when the job ends.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from station import locks
from station.errors import StationError
from station.printing import DESTROYS_CARD as PRINT_JOB_ENDED

SCHEMA_VERSION = 4  # 4 added the print queue (print_jobs)
SEALED_SUFFIX = ".sealed"

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id     TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    created_ns    INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    sealed_bytes  INTEGER NOT NULL,
    sealed_sha256 TEXT NOT NULL,
    summary       TEXT NOT NULL,      -- ids, counts and quality figures; nothing personal
    delivered_ns  INTEGER,
    confirmed_ns  INTEGER,
    purged_ns     INTEGER,
    receipt       TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id  TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    operator    TEXT NOT NULL,
    started_ns  INTEGER NOT NULL,
    updated_ns  INTEGER NOT NULL,
    record_id   TEXT,
    state       BLOB                  -- encrypted; NULL once the session ended
);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions(status);
CREATE TABLE IF NOT EXISTS captures (
    session_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    data        BLOB NOT NULL,        -- encrypted
    PRIMARY KEY (session_id, name)
);
CREATE TABLE IF NOT EXISTS journal (
    seq    INTEGER PRIMARY KEY,       -- gap-free per station, assigned in the writing transaction
    t_ns   INTEGER NOT NULL,
    topic  TEXT NOT NULL,
    body   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uplink (
    name   TEXT PRIMARY KEY,          -- 'events_acked': the last journal seq central stored
    value  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    t_ns        INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    session_id  TEXT,
    record_id   TEXT,
    detail      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS print_jobs (
    job_id      TEXT PRIMARY KEY,
    record_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    updated_ns  INTEGER NOT NULL,
    job         TEXT NOT NULL,        -- station.printing.PrintJob as JSON; nothing personal
    card        BLOB                  -- the card data, encrypted; NULL once the job ended
);
CREATE INDEX IF NOT EXISTS print_jobs_state ON print_jobs(state);
"""


class StoreError(StationError):
    code = "store_error"


class StoreBusy(StoreError):
    code = "store_busy"
    exit_status = locks.EX_TEMPFAIL


class Cipher(Protocol):
    def encrypt(self, data: bytes, aad: bytes) -> bytes: ...
    def decrypt(self, blob: bytes, aad: bytes) -> bytes: ...


LegacySealer = Callable[[str, dict[str, Any], dict[str, bytes]], bytes]


@dataclass(frozen=True)
class RecordRow:
    record_id: str
    session_id: str
    created_ns: int
    content_type: str
    sealed_bytes: int
    sealed_sha256: str
    summary: dict[str, Any]
    delivered_ns: int | None
    confirmed_ns: int | None
    purged_ns: int | None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    t_ns: int
    topic: str
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "t_ns": self.t_ns, "topic": self.topic, "body": self.body}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _capture_aad(session_id: str, name: str) -> bytes:
    return f"station-capture/v1\x00{session_id}\x00{name}".encode()


def _session_aad(session_id: str) -> bytes:
    return f"station-session/v1\x00{session_id}".encode()


def _print_card_aad(job_id: str) -> bytes:
    return f"station-print-card/v1\x00{job_id}".encode()


class Tx:
    """One unit of work inside a store transaction (see ``RecordStore.transaction``)."""

    def __init__(self, store: "RecordStore"):
        self._store = store
        self._db = store.db

    def save_session(self, session_id: str, status: str, operator: str, started_ns: int, updated_ns: int,
                     state: dict[str, Any] | None, record_id: str = "") -> None:
        """The session's whole state, encrypted; ``state=None`` once it ended."""
        blob = None
        if state is not None:
            blob = self._store.cipher.encrypt(json.dumps(state, sort_keys=True).encode(), _session_aad(session_id))
        self._db.execute(
            "INSERT INTO sessions(session_id, status, operator, started_ns, updated_ns, record_id, state) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(session_id) DO UPDATE SET status=excluded.status, "
            "updated_ns=excluded.updated_ns, record_id=excluded.record_id, state=excluded.state",
            (session_id, status, operator, started_ns, updated_ns, record_id or None, blob))

    def put_capture(self, session_id: str, name: str, data: bytes) -> None:
        blob = self._store.cipher.encrypt(bytes(data), _capture_aad(session_id, name))
        self._db.execute("INSERT OR REPLACE INTO captures(session_id, name, data) VALUES (?,?,?)",
                         (session_id, name, blob))

    def keep_captures(self, session_id: str, names: list[str]) -> None:
        """Destroy the session's captures not in ``names`` (replaced, or the session ended)."""
        marks = ",".join("?" * len(names))
        self._db.execute(f"DELETE FROM captures WHERE session_id=? AND name NOT IN ({marks})",
                         (session_id, *names))

    def add_record(self, record_id: str, session_id: str, content_type: str, sealed: bytes,
                   summary: dict[str, Any]) -> int:
        created = time.time_ns()
        self._db.execute(
            "INSERT INTO records(record_id, session_id, created_ns, content_type, sealed_bytes, sealed_sha256, "
            "summary) VALUES (?,?,?,?,?,?,?)",
            (record_id, session_id, created, content_type, len(sealed), hashlib.sha256(sealed).hexdigest(),
             json.dumps(summary, sort_keys=True)))
        return created

    def journal(self, topic: str, body: dict[str, Any]) -> int:
        """Append an event; its sequence number is the next without a gap (a rolled-back
        transaction takes its number with it)."""
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM journal").fetchone()[0]
        self._db.execute("INSERT INTO journal(seq, t_ns, topic, body) VALUES (?,?,?,?)",
                         (seq, time.time_ns(), topic, json.dumps(body, sort_keys=True)))
        return seq

    def save_print_job(self, job: dict[str, Any], card: bytes | None = None) -> None:
        """Insert or update a print job (``PrintJob.to_dict()``). ``card`` stores the card data
        encrypted; without it an update keeps the stored card. A job that ended destroys its
        card data whatever is passed, so a retried job needs it handed in again."""
        job_id = job["job_id"]
        ended = job["state"] in PRINT_JOB_ENDED
        blob = None
        if card is not None and not ended:
            blob = self._store.cipher.encrypt(bytes(card), _print_card_aad(job_id))
        self._db.execute(
            "INSERT INTO print_jobs(job_id, record_id, state, updated_ns, job, card) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(job_id) DO UPDATE SET record_id=excluded.record_id, state=excluded.state, "
            "updated_ns=excluded.updated_ns, job=excluded.job, "
            "card=CASE WHEN ? THEN excluded.card ELSE print_jobs.card END",
            (job_id, job["record_id"], job["state"], job["updated_ns"], json.dumps(job, sort_keys=True), blob,
             ended or card is not None))

    def audit(self, actor: str, action: str, *, session_id: str | None = None, record_id: str | None = None,
              **detail: Any) -> None:
        self._db.execute(
            "INSERT INTO audit(t_ns, actor, action, session_id, record_id, detail) VALUES (?,?,?,?,?,?)",
            (time.time_ns(), actor, action, session_id, record_id, json.dumps(detail, sort_keys=True)))


class RecordStore:
    def __init__(self, root: Path, *, cipher: Cipher | None = None, fsync: bool = True, writer: bool = True,
                 legacy_sealer: LegacySealer | None = None):
        self.root = Path(root)
        self.cipher = cipher
        self.fsync = fsync
        self.writer = writer
        self.records_dir = self.root / "records"
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        try:
            if writer:
                self.records_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(self.root, 0o700)
                self._take_writer_lock()
                self.db = sqlite3.connect(self.root / "store.db", isolation_level=None, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
            else:
                if not (self.root / "store.db").exists():
                    raise StoreError(f"no record store in {self.root}")
                uri = f"file:{self.root / 'store.db'}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self.db.execute("PRAGMA secure_delete=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            self._release_writer_lock()
            raise StoreError(f"cannot open the record store in {self.root}: {exc}") from exc
        if writer:
            try:
                self._migrate(legacy_sealer)
                self.recover()
            except BaseException:
                self.close()
                raise

    @classmethod
    def reader(cls, root: Path) -> "RecordStore":
        """Read-only access for tools while the controller runs: no lock, no recovery."""
        return cls(root, writer=False)

    # -- the single writer ------------------------------------------------------------------
    def _take_writer_lock(self) -> None:
        try:
            self._lock_fd = locks.hold(self.root / "writer.lock", f"the record store {self.root}")
        except locks.AlreadyRunning as exc:
            raise StoreBusy(f"{exc.message}; stop it first, or open the store read-only") from None

    def _release_writer_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _migrate(self, legacy_sealer: LegacySealer | None) -> None:
        """Bring the database to ``SCHEMA_VERSION``. Version 1 (no user_version, a
        ``records`` table with a plaintext manifest and a directory of plaintext files per
        record) is sealed record by record and its plaintext removed."""
        with self._lock:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(records)")}
            if version == 0 and "manifest" in columns:
                self.db.execute("ALTER TABLE records RENAME TO records_v1")
                version = 1
            if version > SCHEMA_VERSION:
                raise StoreError(f"the store in {self.root} has schema version {version}, newer than this "
                                 f"software's {SCHEMA_VERSION}: install the newer station software")
            self.db.executescript(SCHEMA)
            if version == 1 or self._has_table("records_v1"):
                self._migrate_v1(legacy_sealer)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _has_table(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() \
            is not None

    def _migrate_v1(self, legacy_sealer: LegacySealer | None) -> None:
        rows = self.db.execute("SELECT record_id, session_id, created_ns, manifest FROM records_v1").fetchall()
        if rows and legacy_sealer is None:
            raise StoreError(f"the store in {self.root} holds {len(rows)} plaintext record(s) of schema 1; "
                             "they are sealed on the first start with the station's keys: provision them first "
                             "(stationctl provision)", code="not_provisioned")
        for record_id, session_id, created_ns, manifest_text in rows:
            directory = self.records_dir / record_id
            manifest = json.loads(manifest_text)
            files = {}
            for entry in manifest.get("files", []):
                path = directory / entry["name"]
                if path.is_file():
                    files[entry["name"]] = path.read_bytes()
            sealed = legacy_sealer(record_id, manifest, files)
            self.sealed_path(record_id).unlink(missing_ok=True)  # a crash's half: its row never came
            self._write_sealed(record_id, sealed)
            summary = {"legacy": True, "files": len(files), "fingers": len(manifest.get("fingers", {})),
                       "exceptions": manifest.get("exceptions", {})}
            with self.transaction() as tx:
                tx.add_record(record_id, session_id, "application/vnd.station.legacy-record", sealed, summary)
                self.db.execute("UPDATE records SET created_ns=? WHERE record_id=?", (created_ns, record_id))
                self.db.execute("DELETE FROM records_v1 WHERE record_id=?", (record_id,))
                tx.journal("station.store.migrated", {"record": record_id, "from_schema": 1})
                tx.audit("system", "record.migrated", record_id=record_id, from_schema=1)
            shutil.rmtree(directory, ignore_errors=True)
        self.db.execute("DROP TABLE records_v1")

    def recover(self) -> list[str]:
        """Remove sealed files whose commit never reached the database, and temporaries.
        Only the writer runs this, under its lock: nobody else is committing."""
        if not self.writer:
            raise StoreError("recovery runs only in the process that holds the store's writer lock")
        with self._lock:
            known = {r[0] for r in self.db.execute("SELECT record_id FROM records")}
        removed = []
        for path in self.records_dir.iterdir():
            if path.is_dir():  # a schema-1 record's plaintext; migration has sealed the record
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(".") or path.name.removesuffix(SEALED_SUFFIX) not in known:
                path.unlink(missing_ok=True)
            else:
                continue
            removed.append(path.name)
        return removed

    # -- writing ----------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All or nothing, durable on exit (``synchronous=FULL``)."""
        if not self.writer:
            raise StoreError("this store was opened read-only")
        with self._lock:
            tx = Tx(self)
            try:
                self.db.execute("BEGIN IMMEDIATE")
                yield tx
                self.db.execute("COMMIT")
            except BaseException as exc:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                if isinstance(exc, (OSError, sqlite3.Error)):
                    raise StoreError(f"could not write to the record store in {self.root}: {exc}",
                                     retryable=True) from exc
                raise

    def _write_sealed(self, record_id: str, sealed: bytes) -> Path:
        path = self.sealed_path(record_id)
        if path.exists():
            raise StoreError(f"record {record_id} exists already")
        write_private(path, sealed, self.fsync)
        if self.fsync:
            fsync_dir(self.records_dir)
        return path

    def commit_record(self, record_id: str, session_id: str, content_type: str, sealed: bytes,
                      summary: dict[str, Any], closing: Callable[[Tx], None]) -> RecordRow:
        """Write the sealed record durably, then in one transaction add its row and run
        ``closing(tx)`` (close the session, destroy captures, journal, audit)."""
        try:
            path = self._write_sealed(record_id, sealed)
        except OSError as exc:
            self.sealed_path(record_id).with_name(f".{record_id}{SEALED_SUFFIX}.tmp").unlink(missing_ok=True)
            raise StoreError(f"could not commit record {record_id} to {self.root}: {exc}", retryable=True) from exc
        try:
            with self.transaction() as tx:
                tx.add_record(record_id, session_id, content_type, sealed, summary)
                closing(tx)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return self.get(record_id)

    # -- reading ----------------------------------------------------------------------------
    def sealed_path(self, record_id: str) -> Path:
        if not record_id or "/" in record_id or record_id.startswith("."):
            raise StoreError(f"bad record id {record_id!r}", code="bad_request")
        return self.records_dir / f"{record_id}{SEALED_SUFFIX}"

    def sealed(self, record_id: str) -> bytes:
        row = self.get(record_id)
        if row is None:
            raise StoreError(f"record {record_id} is not in the store", code="not_found")
        if row.purged_ns is not None:
            raise StoreError(f"record {record_id} was confirmed by central and purged from this station; "
                             "central holds it", code="purged")
        data = self.sealed_path(record_id).read_bytes()
        if hashlib.sha256(data).hexdigest() != row.sealed_sha256:
            raise StoreError(f"record {record_id}: the sealed file does not match its stored hash",
                             code="record_corrupt")
        return data

    def get(self, record_id: str) -> RecordRow | None:
        rows = self.records(where="record_id=?", params=(record_id,))
        return rows[0] if rows else None

    def records(self, *, where: str = "1", params: tuple = (), limit: int = -1) -> list[RecordRow]:
        with self._lock:
            rows = self.db.execute(
                "SELECT record_id, session_id, created_ns, content_type, sealed_bytes, sealed_sha256, summary, "
                f"delivered_ns, confirmed_ns, purged_ns FROM records WHERE {where} ORDER BY created_ns, record_id "
                "LIMIT ?", (*params, limit)).fetchall()
        return [RecordRow(*r[:6], json.loads(r[6]), *r[7:]) for r in rows]

    def record_ids(self) -> list[str]:
        return [r.record_id for r in self.records()]

    def verify(self, record_id: str) -> list[str]:
        """Problems with a committed record's sealed file (missing, wrong size or hash)."""
        try:
            self.sealed(record_id)
        except StoreError as exc:
            return [exc.message]
        except OSError as exc:
            return [f"{self.sealed_path(record_id)}: {exc.strerror}"]
        return []

    def counts(self) -> dict[str, int]:
        with self._lock:
            records = self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            sessions = dict(self.db.execute("SELECT status, COUNT(*) FROM sessions GROUP BY status").fetchall())
        return {"records": records, "open_sessions": sessions.get("open", 0)}

    def open_sessions(self) -> list[dict[str, Any]]:
        """The stored state of every open session, decrypted."""
        with self._lock:
            rows = self.db.execute("SELECT session_id, state FROM sessions WHERE status='open' "
                                   "ORDER BY started_ns").fetchall()
        return [json.loads(self.cipher.decrypt(blob, _session_aad(sid))) for sid, blob in rows]

    def session_outcome(self, session_id: str) -> tuple[str, str] | None:
        """(status, record id) of a session that ended, for a repeated finish or cancel."""
        with self._lock:
            row = self.db.execute("SELECT status, record_id FROM sessions WHERE session_id=?",
                                  (session_id,)).fetchone()
        return None if row is None else (row[0], row[1] or "")

    def capture(self, session_id: str, name: str) -> bytes:
        with self._lock:
            row = self.db.execute("SELECT data FROM captures WHERE session_id=? AND name=?",
                                  (session_id, name)).fetchone()
        if row is None:
            raise StoreError(f"session {session_id} has no capture {name}", code="capture_missing")
        return self.cipher.decrypt(row[0], _capture_aad(session_id, name))

    def print_jobs(self, states: str | tuple[str, ...] | list[str] | None = None) -> list[dict[str, Any]]:
        """Stored print jobs (``PrintJob.to_dict()``), in the order they were first saved."""
        where, params = "1", ()
        if isinstance(states, str):
            states = (states,)
        if states is not None:
            where, params = f"state IN ({','.join('?' * len(states))})", tuple(states)
        with self._lock:
            rows = self.db.execute(f"SELECT job FROM print_jobs WHERE {where} ORDER BY rowid", params).fetchall()
        return [json.loads(job) for job, in rows]

    def print_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT job FROM print_jobs WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def print_card(self, job_id: str) -> bytes:
        """The card data of a print job, decrypted."""
        with self._lock:
            row = self.db.execute("SELECT state, card FROM print_jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"no print job {job_id} in the store", code="not_found")
        state, blob = row
        if blob is None:
            raise StoreError(f"print job {job_id} ({state}) holds no card data: it is destroyed when a job ends; "
                             "to print it again, save the job with the card data", code="not_found")
        return self.cipher.decrypt(blob, _print_card_aad(job_id))

    def journal_since(self, seq: int, limit: int = 1000) -> list[JournalEntry]:
        with self._lock:
            rows = self.db.execute("SELECT seq, t_ns, topic, body FROM journal WHERE seq > ? ORDER BY seq LIMIT ?",
                                   (seq, limit)).fetchall()
        return [JournalEntry(s, t, topic, json.loads(body)) for s, t, topic, body in rows]

    def last_seq(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()[0]

    def audit_log(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT t_ns, actor, action, session_id, record_id, detail FROM audit "
                                   "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{"t_ns": t, "actor": a, "action": act, "session": s, "record": r, **json.loads(d)}
                for t, a, act, s, r, d in reversed(rows)]

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def close(self) -> None:
        with self._lock:
            self.db.close()
        self._release_writer_lock()
