"""The durable record store: SQLite in WAL mode plus one directory of files per record.

A record is committed before the operator is told "done": every file is written to a
temporary name, fsynced, renamed, and its directory fsynced; only then is the row inserted
in a transaction with ``synchronous=FULL``. A crash at any point leaves either no row (and
stray files that ``recover()`` removes) or a complete record. Files and directories are
private to the station user (0600 / 0700).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.errors import StationError

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id   TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    created_ns  INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'committed',
    manifest    TEXT NOT NULL,
    delivered_ns INTEGER,
    purged_ns   INTEGER
);
CREATE INDEX IF NOT EXISTS records_state ON records(state);
"""


class StoreError(StationError):
    code = "store_error"


@dataclass(frozen=True)
class StoredRecord:
    record_id: str
    session_id: str
    created_ns: int
    state: str
    manifest: dict[str, Any]
    directory: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes, fsync: bool) -> None:
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


class RecordStore:
    def __init__(self, root: Path, *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.records_dir = self.root / "records"
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)
            self.db = sqlite3.connect(self.root / "store.db", isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the record store in {self.root}: {exc}") from exc
        self.recover()

    def commit(self, record_id: str, session_id: str, manifest: dict[str, Any],
               files: dict[str, bytes]) -> StoredRecord:
        """Write the record's files and row durably; returns only once both are on disk."""
        directory = self.records_dir / record_id
        entries = []
        try:
            directory.mkdir(mode=0o700)
            for name, data in files.items():
                if "/" in name or name.startswith("."):
                    raise StoreError(f"bad file name in record {record_id}: {name!r}")
                _write_private(directory / name, data, self.fsync)
                entries.append({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            if self.fsync:
                _fsync_dir(directory)
                _fsync_dir(self.records_dir)
            manifest = {**manifest, "files": entries}
            created = time.time_ns()
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute(
                    "INSERT INTO records(record_id, session_id, created_ns, manifest) VALUES (?,?,?,?)",
                    (record_id, session_id, created, json.dumps(manifest, sort_keys=True)),
                )
        except FileExistsError:
            raise StoreError(f"record {record_id} exists already") from None
        except (OSError, sqlite3.Error) as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise StoreError(f"could not commit record {record_id} to {self.root}: {exc}",
                             retryable=True) from exc
        return StoredRecord(record_id, session_id, created, "committed", manifest, directory)

    def get(self, record_id: str) -> StoredRecord | None:
        row = self.db.execute(
            "SELECT record_id, session_id, created_ns, state, manifest FROM records WHERE record_id=?",
            (record_id,),
        ).fetchone()
        if row is None:
            return None
        return StoredRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), self.records_dir / row[0])

    def verify(self, record_id: str) -> list[str]:
        """Problems with a committed record's files (missing, wrong size or hash); [] when intact."""
        record = self.get(record_id)
        if record is None:
            return [f"record {record_id} is not in the store"]
        problems = []
        for entry in record.manifest.get("files", []):
            path = record.directory / entry["name"]
            try:
                data = path.read_bytes()
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                problems.append(f"{path}: content does not match its manifest hash")
        return problems

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM records GROUP BY state").fetchall())

    def record_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT record_id FROM records ORDER BY created_ns")]

    def recover(self) -> list[str]:
        """Remove directories of records whose commit never reached the database."""
        known = set(self.record_ids())
        orphans = [p for p in self.records_dir.iterdir() if p.is_dir() and p.name not in known]
        for path in orphans:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in orphans]

    def close(self) -> None:
        self.db.close()
