#!/usr/bin/env python3
"""Benchmark the finish of one enrollment: record built, signed, sealed and committed,
against a straight-line script doing the same work with the same libraries.

Ours is exactly what ``session.finish`` runs in the controller's worker (``Controller.
_cmd_finish``'s job): ``record.build`` reading the captures back from the store (AES-GCM
at rest, as the controller holds them) and WSQ-encoding the ten fingers, the ANSI/NIST
transaction and the record ZIP; ``sealing.seal`` (HPKE ML-KEM-768+X25519 to central, an
Ed25519 and an ML-DSA-65 signature over the header); ``RecordStore.commit_record`` with the
controller's own closing transaction (session closed, its captures destroyed, journal,
audit), fsync on, into a real store on disk.

Each run gets a fresh session built as the controller builds it, untimed: started, a
token portrait (record JPEG and chip image) and ten fingers (gray8 image and ISO template
each), every step one store transaction. Inputs are real: the record JPEG is the camera's
own token crop (``drivers/camera/portrait.token_portrait`` at the packaged ``token``
settings) of scikit-image's astronaut; the fingers are ``SyntheticFinger`` impressions,
256 x 288, quantised to 4 bits as the sensor sends them.

The baseline does the same work and nothing else, straight-line: Pillow WSQ of the ten
arrays in memory, the ANSI/NIST transaction as a minimal byte concatenation of the same
records and fields (no validation, no ZIP, no manifest), one HPKE ``Suite.encrypt``, one
Ed25519 and one ML-DSA-65 signature over the ciphertext's SHA-256, the blob written to a
temporary file, fsynced, renamed, its directory fsynced, and one SQLite insert (WAL,
``synchronous=FULL``, as the store) of its id, size and hash.

Ours and the baseline alternate run by run (after a few warm-up runs of each) so both
see the same disk and CPU weather; medians are reported. ``breakdown_ms`` splits ours by
timing wrappers around ``biometrics.wsq_encode``, ``nist.encode`` and the capture reads
(microseconds of cost). Goals: ``per_enrollment_ms`` <= 150 and ``ratio`` <= 1.2.

Prints one JSON object on stdout; progress on stderr. About 30 s with the defaults.

    .venv/bin/python benchmarks/record_assembly.py [--runs 30] [--dir /var/tmp]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import wsq  # noqa: E402,F401  (registers the WSQ codec with Pillow)
import yaml  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as sample_images  # noqa: E402

from drivers.camera.detector import make_detector  # noqa: E402
from drivers.camera.portrait import token_portrait  # noqa: E402
from drivers.camera.quality import FaceAnalyzer  # noqa: E402
from drivers.fingerprint import protocol as fp  # noqa: E402
from drivers.fingerprint.prints import SyntheticFinger  # noqa: E402
from filesystems import fs_type  # noqa: E402
from stopwatch import Stopwatch  # noqa: E402
from station import biometrics, config, demographics, enrollment, keyring, nist, record, sealing  # noqa: E402
from station.controller import Controller  # noqa: E402
from station.demo import make_applicant  # noqa: E402
from station.enrollment import Finger, Photo, Session  # noqa: E402
from station.store import RecordStore  # noqa: E402
from common import ms, progress_for  # noqa: E402

STATION_ID = "VN-HP-0001"
DESTINATION = "VN-C06"
OPERATOR = "bench-officer"
APPLICANT_SEED = 4242
WARMUP_RUNS = 3
GOAL_MS = 150.0
GOAL_RATIO = 1.2
DEVICES = {"cam0": {"kind": "camera", "source": "emulated camera", "width": 1280, "height": 720},
           "fp0": {"kind": "fingerprint", "port": "/dev/ttyUSB0", "baud": 115200, "packet_size": 128}}


progress = progress_for("record_assembly")


# -- inputs ----------------------------------------------------------------------------------
def token_jpeg() -> tuple[bytes, bytes, int, int]:
    """The camera's record JPEG and chip image of the astronaut, as the capture returns them."""
    camera = yaml.safe_load((ROOT / "config" / "camera.yaml").read_text())
    image = cv2.cvtColor(sample_images.astronaut(), cv2.COLOR_RGB2BGR)
    report = FaceAnalyzer(camera["quality"], make_detector(camera["detector"])).analyze(image)
    if report.face is None:
        raise RuntimeError("no face found on the astronaut: the token crop needs one")
    token = token_portrait(image, report.eyes or report.face.eyes_or_estimate(), camera["token"])
    return token.record_jpeg, token.chip_image, token.width, token.height


