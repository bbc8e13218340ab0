"""Pieces of records still arriving, kept on disk so a broken link resumes where it broke.

One file per (station, record, content hash): a resend of the same record continues it, a
record re-sealed with other content starts a new one. The spool holds sealed bytes only
(no plaintext ever reaches the collector), is never a durability promise (a record is acked
only once stored), and a piece that does not start where the file ends is not appended: the
station is told where the file ends instead.
"""
from __future__ import annotations

import os
from pathlib import Path


class Spool:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, station: str, record: str, sha256: str) -> Path:
        return self.directory / station / f"{record}.{sha256[:16]}.part"

    def held(self, station: str, record: str, sha256: str) -> int:
        try:
            return self._path(station, record, sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, station: str, record: str, sha256: str, offset: int, data: bytes) -> int:
        """Append ``data`` if it starts where the spool ends; returns the bytes held after."""
        path = self._path(station, record, sha256)
        held = self.held(station, record, sha256)
        if offset != held:
            return held
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return held + len(data)

    def read(self, station: str, record: str, sha256: str) -> bytes:
        return self._path(station, record, sha256).read_bytes()

    def discard(self, station: str, record: str, sha256: str) -> None:
        self._path(station, record, sha256).unlink(missing_ok=True)
