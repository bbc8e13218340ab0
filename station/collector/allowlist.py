"""Which stations may deliver: one public key bundle per station, minus the revoked ones.

Central registers a station by dropping the bundle ``stationctl provision`` printed
(``Station-Id``, ``Key-Id``, ``Curve-Key`` and the two signing keys) into the stations
directory as ``<station id>.pub.pem``. The CURVE key admits the station's connection; the
signing keys check every record it sends. Revocation is a list of ids in the collector's
config; a reload (SIGHUP) applies both at once, to new connections (ZAP) and to every
message of connected ones.
"""
from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.utils.z85

from station.errors import StationError
from station.sealing import SealError, StationPublicKeys

log = logging.getLogger("collector.allowlist")
SUFFIX = ".pub.pem"


class Allowlist:
    def __init__(self, stations: dict[str, StationPublicKeys], revoked: set[str]):
        self._stations = stations
        self._revoked = revoked
        self._by_key = {zmq.utils.z85.decode(k.curve_key): sid for sid, k in stations.items()}

    @classmethod
    def load(cls, directory: Path, revoked: list[str]) -> "Allowlist":
        stations: dict[str, StationPublicKeys] = {}
        problems = []
        paths = sorted(Path(directory).glob(f"*{SUFFIX}")) if Path(directory).is_dir() else []
        for path in paths:
            try:
                keys = StationPublicKeys.from_pem(path.read_bytes())
            except (OSError, SealError) as exc:
                problems.append(f"{path}: {getattr(exc, 'message', exc)}")
                continue
            if path.name != f"{keys.station_id}{SUFFIX}":
                problems.append(f"{path}: holds station {keys.station_id}; name it {keys.station_id}{SUFFIX}")
            elif not keys.curve_key:
                problems.append(f"{path}: no 'Curve-Key:' line; export the bundle again with stationctl provision")
            else:
                stations[keys.station_id] = keys
        if problems:
            raise StationError("station allowlist: " + "; ".join(problems), code="bad_key")
        return cls(stations, set(revoked))

    def reload(self, directory: Path, revoked: list[str]) -> None:
        fresh = Allowlist.load(directory, revoked)
        self._stations, self._revoked, self._by_key = fresh._stations, fresh._revoked, fresh._by_key

    def __len__(self) -> int:
        return len(set(self._stations) - self._revoked)

    def allowed(self, station_id: str) -> bool:
        return station_id in self._stations and station_id not in self._revoked

    def station_for_key(self, public_key: bytes) -> str | None:
        """ZAP: the station a CURVE key belongs to, if it may connect."""
        station = self._by_key.get(bytes(public_key))
        return station if station is not None and self.allowed(station) else None

    def keys(self, station_id: str) -> StationPublicKeys:
        return self._stations[station_id]