def finger_images() -> dict[int, np.ndarray]:
    """Ten impressions as the sensor delivers them: 4-bit grey, unpacked to uint8."""
    images = {}
    for position in range(1, 11):
        impression = SyntheticFinger(APPLICANT_SEED, position).impression(1)
        images[position] = fp.unpack_image(fp.pack_image(fp.quantize_image(impression)))
    return images


class Inputs:
    def __init__(self) -> None:
        self.jpeg, self.chip, self.token_width, self.token_height = token_jpeg()
        self.images = finger_images()
        self.quality = {p: biometrics.assess(image) for p, image in self.images.items()}
        self.applicant = demographics.validate(make_applicant(random.Random(1), 1))
        self.policy = config.load("enrollment", None, Path(tempfile.gettempdir()) / "no-etc")


# -- ours: the controller's finish job on a session held as the controller holds it -----------
def save(store: RecordStore, session: Session, topic: str, body: dict, action: str,
         captures: dict[str, bytes] | None = None) -> None:
    """One session transition, stored by the controller's own code (``_write_session`` does
    not touch the controller instance, so it is called unbound rather than copied)."""
    with store.transaction() as tx:
        Controller._write_session(None, tx, session, topic, body, action, captures)


def open_session(store: RecordStore, inputs: Inputs) -> Session:
    """A complete session ready to finish: portrait and ten fingers, captures encrypted in the store."""
    now = time.time_ns()
    session = enrollment.start(secrets.token_hex(8), OPERATOR, inputs.applicant, inputs.policy, now)
    save(store, session, "station.enrollment.session.started", {"operator": OPERATOR}, "session.start")
    photo = Photo("cam0", 0.93, True, False, "icao", inputs.token_width, inputs.token_height, time.time_ns(),
                  ("portrait.jpg", "portrait-chip.jp2"))
    session = enrollment.portrait_taken(session, photo, time.time_ns())
    save(store, session, "station.enrollment.portrait.captured", {"score": 0.93, "passed": True, "forced": False},
         "session.portrait", captures={"portrait.jpg": inputs.jpeg, "portrait-chip.jp2": inputs.chip})
    for position, image in inputs.images.items():
        quality = inputs.quality[position]
        finger = Finger(position, time.time_ns(), scanner="fp0", nfiq2=quality.nfiq2, minutiae=quality.minutiae,
                        attempts=1, attempt_nfiq2=(quality.nfiq2,), width=image.shape[1], height=image.shape[0])
        session = enrollment.finger_taken(session, finger, time.time_ns())
        save(store, session, "station.enrollment.finger.captured",
             {"position": position, "nfiq2": quality.nfiq2, "force_captured": False}, "session.finger",
             captures={finger.image: image.tobytes(), finger.template: quality.template})
    return session


def finish_ours(store: RecordStore, keys: keyring.Keyring, session: Session, watch: Stopwatch) -> dict[str, Any]:
    """``Controller._cmd_finish``'s job, step for step, timed."""
    sid, record_id = session.session_id, secrets.token_hex(16)
    capture = watch.wrap("capture", lambda name: store.capture(sid, name))
    watch.reset()
    started = time.perf_counter()
    now = time.time_ns()
    bundle = record.build(session, capture, record_id=record_id, station_id=keys.station_id,
                          destination=DESTINATION, devices=DEVICES, now_ns=now)
    built = time.perf_counter()
    sealed = sealing.seal(bundle.data, record_id=record_id, content_type=record.CONTENT_TYPE,
                          signer=keys.signer, central=keys.central, created_ns=now)
    sealed_at = time.perf_counter()
    closed = enrollment.finished(session, record_id, time.time_ns())
    summary = bundle.summary()
    figures = {"record": record_id, "fingers": summary["fingers"], "exceptions": summary["exceptions"],
               "force_captured": summary["force_captured"], "sealed_bytes": len(sealed)}
    store.commit_record(record_id, sid, record.CONTENT_TYPE, sealed, summary,
                        lambda tx: Controller._write_session(None, tx, closed, "station.enrollment.completed",
                                                             figures, "session.finish"))
    done = time.perf_counter()
    spent = watch.spent
    return {"total": done - started, "capture": spent.get("capture", 0.0), "wsq": spent.get("wsq", 0.0),
            "an2": spent.get("an2", 0.0),
            "build_other": built - started - sum(spent.get(k, 0.0) for k in ("capture", "wsq", "an2")),
            "seal": sealed_at - built, "commit": done - sealed_at, "record_bytes": len(sealed)}


# -- the baseline: the same work, straight-line -----------------------------------------------
FS, GS, RS, US = b"\x1c", b"\x1d", b"\x1e", b"\x1f"


