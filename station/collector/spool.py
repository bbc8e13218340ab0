"""Pieces of records still arriving, kept on disk so a broken link resumes where it broke.

One file per (station, record, content hash): a resend of the same record continues it, a
record re-sealed with other content starts a new one. The spool holds sealed bytes only
(no plaintext ever reaches the collector), is never a durability promise (a record is acked
only once stored), and a piece that does not start where the file ends is not appended: the
station is told where the file ends instead.

Bounded two ways, so no station can fill central's disk: a station's pieces together may
not pass ``max_station_bytes`` (a piece that would is refused, retryable: the station sends
it again once its records are stored), and ``sweep`` removes pieces nobody has added to for
a long time (a station that gave up, or was re-imaged). Losing a piece costs only its
resend: the station is told the record starts again at 0.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from station.errors import StationError

PART_SUFFIX = ".part"


class SpoolFull(StationError):
    code = "spool_full"
    retryable = True


class Spool:
    def __init__(self, directory: Path, max_station_bytes: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_station_bytes = max_station_bytes

    def _path(self, station: str, record: str, sha256: str) -> Path:
        return self.directory / station / f"{record}.{sha256[:16]}{PART_SUFFIX}"

    def station_bytes(self, station: str) -> int:
        """What ``station``'s unfinished records take in the spool."""
        try:
            with os.scandir(self.directory / station) as entries:
                return sum(e.stat().st_size for e in entries if e.name.endswith(PART_SUFFIX))
        except FileNotFoundError:
            return 0

    def sweep(self, older_than_s: float, now: float | None = None) -> tuple[int, int]:
        """Remove pieces not added to for ``older_than_s``; (files, bytes) removed."""
        cutoff = (time.time() if now is None else now) - older_than_s
        files = size = 0
        for path in self.directory.glob(f"*/*{PART_SUFFIX}"):
            try:
                info = path.stat()
                if info.st_mtime < cutoff:
                    path.unlink()
                    files, size = files + 1, size + info.st_size
            except FileNotFoundError:  # finished and discarded meanwhile
                continue
        return files, size

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
        if self.max_station_bytes is not None and self.station_bytes(station) + len(data) > self.max_station_bytes:
            raise SpoolFull(f"station {station}'s unfinished records fill its share of the collector's spool "
                            f"({self.max_station_bytes} bytes); send this piece again once records are stored")
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
