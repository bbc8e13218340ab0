"""Record building, pure: a finished session and its captures in, one record bundle out.

The bundle is what gets signed and sealed: a ZIP (stored, not compressed: the images are
compressed already) holding ``record.an2``, the ANSI/NIST-ITL 1-2011 transaction, and
``manifest.json``, how it was taken: policy, attempts, force-captured flags, devices,
operator, timings, software version, and the transaction's hash. Demographics live in the
transaction's Type-2 record only, never twice. After central decrypts a record, any unzip
tool shows its two parts.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Callable, Mapping

import numpy as np

from station import biometrics, nist
from station.enrollment import Session
from station.errors import StationError

CONTENT_TYPE = "application/vnd.station.record+zip"
MANIFEST_VERSION = 1
AN2_NAME, MANIFEST_NAME = "record.an2", "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so equal content gives equal bytes


class RecordError(StationError):
    code = "bad_record"


@dataclass(frozen=True)
class Bundle:
    an2: bytes
    manifest: dict[str, Any]
    data: bytes  # the ZIP that is signed and sealed

    def summary(self) -> dict[str, Any]:
        """What the store keeps in the clear about the record: ids, counts, figures."""
        fingers = self.manifest["fingers"]
        return {
            "station": self.manifest["station"], "operator": self.manifest["operator"],
            "fingers": sum(1 for f in fingers if not f.get("exception")),
            "exceptions": {str(f["position"]): f["exception"] for f in fingers if f.get("exception")},
            "force_captured": [f["position"] for f in fingers if f.get("force_captured")],
            "portrait_score": (self.manifest["portrait"] or {}).get("score"),
            "bundle_bytes": len(self.data),
        }


def software_version() -> str:
    try:
        return f"station {metadata.version('station')}"
    except metadata.PackageNotFoundError:
        return "station (unpackaged)"


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def build(session: Session, capture: Callable[[str], bytes], *, record_id: str, station_id: str,
          destination: str, devices: Mapping[str, Any], now_ns: int,
          wsq_encode: Callable[[np.ndarray], bytes] = biometrics.wsq_encode) -> Bundle:
    """The record of a complete session. ``capture(name)`` returns one stored capture
    (portrait JPEG, finger gray8 pixels); fingers are WSQ-encoded at 500 ppi by
    ``wsq_encode`` (the controller's may have the encoding ready, see ``wsq_ahead``)."""
    faces = []
    for kind, photo in (("portrait", session.portrait), ("exception", session.exception_photo)):
        if photo is not None:
            faces.append(nist.FaceImage(jpeg=capture(photo.images[0]), width=photo.width, height=photo.height,
                                        captured=_utc(photo.captured_ns), kind=kind))
    fingers = []
    for position in sorted(session.fingers):
        finger = session.fingers[position]
        if finger.exception:
            fingers.append(nist.FingerImpression(position, _utc(finger.captured_ns), exception=finger.exception))
            continue
        pixels = np.frombuffer(capture(finger.image), np.uint8)
        if pixels.size != finger.width * finger.height:
            raise RecordError(f"finger {position}: image has {pixels.size} pixels, not "
                              f"{finger.width} x {finger.height}")
        wsq = wsq_encode(pixels.reshape(finger.height, finger.width))
        fingers.append(nist.FingerImpression(position, _utc(finger.captured_ns), wsq=wsq, width=finger.width,
                                             height=finger.height, ppi=finger.resolution_ppi, nfiq2=finger.nfiq2))
    an2 = nist.encode(nist.Transaction(record_id=record_id, station_id=station_id, destination=destination,
                                       created=_utc(now_ns), demographics=session.applicant, faces=faces,
                                       fingers=fingers))
    manifest = {
        "manifest_version": MANIFEST_VERSION, "record": record_id, "station": station_id,
        "session": session.session_id, "operator": session.operator, "software": software_version(),
        "started_ns": session.started_ns, "finished_ns": now_ns, "policy": dict(session.policy),
        "portrait": _photo(session.portrait), "exception_photo": _photo(session.exception_photo),
        "fingers": [_finger(session.fingers[p]) for p in sorted(session.fingers)],
        "devices": dict(devices),
        "an2": {"name": AN2_NAME, "bytes": len(an2), "sha256": hashlib.sha256(an2).hexdigest()},
    }
    return Bundle(an2, manifest, pack(manifest, an2))


def _photo(photo: Any) -> dict[str, Any] | None:
    if photo is None:
        return None
    return {"camera": photo.camera, "score": photo.score, "passed": photo.passed, "forced": photo.forced,
            "mode": photo.mode, "width": photo.width, "height": photo.height, "captured_ns": photo.captured_ns}


def _finger(finger: Any) -> dict[str, Any]:
    return {**finger.summary(), "scanner": finger.scanner, "captured_ns": finger.captured_ns,
            "width": finger.width, "height": finger.height, "resolution_ppi": finger.resolution_ppi}


def pack(manifest: Mapping[str, Any], an2: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in ((MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode()),
                           (AN2_NAME, an2)):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o600 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(manifest, transaction) of a decrypted bundle, checked against the manifest's hash."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            manifest = json.loads(archive.read(MANIFEST_NAME))
            an2 = archive.read(AN2_NAME)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise RecordError(f"not a station record bundle: {exc}") from exc
    if hashlib.sha256(an2).hexdigest() != manifest.get("an2", {}).get("sha256"):
        raise RecordError("the transaction does not match the manifest's hash")
    return manifest, an2


def pack_legacy(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> bytes:
    """A schema-1 record (plaintext files and manifest) as one bundle, to seal on migration."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo(MANIFEST_NAME, _ZIP_TIME), json.dumps(manifest, sort_keys=True))
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(f"files/{name}", _ZIP_TIME), data)
    return buffer.getvalue()