def an2_record(kind: int, fields: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(GS + b"%d.%03d:" % (kind, number) + value for number, value in fields) + FS
    head = b"%d.001:" % kind
    length = len(head) + len(body)
    length += len(str(length + len(str(length))))
    return head + str(length).encode() + body


def an2_concatenated(applicant: dict, jpeg: bytes, width: int, height: int, wsqs: dict[int, bytes],
                     nfiq2: dict[int, int], record_id: str, day: bytes, gmt: bytes) -> bytes:
    """The same records and fields as ``nist.encode`` writes, joined without any checking."""
    type2 = [(2, b"0"), (800, b"VNCCCD" + US + b"1.0")] + sorted(
        (nist.TYPE2_FIELDS[k].number, (v.replace("-", "") if k != "date_of_birth" or len(v) > 4 else v + "0000")
         .encode()) for k, v in applicant.items())
    type10 = [(2, b"1"), (3, b"FACE"), (4, STATION_ID.encode()), (5, day), (6, b"%d" % width), (7, b"%d" % height),
              (8, b"0"), (9, b"1"), (10, b"1"), (11, b"JPEGB"), (12, b"SRGB"), (13, b"14"), (999, jpeg)]
    records = [an2_record(2, type2), an2_record(10, type10)]
    content = [b"1" + US + b"%d" % (2 + len(wsqs)), b"2" + US + b"0", b"10" + US + b"1"]
    for idc, (position, data) in enumerate(sorted(wsqs.items()), start=2):
        content.append(b"14" + US + b"%d" % idc)
        records.append(an2_record(14, [
            (2, b"%d" % idc), (3, b"0"), (4, STATION_ID.encode()), (5, day), (6, b"256"), (7, b"288"), (8, b"1"),
            (9, b"500"), (10, b"500"), (11, b"WSQ20"), (12, b"8"), (13, b"%d" % position),
            (24, b"%d" % position + US + b"%d" % nfiq2[position] + US + b"0101" + US + b"57"), (999, data)]))
    type1 = [(2, b"0500"), (3, RS.join(content)), (4, b"CCCDENROL"), (5, day), (7, DESTINATION.encode()),
             (8, STATION_ID.encode()), (9, record_id.encode()), (11, b"19.69"), (12, b"19.69"),
             (13, b"VNCCCD" + US + b"1.0"), (14, gmt), (15, b"3" + US + b"UTF-8")]
    return an2_record(1, type1) + b"".join(records)


class Baseline:
    """What a minimal script holds: raw keys loaded once, a records directory, one database."""

    def __init__(self, root: Path, keys_dir: Path, keys: keyring.Keyring, inputs: Inputs):
        self.records = root / "records"
        self.records.mkdir(parents=True)
        pem = (keys_dir / keyring.STATION_KEY).read_bytes()
        loaded = [serialization.load_pem_private_key(block.group(0), None)
                  for block in re.finditer(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----\n", pem, re.S)]
        self.ed = next(k for k in loaded if isinstance(k, ed25519.Ed25519PrivateKey))
        self.ml = next(k for k in loaded if isinstance(k, mldsa.MLDSA65PrivateKey))
        self.central = keys.central.hpke_key
        self.inputs = inputs
        self.db = sqlite3.connect(root / "baseline.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE records (record_id TEXT PRIMARY KEY, sealed_bytes INTEGER, sealed_sha256 TEXT)")
        self.records_fd = os.open(self.records, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        os.close(self.records_fd)
        self.db.close()

    def run(self) -> dict[str, float]:
        inputs = self.inputs
        record_id = secrets.token_hex(16)
        t0 = time.perf_counter()
        wsqs = {}
        for position, image in inputs.images.items():
            buffer = io.BytesIO()
            Image.fromarray(image, mode="L").save(buffer, "WSQ")
            wsqs[position] = buffer.getvalue()
        t1 = time.perf_counter()
        gmt = time.strftime("%Y%m%d%H%M%SZ", time.gmtime()).encode()
        an2 = an2_concatenated(inputs.applicant, inputs.jpeg, inputs.token_width, inputs.token_height, wsqs,
                               {p: q.nfiq2 for p, q in inputs.quality.items()}, record_id, gmt[:8], gmt)
        t2 = time.perf_counter()
        ciphertext = sealing.SUITE.encrypt(an2, self.central, info=record_id.encode())
        digest = hashlib.sha256(ciphertext).digest()
        ed_sig, ml_sig = self.ed.sign(digest), self.ml.sign(digest)
        blob = digest + struct.pack(">I", len(ciphertext)) + ed_sig + ml_sig + ciphertext
        t3 = time.perf_counter()
        path, tmp = self.records / record_id, self.records / f".{record_id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        os.fsync(self.records_fd)
        self.db.execute("INSERT INTO records VALUES (?,?,?)", (record_id, len(blob), hashlib.sha256(blob).hexdigest()))
        t4 = time.perf_counter()
        return {"total": t4 - t0, "wsq": t1 - t0, "an2": t2 - t1, "seal": t3 - t2, "commit": t4 - t3,
                "record_bytes": len(blob)}


# -- the run ---------------------------------------------------------------------------------
def median_ms(rows: list[dict[str, float]], key: str) -> float:
    return ms(statistics.median(r[key] for r in rows))


def run(runs: int, top: Path, cpu: int | None) -> dict[str, Any]:
    progress("preparing inputs (token crop, ten impressions, NFIQ 2)")
    inputs = Inputs()
    central_key, central_pub = keyring.write_central_pair(top / "central")
    keyring.provision(top / "keys", STATION_ID, central_pub.read_bytes())
    keys = keyring.load(top / "keys")
    store = RecordStore(top / "store", cipher=keys.capture, fsync=True)
    baseline = Baseline(top / "baseline", top / "keys", keys, inputs)
    watch = Stopwatch()
    originals = (biometrics.wsq_encode, nist.encode)
    biometrics.wsq_encode = watch.wrap("wsq", biometrics.wsq_encode)
    nist.encode = watch.wrap("an2", nist.encode)
    ours_rows, base_rows = [], []
    try:
        progress(f"{WARMUP_RUNS} warm-up and {runs} measured runs of each, alternating")
        for index in range(WARMUP_RUNS + runs):
            session = open_session(store, inputs)
            order = (("ours", lambda: finish_ours(store, keys, session, watch)), ("baseline", baseline.run))
            for name, one in order if index % 2 == 0 else reversed(order):
                result = one()
                if index >= WARMUP_RUNS:
                    (ours_rows if name == "ours" else base_rows).append(result)
        last = store.records()[-1]
        sealed = store.sealed(last.record_id)
        _, plaintext = sealing.open_sealed(sealed, sealing.CentralPrivateKey.from_pem(central_key.read_bytes()),
                                           keys.signer.public())
        manifest, an2 = record.unpack(plaintext)
        problems = []
        if len(manifest["fingers"]) != 10 or manifest["portrait"] is None:
            problems.append("the last record does not hold ten fingers and a portrait")
        counts = store.counts()
        if counts["records"] != WARMUP_RUNS + runs or counts["open_sessions"]:
            problems.append(f"store counts after the run: {counts}")
        leftover = store.db.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
        if leftover:
            problems.append(f"{leftover} captures left in the store after every session finished")
    finally:
        biometrics.wsq_encode, nist.encode = originals
        baseline.close()
        store.close()

    paired = statistics.median(o["total"] / b["total"] for o, b in zip(ours_rows, base_rows))
    ours = statistics.median(r["total"] for r in ours_rows)
    base = statistics.median(r["total"] for r in base_rows)
    p90 = statistics.quantiles([r["total"] for r in ours_rows], n=10)[-1]
    ratio = ours / base
    kind = fs_type(top)
    if kind in ("tmpfs", "ramfs"):
        problems.append(f"{top} is on {kind}: fsync costs nothing there; use --dir on a disk")
    goals = {"per_enrollment_ms<=150": ms(ours) <= GOAL_MS, "ratio<=1.2": ratio <= GOAL_RATIO}
    return {
        "benchmark": "record_assembly",
        "per_enrollment_ms": ms(ours),
        "baseline_ms": ms(base),
        "ratio": round(ratio, 3),
        # the median of each run's ratio to its neighbouring baseline run: steadier when the
        # machine's speed drifts during the run
        "paired_ratio": round(paired, 3),
        "p90_ms": ms(p90),
        "baseline_p90_ms": ms(statistics.quantiles([r["total"] for r in base_rows], n=10)[-1]),
        "runs": runs,
        "record_bytes": ours_rows[-1]["record_bytes"],
        "baseline_record_bytes": base_rows[-1]["record_bytes"],
        "an2_bytes": len(an2),
        "breakdown_ms": {k: median_ms(ours_rows, k) for k in ("capture", "wsq", "an2", "build_other", "seal",
                                                                "commit")},
        "baseline_breakdown_ms": {k: median_ms(base_rows, k) for k in ("wsq", "an2", "seal", "commit")},
        "baseline_an2": "minimal byte concatenation of the same records and fields (not nist.encode)",
        "goals": goals, "goals_met": all(goals.values()),
        "filesystem": kind,
        "cpu": cpu,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="measured runs of each (default 30)")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary store goes (a disk, not tmpfs)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin this process to its first allowed CPU")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    cpu = None
    if not args.no_pin:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # both sides on one core: no migrations mid-run
    top = Path(tempfile.mkdtemp(prefix="recasm-", dir=args.dir))
    try:
        print(json.dumps(run(args.runs, top, cpu), indent=2))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
