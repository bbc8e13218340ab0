#!/usr/bin/env python3
"""Chaos soak: a whole station and central's collector through a simulated day of faults,
then a reconciliation of everything the station said it did.

Every program runs as it does under systemd, one OS process each on ipc sockets: the
fingerprint sensor emulator on a pty and the camera emulator (MJPEG into a FIFO, read by
``station-camerad`` as a ``video`` source), ``station-fingerprintd``, ``station-camerad``,
``station-controller``, ``station-uplink``, and central's ``station-collector serve`` on
loopback TCP with CURVE. Each daemon gets a notify socket of its own (``NOTIFY_SOCKET``,
``WATCHDOG_USEC`` = ``WatchdogSec`` 10 s) that this script binds, so every ``READY=1`` and
``WATCHDOG=1`` is timestamped and attributed to the sending PID (``SO_PASSCRED``). A
daemon that dies is started again after 1-2 s, as ``Restart=on-failure`` with
``RestartSec`` would; a death the soak did not cause is counted as ``unexpected_exits``.

The station's state directory is a small tmpfs (``--state-mb``, 64 MB) mounted in a
private mount namespace: the script re-runs itself under ``unshare --mount --propagation
private`` (root, or CAP_SYS_ADMIN), so the mount vanishes with the soak's process tree.
The controller's ``store.min_free_mb`` is set to ``--floor-mb`` (16 MB) and delivered
records are purged once central confirms them (``retention_days: 0``), so a day fits.

The day: ``--applicants`` (400) applicants, each enrolled by this script playing the
officer (``Officer``): portrait, each finger of the packaged policy (every seventh
applicant has an amputated last finger: exception ``XX`` and the exception photo),
review, finish. Meanwhile:

- faults from a schedule (``schedule()``, pure: seed + applicants + rates -> which fault
  at which applicant and how long; a day draws each kind at its rate per applicant, at
  least once each; ``--quick`` has each kind exactly once, never on the first or last
  applicant):
  ``kill_camerad``, ``kill_fingerprintd``, ``kill_controller``, ``kill_uplink``,
  ``kill_collector`` (SIGKILL, restarted after 1-2 s), ``scanner_unplug`` (the sensor
  emulator's ``unplug S``), ``camera_stall`` (camera emulator ``stall``, later
  ``resume``), ``collector_down`` (SIGTERM, started again later), ``disk_low`` (a ballast
  file leaves half the floor free: new sessions are refused ``disk_low``) and
  ``disk_full`` (ballast until ENOSPC: store writes fail with a retryable
  ``store_error``), each ended after its duration (resume, restart, ballast removed)
  while enrollment goes on. A fault is injected at a random moment within its applicant,
  one at a time per resource (the collector, the disk, the camera, the scanner); the
  officer waits for the chaos when it lags by more than two applicants;
- malformed traffic in the background (``malformed_request()``): random bytes, damaged
  headers, wrong types, unknown commands, arguments outside every schema, deep nesting,
  200 KB frames, stray payload frames, expired deadlines, and now and then a frame over
  the 256 KiB limit, sent to every daemon's command socket. None of it is a valid request
  that changes state (session ids are random, capture arguments are out of range), so it
  can only disturb the station by being handled badly.

The officer retries: a retryable error, a driver offline, a timeout (a request lost with a
killed controller) -> wait, ask ``session.get`` where the session is, and do the next step;
a ``session.start`` whose answer was lost -> ``session.list`` and adopt the open session;
after ``--give-up-s`` of failures on one applicant the session is cancelled (audited) and
the applicant counted ``given_up``.

At the end, with every fault over and central's backlog drained and confirmed, the
reconciliation (from the station's store, central's storage and the collector's
``watch``):

- ``lost``: records the officer was told are done (or the store holds) that central does
  not hold intact: its index row, its file's SHA-256 equal to the station's, opened with
  central's private key (``sealing.open_sealed``: both signatures, decryption) and naming
  its own record id; ``duplicated``: a record id stored more than once at central (rows or
  files), or an applicant with two records;
- ``events``: ``station-collector watch --station ID`` must give seq 1..N, N the
  station's last journal seq, no gap, no duplicate, in order, each with the station
  journal's topic and body;
- ``sessions_lost_unaudited``: every session the audit log shows started, or the officer
  saw, must be finished with its record, or cancelled / expired with its audit line;
  a session still open at the end, or one without its audit line, counts;
- ``max_watchdog_gap_s``: per daemon the longest time without ``WATCHDOG=1`` within one
  process lifetime (from ``READY=1`` to its death; gaps across a kill and restart do not
  count); goal below ``--watchdog-goal`` x ``WatchdogSec`` (one half);
- ``rss_growth_mb``: per daemon the largest VmRSS growth within one process lifetime,
  from the first sample after ``--warmup-s`` to its last; goal below ``--rss-bound-mb``.

Prints one JSON object on stdout (progress on stderr) and writes it, with the fault log,
to ``WORKDIR/soak.json``; exits 0 when ``goal_met``. ``--quick``: 12 applicants, two
finger positions, short faults, every kind exactly once (about a minute).

    .venv/bin/python benchmarks/soak.py --quick
    .venv/bin/python benchmarks/soak.py --applicants 400 --seed 7      # ~40 min
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import yaml  # noqa: E402
import zmq  # noqa: E402

from drivers.emulation import send_command as sensor_command  # noqa: E402
from station import config, keyring, record, sealing  # noqa: E402
from station.bus import MAX_REQUEST_BYTES, CommandClient  # noqa: E402
from station.demo import make_applicant  # noqa: E402
from station.errors import CommandError, StationError  # noqa: E402
from station.outbox import Outbox  # noqa: E402
from station.paths import Paths  # noqa: E402
from station.programs import Program, program_env, scripts_dir  # noqa: E402
from station.store import RecordStore  # noqa: E402
from common import progress_for  # noqa: E402

BIN = scripts_dir()
STATION_ID = "VN-HP-0001"
OPERATOR = "soak-officer"
NAMESPACE_MARK = "STATION_SOAK_NAMESPACE"

WATCHDOG_SEC = 10.0  # the units' WatchdogSec; the daemons ping every quarter of it
# The issue's goal: every gap below half of WatchdogSec (station/sdnotify.py pings every
# quarter, so a main loop may be late by a quarter before the goal is missed).
WATCHDOG_GOAL_FRACTION = 0.5
RESTART_S = (1.0, 2.0)  # RestartSec, drawn per restart
READY_TIMEOUT_S = 90.0
CALL_TIMEOUT_S = 3.0  # session.get, list, start, cancel: answered at once by a live controller
STEP_TIMEOUT_S = 12.0  # a capture or the finish; a request lost with a killed controller costs this
DRAIN_TIMEOUT_S = 240.0
RSS_EVERY_S = 2.0
# Every child is killed if the thread that started it dies (a soak killed by a timeout leaves
# no daemon behind); hence only the main and supervisor threads start processes.
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
DAEMONS = ("cam0", "fp0", "controller", "uplink", "collector")
PROGRAM_NAMES = {"cam0": "station-camerad", "fp0": "station-fingerprintd", "controller": "station-controller",
                 "uplink": "station-uplink", "collector": "station-collector"}


progress = progress_for("soak")


# == the day's fault schedule (pure) ===========================================================
FAULT_KINDS = ("kill_camerad", "kill_fingerprintd", "kill_controller", "kill_uplink", "kill_collector",
               "scanner_unplug", "camera_stall", "collector_down", "disk_low", "disk_full")
KILL_TARGET = {"kill_camerad": "cam0", "kill_fingerprintd": "fp0", "kill_controller": "controller",
               "kill_uplink": "uplink", "kill_collector": "collector"}
DISK_KINDS = ("disk_low", "disk_full")
# Expected faults per applicant: a 400-applicant day has ~6 of each kill, unplug and stall,
# ~3 collector outages and ~3 of each disk fault.
DAY_RATES = {**{kind: 0.015 for kind in KILL_TARGET}, "scanner_unplug": 0.015, "camera_stall": 0.015,
             "collector_down": 0.0075, "disk_low": 0.0075, "disk_full": 0.0075}
# How long a fault lasts (seconds, uniform); a kill lasts until its restart (RESTART_S).
DAY_DURATIONS = {**{kind: (0.0, 0.0) for kind in KILL_TARGET}, "scanner_unplug": (2.0, 6.0),
                 "camera_stall": (2.0, 8.0), "collector_down": (15.0, 60.0), "disk_low": (5.0, 20.0),
                 "disk_full": (5.0, 20.0)}
# What a fault occupies while it lasts: a second fault on it waits for the first to end.
RESOURCE = {**KILL_TARGET, "kill_collector": "collector", "collector_down": "collector", "scanner_unplug": "scanner",
            "camera_stall": "camera", "disk_low": "disk", "disk_full": "disk"}
QUICK_DURATIONS = {**DAY_DURATIONS, "scanner_unplug": (2.0, 4.0), "camera_stall": (2.0, 4.0),
                   "collector_down": (4.0, 8.0), "disk_low": (3.0, 6.0), "disk_full": (3.0, 6.0)}


@dataclass(frozen=True)
class Fault:
    applicant: int      # injected while this applicant (1-based) is enrolled
    kind: str
    offset: float       # 0..1: when within the applicant, as a fraction of its expected time
    duration_s: float


def schedule(seed: int, applicants: int, rates: dict[str, float], durations: dict[str, tuple[float, float]],
             at_least_once: Iterable[str] = ()) -> list[Fault]:
    """Which fault at which applicant: each kind independently at each applicant with its
    rate; then each kind of ``at_least_once`` that drew none is placed once, on an
    applicant without a fault where there is one (not the first, which warms the station
    up, nor the last, whose faults would outlast the enrollments)."""
    rng = random.Random(f"soak-schedule:{seed}")
    faults = []
    for number in range(1, applicants + 1):
        for kind in FAULT_KINDS:
            if rng.random() < rates.get(kind, 0.0):
                faults.append(Fault(number, kind, rng.random(), round(rng.uniform(*durations[kind]), 2)))
    drawn = {f.kind for f in faults}
    missing = [k for k in FAULT_KINDS if k in set(at_least_once) and k not in drawn]
    busy = {f.applicant for f in faults}
    first, last = (2, applicants - 1) if applicants >= 3 else (1, applicants)
    free = [n for n in range(first, last + 1) if n not in busy]
    rng.shuffle(free)
    for kind in missing:
        number = free.pop() if free else rng.randint(1, applicants)
        faults.append(Fault(number, kind, rng.random(), round(rng.uniform(*durations[kind]), 2)))
    return sorted(faults, key=lambda f: (f.applicant, f.offset, f.kind))


# == malformed traffic (pure) ==================================================================
# Commands whose valid form changes nothing; every other command is sent only with an
# argument outside its schema, or naming a session that does not exist.
HARMLESS = ("ping", "state", "status", "session.list", "record.list", "events.since")
COMMANDS = {
    "controller": ("ping", "state", "status", "session.list", "record.list", "events.since", "session.start",
                   "session.get", "session.portrait", "session.finger", "session.exception",
                   "session.exception_photo", "session.finish", "session.cancel", "session.abort", "record.get"),
    "cam0": ("ping", "state", "capture"),
    "fp0": ("ping", "state", "capture"),
    "uplink": ("ping", "state"),
    "collector": ("ping", "state"),
}
JUNK = [None, True, 0, -1, 2**63 - 1, -2**63, 1.5, 1e308, "", "é" * 3, "\u0000", [], [1], {}, {"a": None}]


def _hex(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(length))


def refused_args(rng: random.Random, cmd: str) -> dict[str, Any]:
    """Arguments no daemon may act on: a session that does not exist (or not a session id
    at all), a position or mode outside the schema, an applicant that is no applicant."""
    session = rng.choice([_hex(rng, 16), _hex(rng, 15), "Z" * 16, rng.choice(JUNK)])
    if cmd == "session.start":
        return {"applicant": rng.choice([{}, [], "x", {"full_name": rng.choice(JUNK)}]),
                "operator": rng.choice(["op", "", 7, "x" * 65])}
    if cmd == "capture":  # both drivers: a mode outside the enum, a position outside 1..10
        return {"mode": rng.choice(["selfie", "", "ICAO", 1, None]),
                "position": rng.choice(["one", None, [], 0.5, -40]),
                "timeout_s": rng.choice([0.6, "x", -1])}
    if cmd == "record.get":
        return {"record": rng.choice([_hex(rng, 32), "x", 5])}
    if cmd.startswith("session."):
        return {"session": session, "position": rng.choice([3, 0, 11, "x", None]),
                "reason": rng.choice(["XX", "zz", 5]), "operator": rng.choice(["op", 5])}
    return {k: rng.choice(JUNK) for k in rng.sample(["since", "limit", "x", "session"], rng.randint(0, 2))}


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        how = rng.randrange(4)
        if how == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif how == 1:
            del out[at:at + rng.randint(1, 8)]
        elif how == 2:
            out[at:at] = rng.choice([b"\xff", b"\x00", b'"', b"{", b"]", b"\\u", b"1e999"])
        else:
            del out[at:]
    return bytes(out)


MALFORMED_KINDS = {"bad_args": 30, "unknown_cmd": 8, "wrong_type": 12, "missing_field": 6, "damaged_bytes": 14,
                   "random_bytes": 8, "big_number": 3, "not_object": 4, "deep": 3, "huge": 4, "extra_frames": 6,
                   "expired_deadline": 5}


def malformed_request(rng: random.Random, index: int, daemon: str) -> tuple[str, list[bytes]]:
    """One request to ``daemon``'s command socket with something wrong: (kind, frames)."""
    kind = rng.choices(list(MALFORMED_KINDS), list(MALFORMED_KINDS.values()))[0]
    commands = COMMANDS[daemon]
    harmless = [c for c in commands if c in HARMLESS]
    cmd = rng.choice(commands)
    # Only a harmless command may lose its refused arguments (a camera capture without
    # arguments is a valid one).
    fields = ["v", "corr", "cmd", "deadline_ns"] + (["args"] if cmd in HARMLESS else [])
    header: dict[str, Any] = {"v": 1, "corr": f"fz{index}", "cmd": cmd, "deadline_ns": time.time_ns() + 2 * 10**9,
                              "args": refused_args(rng, cmd)}
    raw: bytes | None = None
    payloads: list[bytes] = []
    if kind == "unknown_cmd":
        header["cmd"] = rng.choice(["nope", "session.nope", "Status", "ping ", "", "x" * 70, "é"])
    elif kind == "wrong_type":
        header[rng.choice(fields)] = rng.choice(JUNK)
    elif kind == "missing_field":
        for name in rng.sample(fields, rng.randint(1, 2)):
            header.pop(name)
    elif kind == "damaged_bytes":  # only harmless commands: a damaged digit must not make a valid capture
        header.update(cmd=rng.choice(harmless), args={})
        raw = _mutate(rng, orjson.dumps(header))
    elif kind == "random_bytes":
        raw = rng.randbytes(rng.randint(0, 300))
    elif kind == "big_number":  # beyond 64 bits, which JSON allows and a u64 field does not
        raw = orjson.dumps(header)[:-1] + b',"deadline_ns":' + b"9" * rng.randint(20, 5000) + b"}"
    elif kind == "not_object":
        raw = rng.choice([orjson.dumps([header]), orjson.dumps(header["corr"]), b"null", b'"corr":"x"'])
    elif kind == "deep":
        depth = rng.randint(200, 5000)
        raw = orjson.dumps(header)[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "huge":
        big = "x" * rng.randint(50_000, 200_000)
        header["args"] = {**header["args"], rng.choice(["session", "operator", "z"]): big}
    elif kind == "extra_frames":
        payloads = [rng.randbytes(rng.choice([0, 1, 100, 4096, 60_000])) for _ in range(rng.randint(1, 4))]
    elif kind == "expired_deadline":
        header.update(cmd=rng.choice(harmless), deadline_ns=time.time_ns() - rng.randint(1, 10**10))
    if raw is None:
        raw = orjson.dumps(header)
    return kind, [raw[:MAX_REQUEST_BYTES - 1024], *payloads]


# == measures of one process lifetime (pure) ===================================================
@dataclass
class Lifetime:
    """One process of one daemon, from its start to its death."""
    name: str
    pid: int
    started: float
    ready: float | None = None
    pings: list[float] = field(default_factory=list)
    ended: float | None = None
    end: str = ""                                   # killed, stopped, exited N
    reaped: bool = False
    rss_kb: list[tuple[float, int]] = field(default_factory=list)


def watchdog_gap_s(lifetime: Lifetime, now: float) -> float | None:
    """The longest time the live process went without WATCHDOG=1: from READY=1 (or its
    first ping) through each ping to its death (or ``now``); None if it never got there."""
    first = min([t for t in (lifetime.ready, lifetime.pings[0] if lifetime.pings else None) if t is not None],
                default=None)
    if first is None:
        return None
    points = [first, *[p for p in lifetime.pings if p >= first], lifetime.ended or now]
    return max((b - a for a, b in zip(points, points[1:])), default=0.0)


def rss_growth_kb(lifetime: Lifetime, warmup_s: float) -> tuple[int, int, int] | None:
    """(baseline, end, growth) of VmRSS in kB: the first sample ``warmup_s`` after the start
    to the last; None if the process did not live past its warm-up."""
    after = [(t, kb) for t, kb in lifetime.rss_kb if t - lifetime.started >= warmup_s]
    if len(after) < 2:
        return None
    return after[0][1], after[-1][1], after[-1][1] - after[0][1]


def check_events(central: list[dict[str, Any]], journal: dict[int, tuple[str, dict]]) -> dict[str, int]:
    """Central's events of the station against the station's journal (seq -> topic, body)."""
    seqs = [e["seq"] for e in central]
    counts = Counter(seqs)
    last = max(journal, default=0)
    return {
        "checked": len(central),
        "station_last_seq": last,
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a),
        "missing": sum(1 for s in range(1, last + 1) if s not in counts),
        "unknown": sum(1 for s in counts if s not in journal),
        "mismatched": sum(1 for e in central if e["seq"] in journal
                          and (e["topic"], e["body"]) != journal[e["seq"]]),
    }


# == processes as systemd runs them ============================================================
class Service:
    """One daemon (or emulator) as systemd runs it: its program and every process it has
    been; restarted by ``Supervisor``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, *, notify: Path | None = None,
                 restart: bool = True, first_line: bool = False):
        self.name = name
        env = dict(env)
        if notify is not None:
            env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC=str(int(WATCHDOG_SEC * 1e6)))
        self.program = Program([*PDEATHSIG, *argv], env, log, reads_stdout=first_line)
        self.restart = restart
        self.lifetimes: list[Lifetime] = []
        self.lock = threading.Lock()
        self.held = False           # kept down on purpose (collector_down): no restart
        self.expect_death = False   # the soak killed it: not an unexpected exit
        self.restart_at: float | None = None
        self.unexpected: list[str] = []

    @property
    def log_path(self) -> Path:
        return self.program.log_path

    def start(self) -> str:
        """Start a new process (from the supervisor thread or the main thread only: its
        children die with the thread that started them, ``--pdeathsig``); an emulator's
        first line (its device path), else ""."""
        self.program.start()
        with self.lock:
            self.lifetimes.append(Lifetime(self.name, self.program.pid, time.monotonic()))
            self.expect_death = False
            self.restart_at = None
        return self.program.first_line() if self.program.reads_stdout else ""

    @property
    def current(self) -> Lifetime | None:
        return self.lifetimes[-1] if self.lifetimes else None

    def lifetime_of(self, pid: int) -> Lifetime | None:
        with self.lock:
            return next((lt for lt in reversed(self.lifetimes) if lt.pid == pid), None)

    def alive(self) -> bool:
        return self.program.alive

    def _ending(self, why: str) -> bool:
        """Note (under ``lock``) that the running process ends by the soak's doing; False if
        none runs."""
        if not self.program.alive:
            return False
        self.expect_death = True
        self.current.ended, self.current.end = time.monotonic(), why
        return True

    def signal(self, signum: int, why: str) -> bool:
        """Signal the running process as the soak's own doing; False if none runs."""
        with self.lock:
            return self._ending(why) and self.program.signal(signum)

    def reap(self, now: float) -> bool:
        """Note a death seen by the supervisor; True if the process just died."""
        with self.lock:
            status = self.program.returncode
            if status is None or self.current.reaped:
                return False
            life = self.current
            life.reaped = True
            if not self.expect_death:
                life.ended, life.end = now, f"exited {status}"
                self.unexpected.append(f"{self.name} pid {life.pid} exited {status} (not killed by the soak)")
            return True

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout_s``: the exit status; None if it had to be killed."""
        with self.lock:
            self.held = True
            self._ending("stopped")
        status = self.program.stop(timeout_s)
        return None if self.program.killed else status

    def log_tail(self, lines: int = 12) -> str:
        return self.program.log_tail(lines)


class NotifyListener:
    """The notify sockets systemd would own, one per daemon; each datagram attributed to its
    sender's PID through SO_PASSCRED."""

    def __init__(self, run: Path, programs: dict[str, Service]):
        self.programs = programs
        self.sockets: dict[socket.socket, str] = {}
        self.paths: dict[str, Path] = {}
        for name in DAEMONS:
            path = run / f"{name}.notify"
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(str(path))
            self.sockets[sock] = name
            self.paths[name] = path
        self.unattributed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _listen(self) -> None:
        creds = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self.sockets), [], [], 0.2)
            for sock in ready:
                data, ancillary, _, _ = sock.recvmsg(4096, creds)
                now = time.monotonic()
                pid = next((struct.unpack("3i", d[:12])[0] for level, kind, d in ancillary
                            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
                program = self.programs.get(self.sockets[sock])
                life = program.lifetime_of(pid) if program and pid else None
                if life is None:
                    self.unattributed += 1
                    continue
                lines = data.decode(errors="replace").split("\n")
                if "READY=1" in lines and life.ready is None:
                    life.ready = now
                if "WATCHDOG=1" in lines:
                    life.pings.append(now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


class Supervisor:
    """systemd's part: restart a dead daemon after RestartSec (1-2 s) unless held down; and
    sample each live daemon's VmRSS."""

    def __init__(self, programs: dict[str, Service], seed: int):
        self.programs = programs
        self.rng = random.Random(f"soak-restart:{seed}")
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._next_rss = 0.0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            for program in self.programs.values():
                if not program.restart:
                    continue
                if program.reap(now) and not program.held:
                    program.restart_at = now + self.rng.uniform(*RESTART_S)
                if program.restart_at is not None and now >= program.restart_at and not program.held \
                        and not program.alive():
                    try:
                        program.start()
                    except (OSError, StationError) as exc:
                        self.errors.append(f"restart of {program.name} failed: {exc}")
                        program.restart_at = now + 2.0
            if now >= self._next_rss:
                self._next_rss = now + RSS_EVERY_S
                self._sample_rss(now)

    def _sample_rss(self, now: float) -> None:
        for name in DAEMONS:
            program = self.programs[name]
            life = program.current
            if life is None or life.ended is not None or not program.alive():
                continue
            try:
                status = Path(f"/proc/{life.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    life.rss_kb.append((now, int(line.split()[1])))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# == the background fuzzer =====================================================================
class Fuzzer:
    """Malformed requests to every daemon's command socket, at ``rate`` a second each."""

    def __init__(self, ctx: zmq.Context, endpoints: dict[str, str], seed: int, rate: float):
        self.ctx, self.endpoints, self.rate = ctx, endpoints, rate
        self.rng = random.Random(f"soak-fuzz:{seed}")
        self.sent: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.unsent: Counter[str] = Counter()   # the daemon was down (no peer to queue to)
        self.oversized = 0
        self.internal: list[str] = []           # a reply 'internal': a handler failed on it
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzzer", daemon=True)

    def start(self) -> None:
        if self.rate > 0:
            self._thread.start()

    def _socket(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 200)
        sock.connect(endpoint)
        return sock

    def _run(self) -> None:
        try:
            self._send_all()
        except BaseException as exc:  # reported at the end, never a silent thread death
            self.error = exc

    def _send_all(self) -> None:
        sockets = {name: self._socket(endpoint) for name, endpoint in self.endpoints.items()}
        index = 0
        try:
            while not self._stop.wait(self.rng.uniform(0.1, 0.4)):
                for name, sock in sockets.items():
                    for _ in range(self.rng.randint(0, max(1, round(self.rate * 0.5)))):
                        index += 1
                        kind, frames = malformed_request(self.rng, index, name)
                        try:
                            sock.send_multipart(frames, flags=zmq.NOBLOCK)
                            self.sent[name] += 1
                            self.kinds[kind] += 1
                        except zmq.Again:
                            self.unsent[name] += 1
                    if self.rng.random() < 0.01:
                        self._oversized(self.endpoints[name])
                    self._drain(name, sock)
        finally:
            for sock in sockets.values():
                sock.close()

    def _oversized(self, endpoint: str) -> None:
        """A frame over the limit: libzmq drops that connection; the daemon must not notice."""
        sock = self._socket(endpoint)
        try:
            if sock.poll(500, zmq.POLLOUT):  # connected (IMMEDIATE: nothing is queued before)
                sock.send_multipart([b'{"v":1,"corr":"over","cmd":"ping","pad":"' + b"x" * MAX_REQUEST_BYTES
                                     + b'"}'], flags=zmq.NOBLOCK)
                self.oversized += 1
        except zmq.Again:
            pass
        finally:
            sock.close()

    def _drain(self, name: str, sock: zmq.Socket) -> None:
        while sock.poll(0):
            frames = sock.recv_multipart()
            self.answered[name] += 1
            try:
                reply = orjson.loads(frames[0])
            except orjson.JSONDecodeError:
                self.internal.append(f"{name}: unreadable reply {frames[0][:120]!r}")
                continue
            error = reply.get("error") if isinstance(reply, dict) else None
            if isinstance(error, dict) and error.get("code") == "internal":
                self.internal.append(f"{name}: {reply.get('cmd')}: {str(error.get('message'))[:200]}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def report(self) -> dict[str, Any]:
        return {"sent": dict(self.sent), "answered": dict(self.answered), "unsent_daemon_down": dict(self.unsent),
                "oversized_frames": self.oversized, "kinds": dict(self.kinds), "internal_errors": len(self.internal)}


# == the officer ===============================================================================
@dataclass
class Applicant:
    number: int
    sessions: list[str] = field(default_factory=list)
    record: str = ""
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)
    given_up: bool = False
    adopted: int = 0


class Officer:
    """Enrolls one applicant after another through the controller, whatever happens."""

    FATAL = {"invalid_demographics", "bad_request", "unknown_command"}  # a bug in this script

    def __init__(self, soak: "Soak", rng: random.Random, give_up_s: float):
        self.soak, self.rng, self.give_up_s = soak, rng, give_up_s
        self.pending_cancel: list[str] = []
        self.cancelled: list[str] = []
        self.orphans_cancelled = 0
        self.known: set[str] = set()

    def call(self, cmd: str, args: dict | None = None, timeout_s: float = CALL_TIMEOUT_S) -> dict:
        """One command from this officer (``operator``, audited as the actor) on a fresh
        socket: a reply to a request lost with a killed controller never comes."""
        if cmd != "session.list":
            args = {**(args or {}), "operator": OPERATOR}
        client = CommandClient(self.soak.ctx, self.soak.paths.cmd("controller"), name="controller")
        try:
            return client.call(cmd, args, timeout_s=timeout_s).result
        finally:
            client.close()

    def enroll(self, number: int, positions: Sequence[int]) -> Applicant:
        result = Applicant(number)
        person = make_applicant(self.rng, number)
        seed = self.rng.randrange(1 << 30)
        amputated = {positions[-1]} if number % 7 == 0 else set()
        started = time.monotonic()
        deadline = started + self.give_up_s
        sid: str | None = None
        pause = 0.3
        self.retry_cancels()
        while time.monotonic() < deadline:
            try:
                if sid is None:
                    sid = self.adopt(result) or self.call("session.start", {"applicant": person})["session"]
                    self.known.add(sid)
                    result.sessions.append(sid)
                view = self.call("session.get", {"session": sid})
                if view["status"] == "finished":
                    result.record = view["record"]
                    break
                if view["status"] != "open":  # cancelled or expired under us: start again
                    result.errors[f"session_{view['status']}"] += 1
                    sid = None
                    continue
                step = view["step"]
                if step == "portrait":
                    self.call("session.portrait", {"session": sid}, STEP_TIMEOUT_S)
                elif step == "fingers" and view["next_finger"] in amputated:
                    self.call("session.exception", {"session": sid, "position": view["next_finger"], "reason": "XX"})
                elif step == "fingers":
                    self.soak.place_finger(seed, view["next_finger"])
                    self.call("session.finger", {"session": sid, "position": view["next_finger"]}, STEP_TIMEOUT_S)
                elif step == "exception_photo":
                    self.call("session.exception_photo", {"session": sid}, STEP_TIMEOUT_S)
                elif step == "review":
                    result.record = self.call("session.finish", {"session": sid}, STEP_TIMEOUT_S)["record"]
                    break
                pause = 0.3
            except CommandError as exc:
                if exc.code in self.FATAL:
                    raise
                result.errors[exc.code] += 1
                if exc.code == "no_session":  # the controller does not know it: lost, not ended
                    self.soak.problems.append(f"applicant {number}: session {sid} vanished: {exc.message}")
                    sid = None
                time.sleep(pause)
                pause = min(pause * 1.5, 2.0)
            except (StationError, OSError) as exc:  # no answer in time (controller down), emulator control
                result.errors[getattr(exc, "code", None) or type(exc).__name__] += 1
                time.sleep(pause)
                pause = min(pause * 1.5, 2.0)
        result.seconds = round(time.monotonic() - started, 2)
        if not result.record:
            result.given_up = True
            if sid is not None:
                self.pending_cancel.append(sid)
                self.retry_cancels()
        return result

    def adopt(self, result: Applicant) -> str | None:
        """After a lost ``session.start`` answer the session may exist: take it up (the
        newest of ours), and cancel any other open one (an orphan)."""
        mine = [s for s in self.call("session.list")["sessions"]
                if s["operator"] == OPERATOR and s["session"] not in self.pending_cancel]
        if not mine:
            return None
        mine.sort(key=lambda s: s["started_ns"])
        for orphan in mine[:-1]:
            self.pending_cancel.append(orphan["session"])
            self.orphans_cancelled += 1
        result.adopted += 1
        return mine[-1]["session"]

    def retry_cancels(self, budget_s: float = 20.0) -> None:
        deadline = time.monotonic() + budget_s
        while self.pending_cancel and time.monotonic() < deadline:
            sid = self.pending_cancel[0]
            try:
                self.call("session.cancel", {"session": sid, "reason": "soak officer gave up after faults"})
            except CommandError as exc:
                if exc.code not in ("session_closed", "no_session"):
                    time.sleep(0.5)
                    continue
            except StationError:
                time.sleep(0.5)
                continue
            self.cancelled.append(self.pending_cancel.pop(0))

    def sweep(self) -> int:
        """The end of the day: cancel every session still open (none, if all went well)."""
        open_now = [s["session"] for s in self.call("session.list")["sessions"]]
        for sid in open_now:
            if sid not in self.pending_cancel:
                self.pending_cancel.append(sid)
                self.orphans_cancelled += 1
        self.retry_cancels(60.0)
        return len(open_now)


# == the soak ==================================================================================
@dataclass
class Settings:
    applicants: int
    seed: int
    quick: bool
    fingers: int | None            # None: the packaged policy
    rates: dict[str, float]
    durations: dict[str, tuple[float, float]]
    required: list[str]            # fault kinds the day must have at least once
    fuzz_rate: float
    give_up_s: float
    warmup_s: float
    rss_bound_mb: float
    watchdog_goal: float
    state_fs: str                  # tmpfs | none
    state_mb: int
    floor_mb: int
    camera_fps: float
    workdir: Path
    keep: bool


class Soak:
    def __init__(self, settings: Settings):
        self.s = settings
        self.top = settings.workdir
        run = Path(tempfile.mkdtemp(prefix="soak-run-", dir="/tmp"))   # ipc paths stay short
        self.paths = Paths(etc=self.top / "etc", state=self.top / "state", run=run)
        self.central = Paths(etc=self.top / "central" / "etc", state=self.top / "central" / "state",
                             run=Path(tempfile.mkdtemp(prefix="soak-col-", dir="/tmp")))
        self.logs = self.top / "logs"
        self.ballast = self.paths.state / "ballast"
        self.env = program_env(self.paths)
        self.central_env = program_env(self.central)
        self.ctx = zmq.Context()
        self.programs: dict[str, Service] = {}
        self.problems: list[str] = []
        self.fault_log: list[dict[str, Any]] = []
        self.injected: Counter[str] = Counter()
        self.applicants: list[Applicant] = []
        self.positions: list[int] = []
        self.current_applicant = 0
        self.applicant_started = 0.0
        self.faults_done_through = 0   # every fault of applicants up to this one is over
        self.progress_lock = threading.Condition()
        self.chaos_error: BaseException | None = None
        self.recoveries: dict[str, tuple[float, Callable[[], None]]] = {}  # resource -> (when, end the fault)
        self.mounted = False
        self.stopping = False
        self.officer: Officer | None = None
        self.open_at_end = -1
        self.t0 = time.monotonic()

    # -- set-up -------------------------------------------------------------------------------
    def prepare_state_fs(self) -> None:
        for directory in (self.paths.etc, self.paths.state, self.central.etc, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        if self.s.state_fs == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.s.state_mb}m,mode=0700", "station-soak",
                            str(self.paths.state)], check=True, capture_output=True)
            self.mounted = True

    def release_state_fs(self) -> None:
        """Unmount the station's tmpfs (its store vanishes: central's storage and the logs stay)."""
        if self.mounted:
            subprocess.run(["umount", "--lazy", str(self.paths.state)], capture_output=True)
            self.mounted = False

    def provision(self) -> None:
        central_key, central_pub = keyring.write_central_pair(self.top / "central")
        self.central_key = central_key
        keyring.provision(self.paths.keys, STATION_ID, central_pub.read_bytes())
        port = free_port()
        (self.central.etc / "collector.yaml").write_text(yaml.safe_dump(
            {"listen": [f"tcp://127.0.0.1:{port}"], "storage": {"backend": "embedded"}}))
        server_key = self.collector_tool("init").split('server_key: "')[1].split('"')[0]
        self.collector_tool("allow", str(self.paths.keys / keyring.STATION_PUB))
        etc = self.paths.etc
        (etc / "uplink.yaml").write_text(yaml.safe_dump({
            "collector": {"endpoints": [f"tcp://127.0.0.1:{port}"], "server_key": server_key},
            "backoff": {"initial_s": 0.5, "max_s": 5.0}, "confirm": {"after_s": 0, "every_s": 1.0}}))
        (etc / "controller.yaml").write_text(yaml.safe_dump(
            {"store": {"retention_days": 0, "min_free_mb": self.s.floor_mb}}))
        if self.s.fingers is not None:
            (etc / "enrollment.yaml").write_text(yaml.safe_dump(
                {"finger_positions": list(range(1, self.s.fingers + 1))}))
        self.positions = list(config.load("enrollment", None, etc)["finger_positions"])

    def collector_tool(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "station-collector"), *args], capture_output=True, text=True,
                              env=self.central_env, timeout=120)
        if done.returncode != 0:
            raise StationError(f"station-collector {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def add(self, name: str, argv: list[str], env: dict[str, str], **kwargs: Any) -> Service:
        program = Service(name, argv, env, self.logs / f"{name}.log", **kwargs)
        self.programs[name] = program
        return program

    def start(self) -> None:
        self.sensor_control = self.paths.run / "fp0-sensor.ctl"
        self.camera_control = self.paths.run / "cam0-camera.ctl"
        sensor = self.add("sensor", [str(BIN / "stationctl"), "emulate", "fingerprint", "--link",
                                     str(self.top / "fp0.tty"), "--control", str(self.sensor_control),
                                     "--log-level", "WARNING"], self.env, restart=False, first_line=True)
        sensor.start()
        camera = self.add("camera", [str(BIN / "stationctl"), "emulate", "camera", "--fps", f"{self.s.camera_fps:g}",
                                     "--link", str(self.top / "cam0.mjpeg"), "--control", str(self.camera_control),
                                     "--log-level", "WARNING"], self.env, restart=False, first_line=True)
        fifo = camera.start()
        (self.paths.etc / "fingerprint@fp0.yaml").write_text(yaml.safe_dump({"port": str(self.top / "fp0.tty")}))
        (self.paths.etc / "camera@cam0.yaml").write_text(yaml.safe_dump({"source": {"kind": "video", "path": fifo}}))
        self.notify = NotifyListener(self.paths.run, self.programs)
        argv = {"cam0": [str(BIN / "station-camerad"), "cam0"], "fp0": [str(BIN / "station-fingerprintd"), "fp0"],
                "controller": [str(BIN / "station-controller")], "uplink": [str(BIN / "station-uplink")],
                "collector": [str(BIN / "station-collector"), "serve"]}
        for name in DAEMONS:
            self.add(name, argv[name], self.central_env if name == "collector" else self.env,
                     notify=self.notify.paths[name])
        self.notify.start()
        for name in ("collector", "cam0", "fp0", "controller", "uplink"):
            self.programs[name].start()
        self.supervisor = Supervisor(self.programs, self.s.seed)
        self.supervisor.start()
        self.wait_ready()
        endpoints = {name: (self.central if name == "collector" else self.paths).cmd(name) for name in DAEMONS}
        self.fuzzer = Fuzzer(self.ctx, endpoints, self.s.seed, self.s.fuzz_rate)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for name in DAEMONS:
            program = self.programs[name]
            while program.current is None or program.current.ready is None:
                if not program.alive() and not program.restart:
                    raise StationError(f"{name} exited:\n{program.log_tail()}")
                if time.monotonic() > deadline:
                    raise StationError(f"{name} not ready (READY=1) after {READY_TIMEOUT_S:.0f} s:\n"
                                       f"{program.log_tail()}")
                time.sleep(0.1)
        client = CommandClient(self.ctx, self.paths.cmd("controller"), name="controller")
        try:
            while True:
                try:
                    drivers = client.call("status", timeout_s=1.0).result["drivers"]
                    if all(d["online"] for d in drivers.values()):
                        return
                except StationError:
                    client.close()
                    client = CommandClient(self.ctx, self.paths.cmd("controller"), name="controller")
                if time.monotonic() > deadline:
                    raise StationError("the controller does not see every driver online")
                time.sleep(0.2)
        finally:
            client.close()

    def place_finger(self, seed: int, position: int) -> None:
        answer = sensor_command(self.sensor_control, f"finger {seed} {position} quality=good")
        if not answer.startswith("ok"):
            raise StationError(f"sensor emulator refused the finger: {answer}", code="emulator")

    # -- chaos ----------------------------------------------------------------------------------
    def expected_applicant_s(self) -> float:
        return 0.5 + 0.35 * len(self.positions)  # measured: 0.9 s with 2 fingers, 4-5 s with 10

    def chaos(self, faults: list[Fault]) -> None:
        """Inject each fault at its moment; end each (resume, replug, free, restart) after its
        duration without holding up the next one, except on the same resource."""
        try:
            for fault in faults:
                with self.progress_lock:  # every fault of the applicants before this one is in
                    self.faults_done_through = max(self.faults_done_through, fault.applicant - 1)
                    self.progress_lock.notify_all()
                self.chaos_wait(lambda: self.current_applicant >= fault.applicant or self.stopping)
                if self.stopping:
                    return
                with self.progress_lock:
                    late = self.current_applicant > fault.applicant
                    due = time.monotonic() if late else \
                        self.applicant_started + fault.offset * self.expected_applicant_s()
                resource = RESOURCE[fault.kind]
                self.chaos_wait(lambda: time.monotonic() >= due and resource not in self.recoveries)
                self.inject(fault)
            self.chaos_wait(lambda: not self.recoveries)
        except BaseException as exc:  # reported at the end, never a silent thread death
            self.chaos_error = exc
        finally:
            for _, end_fault in list(self.recoveries.values()):  # nothing stays broken
                end_fault()
            self.recoveries.clear()
            with self.progress_lock:
                self.faults_done_through = 1 << 30
                self.progress_lock.notify_all()

    def chaos_wait(self, until: Callable[[], bool]) -> None:
        """Wait for ``until()``, ending faults whose time has come meanwhile."""
        while not until():
            now = time.monotonic()
            for resource, (due, end_fault) in list(self.recoveries.items()):
                if now >= due:
                    del self.recoveries[resource]
                    end_fault()
            time.sleep(0.05)

    def inject(self, fault: Fault) -> None:
        started = time.monotonic()
        entry = {"applicant": fault.applicant, "kind": fault.kind, "t_s": round(started - self.t0, 1),
                 "duration_s": fault.duration_s}
        end_fault: Callable[[], None] | None = None
        if fault.kind in KILL_TARGET:
            program = self.programs[KILL_TARGET[fault.kind]]
            ok = self.wait_until(lambda: program.alive() and program.current.ready is not None, 60.0)
            ok = ok and program.signal(signal.SIGKILL, "killed")
            note = f"pid {program.current.pid}" if ok else "not running"
        elif fault.kind == "scanner_unplug":  # the emulator plugs a new pty in by itself
            note = sensor_command(self.sensor_control, f"unplug {fault.duration_s:g}")
            ok = note.startswith("ok")
            end_fault = lambda: None  # noqa: E731 (the scanner is out until then)
        elif fault.kind == "camera_stall":
            note = sensor_command(self.camera_control, "stall")
            ok = note.startswith("ok")
            end_fault = self.camera_resume
        elif fault.kind == "collector_down":
            ok, note = self.collector_down()
            end_fault = self.collector_up
        else:
            ok, note = self.fill_disk(full=fault.kind == "disk_full")
            end_fault = self.free_disk
        if end_fault is not None:
            self.recoveries[RESOURCE[fault.kind]] = (started + fault.duration_s, end_fault)
        entry.update(ok=ok, note=note)
        self.fault_log.append(entry)
        if ok:
            self.injected[fault.kind] += 1
        progress(f"fault {fault.kind} at applicant {fault.applicant} ({note})")

    def camera_resume(self) -> None:
        answer = sensor_command(self.camera_control, "resume")
        if not answer.startswith("ok"):
            self.problems.append(f"camera emulator did not resume: {answer}")

    def collector_down(self) -> tuple[bool, str]:
        """Central's gateway stopped (SIGTERM) and kept down until ``collector_up``."""
        program = self.programs["collector"]
        self.wait_until(lambda: program.alive() and program.current.ready is not None, 60.0)
        with program.lock:
            program.held = True
        if not program.signal(signal.SIGTERM, "stopped"):
            return False, "not running"
        if not self.wait_until(lambda: not program.alive(), 15.0):
            program.signal(signal.SIGKILL, "killed")
            return True, "ignored SIGTERM for 15 s: killed"
        return True, "stopped"

    def collector_up(self) -> None:
        program = self.programs["collector"]
        with program.lock:
            program.held = False
            program.restart_at = time.monotonic()  # the supervisor starts it

    def fill_disk(self, full: bool) -> tuple[bool, str]:
        """A ballast file on the station's filesystem: half the floor left free (new sessions
        refused), or nothing left (store writes fail); ``free_disk`` removes it."""
        if not self.mounted:
            return False, "no filesystem of our own (--state-fs none)"
        target = 0 if full else self.s.floor_mb * 2**20 // 2
        chunk = b"\0" * 2**20
        written = 0
        try:
            with open(self.ballast, "wb") as out:
                while (free := shutil.disk_usage(self.paths.state).free) > target:
                    out.write(chunk if full or free - target > len(chunk) else chunk[:free - target])
                    out.flush()
                    written += 1
        except OSError as exc:
            if not full:
                self.free_disk()
                return False, f"ballast: {exc}"
        return True, f"{written} MB ballast, {shutil.disk_usage(self.paths.state).free // 2**10} KiB left"

    def free_disk(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    # -- the day --------------------------------------------------------------------------------
    def day(self, faults: list[Fault]) -> None:
        officer = Officer(self, random.Random(f"soak-officer:{self.s.seed}"), self.s.give_up_s)
        self.officer = officer
        chaos = threading.Thread(target=self.chaos, args=(faults,), name="chaos", daemon=True)
        self.t0 = time.monotonic()
        chaos.start()
        self.fuzzer.start()
        try:
            for number in range(1, self.s.applicants + 1):
                with self.progress_lock:  # the chaos may lag by two applicants at most
                    self.progress_lock.wait_for(lambda: self.faults_done_through >= number - 2)
                    self.current_applicant, self.applicant_started = number, time.monotonic()
                    self.progress_lock.notify_all()
                result = officer.enroll(number, self.positions)
                self.applicants.append(result)
                retries = sum(result.errors.values())
                progress(f"applicant {number}/{self.s.applicants}: "
                         f"{'record ' + result.record[:12] if result.record else 'GIVEN UP'} in {result.seconds} s"
                         f"{f', {retries} retries {dict(result.errors)}' if retries else ''}")
            with self.progress_lock:
                self.current_applicant = self.s.applicants + 1
                self.progress_lock.notify_all()
            chaos.join()
        finally:
            self.stopping = True
            with self.progress_lock:
                self.progress_lock.notify_all()
            chaos.join(120)
        # Every fault is over: everything must come back and drain.
        for name in DAEMONS:
            if not self.wait_until(lambda: self.programs[name].alive() and self.programs[name].current.ready, 60):
                self.problems.append(f"{name} did not come back after the faults:\n{self.programs[name].log_tail()}")
        try:
            self.open_at_end = officer.sweep()
        except StationError as exc:
            self.problems.append(f"final session sweep failed: {exc.message}")
            self.open_at_end = -1
        self.wait_drained()
        self.fuzzer.stop()

    def wait_drained(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            try:
                outbox = Outbox(self.paths.store, read_only=True)
                try:
                    backlog, rows = outbox.backlog(), outbox.records()
                finally:
                    outbox.close()
                if backlog.records == 0 and backlog.events == 0 and all(r.confirmed_ns for r in rows):
                    return
            except (StationError, sqlite3.Error) as exc:
                backlog = exc
            if time.monotonic() > deadline:
                self.problems.append(f"central has not confirmed everything after {DRAIN_TIMEOUT_S:.0f} s: {backlog}")
                return
            time.sleep(0.5)

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for name in ("uplink", "controller", "fp0", "cam0", "collector", "camera", "sensor"):
            if name in self.programs:
                codes[name] = self.programs[name].stop()
        return codes

    # -- reconciliation -------------------------------------------------------------------------
    def reconcile(self) -> dict[str, Any]:
        store = RecordStore.reader(self.paths.store)
        try:
            station_rows = {r.record_id: r for r in store.records()}
            journal = {e.seq: (e.topic, e.body) for e in store.journal_since(0, 10**9)}
            audit = store.audit_log(limit=10**9)
        finally:
            store.close()
        db = sqlite3.connect(f"file:{self.paths.store / 'store.db'}?mode=ro", uri=True)
        try:
            sessions = {sid: (status, rec) for sid, status, rec in
                        db.execute("SELECT session_id, status, record_id FROM sessions")}
        finally:
            db.close()
        out: dict[str, Any] = {}
        out.update(self.reconcile_records(station_rows))
        events = json_lines(self.collector_tool("watch", "--station", STATION_ID))
        out["event_check"] = check_events(events, journal)
        out["events"] = out["event_check"]["checked"]
        out.update(self.reconcile_sessions(sessions, audit, station_rows))
        return out

    def reconcile_records(self, station_rows: dict[str, Any]) -> dict[str, Any]:
        done = {a.record: a.number for a in self.applicants if a.record}
        owner = {sid: a.number for a in self.applicants for sid in a.sessions}
        per_applicant = Counter(owner[r.session_id] for r in station_rows.values() if r.session_id in owner)
        data_dir = self.central.state / "collector"
        db = sqlite3.connect(f"file:{data_dir / 'collector.db'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT record_id, sha256, path FROM records WHERE station_id=?",
                              (STATION_ID,)).fetchall()
        finally:
            db.close()
        stored = Counter(r[0] for r in rows)
        files = Counter(p.name.removesuffix(".sealed") for p in (data_dir / "records" / STATION_ID).glob("*.sealed"))
        central_key = sealing.CentralPrivateKey.from_pem(self.central_key.read_bytes())
        station_pub = sealing.StationPublicKeys.from_pem((self.paths.keys / keyring.STATION_PUB).read_bytes())
        verified, bad = set(), []
        for record_id, sha, path in rows:
            try:
                blob = (data_dir / path).read_bytes()
                if hashlib.sha256(blob).hexdigest() != sha:
                    raise StationError("stored bytes do not match central's index")
                row = station_rows.get(record_id)
                if row is not None and row.sealed_sha256 != sha:
                    raise StationError("central's copy differs from what the station sealed")
                _, plaintext = sealing.open_sealed(blob, central_key, station_pub)
                manifest, _an2 = record.unpack(plaintext)
                if manifest.get("record") != record_id:
                    raise StationError(f"the record inside names {manifest.get('record')}")
                verified.add(record_id)
            except (StationError, OSError) as exc:
                bad.append(f"record {record_id} at central: {getattr(exc, 'message', exc)}")
        self.problems.extend(bad)
        expected = set(done) | set(station_rows)
        lost = sorted(expected - verified)
        self.problems.extend(f"record {r} lost (done: {r in done}, committed: {r in station_rows})" for r in lost)
        unreported = sorted(set(station_rows) - set(done))
        self.problems.extend(f"record {r} committed but never reported to the officer" for r in unreported)
        twice = [n for n, count in per_applicant.items() if count > 1]
        self.problems.extend(f"applicant {n} has {per_applicant[n]} records" for n in twice)
        duplicated = sum(n - 1 for n in stored.values() if n > 1) + sum(n - 1 for n in files.values() if n > 1) \
            + sum(per_applicant[n] - 1 for n in twice)
        return {"records_done": len(done), "records_committed": len(station_rows),
                "records_delivered": len(verified & set(done)), "lost": len(lost), "duplicated": duplicated,
                "records_unexpected_at_central": len(set(stored) - expected), "records_unreported": len(unreported)}

    def reconcile_sessions(self, sessions: dict[str, tuple[str, str | None]], audit: list[dict[str, Any]],
                           station_rows: dict[str, Any]) -> dict[str, Any]:
        actions: dict[str, set[str]] = {}
        for line in audit:
            if line["session"]:
                actions.setdefault(line["session"], set()).add(line["action"])
        started = {sid for sid, acts in actions.items() if "session.start" in acts}
        started |= self.officer.known if self.officer else set()
        lost = []
        for sid in sorted(started):
            status, record_id = sessions.get(sid, ("absent", None))
            acts = actions.get(sid, set())
            if status == "finished" and record_id in station_rows and "session.finish" in acts:
                continue
            if status == "cancelled" and "session.cancel" in acts:
                continue
            if status == "expired" and "session.expired" in acts:
                continue
            lost.append(f"session {sid}: {status}, audited {sorted(acts)}")
        self.problems.extend(lost)
        statuses = Counter(sessions.get(sid, ("absent",))[0] for sid in started)
        return {"sessions": {"started": len(started), **dict(statuses), "open_at_end_of_day": self.open_at_end,
                             "orphans_cancelled": self.officer.orphans_cancelled if self.officer else 0,
                             "adopted_after_lost_start": sum(a.adopted for a in self.applicants)},
                "sessions_lost_unaudited": len(lost)}

    def watchdog(self, now: float) -> dict[str, Any]:
        gaps: dict[str, float] = {}
        pings: dict[str, int] = {}
        for name in DAEMONS:
            lives = [watchdog_gap_s(life, now) for life in self.programs[name].lifetimes]
            measured = [g for g in lives if g is not None]
            gaps[name] = round(max(measured), 2) if measured else None
            pings[name] = sum(len(life.pings) for life in self.programs[name].lifetimes)
        worst = max((g for g in gaps.values() if g is not None), default=None)
        return {"max_watchdog_gap_s": {"overall": worst, **gaps}, "watchdog_pings": pings}

    def rss(self) -> dict[str, Any]:
        growth: dict[str, float | None] = {}
        detail: dict[str, Any] = {}
        for name in DAEMONS:
            best = None
            for life in self.programs[name].lifetimes:
                figures = rss_growth_kb(life, self.s.warmup_s)
                if figures is not None and (best is None or figures[2] > best[1][2]):
                    best = (life, figures)
            if best is None:
                growth[name] = None
                continue
            life, (base, end, grew) = best
            growth[name] = round(grew / 1024, 1)
            detail[name] = {"baseline_mb": round(base / 1024, 1), "end_mb": round(end / 1024, 1),
                            "lifetime_s": round((life.ended or time.monotonic()) - life.started, 1)}
        return {"rss_growth_mb": growth, "rss_mb": detail}

    def log_findings(self) -> dict[str, int]:
        """Lines in each daemon's log that say a handler or the main loop failed."""
        signs = ("Traceback", "main loop failed", "completion callback failed", "dispatch_failed")
        found = {}
        for name in DAEMONS:
            text = self.programs[name].log_path.read_text(errors="replace") if self.programs[name].log_path.exists() \
                else ""
            found[name] = sum(text.count(sign) for sign in signs)
        return found

    # -- the whole run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        faults = schedule(self.s.seed, self.s.applicants, self.s.rates, self.s.durations, self.s.required)
        report: dict[str, Any] = {"applicants": self.s.applicants, "seed": self.s.seed, "quick": self.s.quick}
        codes: dict[str, int | None] = {}
        try:
            self.prepare_state_fs()
            self.provision()
            progress(f"{self.s.applicants} applicants, {len(self.positions)} finger positions, {len(faults)} faults "
                     f"scheduled, work directory {self.top}")
            self.start()
            progress("station and collector ready")
            self.day(faults)
        except (StationError, OSError, subprocess.CalledProcessError) as exc:
            self.problems.append(f"soak failed: {getattr(exc, 'message', exc)}")
        finally:
            if hasattr(self, "fuzzer"):
                self.fuzzer.stop()
            self.stopping = True
            codes = self.stop()
            if hasattr(self, "supervisor"):
                self.supervisor.stop()
            if hasattr(self, "notify"):
                self.notify.close()
            self.ctx.destroy(linger=0)
        try:
            report.update(self.reconcile())
        except (StationError, OSError, sqlite3.Error) as exc:
            self.problems.append(f"reconciliation failed: {getattr(exc, 'message', exc)}")
        report.update(self.figures(faults, codes, started))
        report["problems"] = self.problems[:200]
        return report

    def figures(self, faults: list[Fault], codes: dict[str, int | None], started: float) -> dict[str, Any]:
        report: dict[str, Any] = {
            "finger_positions": len(self.positions),
            "faults_scheduled": dict(Counter(f.kind for f in faults)),
            "faults_injected": {kind: self.injected[kind] for kind in FAULT_KINDS},
            "faults_required": self.s.required,
            "given_up": sum(a.given_up for a in self.applicants),
            "officer_retries": dict(sum((a.errors for a in self.applicants), Counter())),
            "applicant_s": percentiles([a.seconds for a in self.applicants]),
            **self.watchdog(time.monotonic()),
            "watchdog_sec": WATCHDOG_SEC,
            "watchdog_goal_s": round(self.s.watchdog_goal * WATCHDOG_SEC, 2),
            **self.rss(),
            "rss_bound_mb": self.s.rss_bound_mb,
            "restarts": {name: max(0, len(self.programs[name].lifetimes) - 1) for name in DAEMONS
                         if name in self.programs},
            "unexpected_exits": [u for name in DAEMONS if name in self.programs
                                 for u in self.programs[name].unexpected],
            "exit_codes": codes,
            "malformed": self.fuzzer.report() if hasattr(self, "fuzzer") else {},
            "log_failures": self.log_findings(),
            "state_fs": f"tmpfs {self.s.state_mb} MB, floor {self.s.floor_mb} MB" if self.mounted else "none",
        }
        if hasattr(self, "fuzzer"):
            self.problems.extend(self.fuzzer.internal[:20])
            if self.fuzzer.error is not None:
                self.problems.append(f"fuzzer thread failed: {self.fuzzer.error!r}")
        if hasattr(self, "supervisor"):
            self.problems.extend(self.supervisor.errors)
        if self.chaos_error is not None:
            self.problems.append(f"chaos thread failed: {self.chaos_error!r}")
        self.problems.extend(report["unexpected_exits"])
        self.problems.extend(f"{name} {'did not stop within 10 s' if code is None else f'exited {code}'} on SIGTERM"
                             for name, code in codes.items() if code != 0)
        report["seconds"] = round(time.monotonic() - started, 1)
        return report


def goals(report: dict[str, Any]) -> dict[str, bool]:
    """Each goal of the soak, True when met."""
    events = report.get("event_check") or {}
    gap = report["max_watchdog_gap_s"]["overall"]
    return {
        "nothing_lost": report.get("lost") == 0 and report.get("records_done", 0) > 0,
        "nothing_duplicated": report.get("duplicated") == 0,
        "events_once_in_order": bool(events) and events["checked"] == events["station_last_seq"]
        and all(events[k] == 0 for k in ("duplicates", "out_of_order", "missing", "unknown", "mismatched")),
        "sessions_audited": report.get("sessions_lost_unaudited") == 0,
        "watchdog": gap is not None and gap < report["watchdog_goal_s"],
        "memory": all(g is not None and g < report["rss_bound_mb"] for g in report["rss_growth_mb"].values()),
        "every_fault_kind": all(report["faults_injected"][k] > 0 for k in report["faults_required"]),
    }


def percentiles(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1]}


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# == command line ==============================================================================
def can_mount_privately() -> str:
    """'' if this process may mount a tmpfs in a private mount namespace, else why not."""
    if os.environ.get(NAMESPACE_MARK):
        return ""
    if not shutil.which("unshare"):
        return "no unshare(1)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m soak-probe /mnt"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"cannot mount in a private namespace: {probe.stderr.strip()}"


def parse_rates(items: Sequence[str]) -> dict[str, float]:
    rates = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep or kind not in FAULT_KINDS:
            raise ValueError(f"--rate {item!r}: expected KIND=R with KIND one of {', '.join(FAULT_KINDS)}")
        rates[kind] = float(value)
    return rates


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applicants", type=int, default=None, help="applicants in the day (400; --quick 12)")
    parser.add_argument("--quick", action="store_true",
                        help="12 applicants, 2 finger positions, short faults, every kind exactly once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fingers", type=int, default=None,
                        help="enroll only the first N finger positions (default: the packaged policy; --quick 2)")
    parser.add_argument("--rate", action="append", default=[], metavar="KIND=R",
                        help=f"faults of KIND per applicant (default {DAY_RATES['kill_controller']} for kills); "
                             f"kinds: {', '.join(FAULT_KINDS)}; 0 disables one")
    parser.add_argument("--fault-scale", type=float, default=1.0, help="multiply every fault rate")
    parser.add_argument("--fuzz-rate", type=float, default=20.0, help="malformed requests a second per daemon (0: off)")
    parser.add_argument("--give-up-s", type=float, default=None,
                        help="an applicant is given up after this (180; quick 90)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="RSS baseline this long after a process starts (60; quick 15)")
    parser.add_argument("--rss-bound-mb", type=float, default=50.0, help="goal: RSS growth per process lifetime")
    parser.add_argument("--watchdog-goal", type=float, default=WATCHDOG_GOAL_FRACTION,
                        help="goal: longest watchdog gap below this fraction of WatchdogSec")
    parser.add_argument("--state-fs", choices=("tmpfs", "none"), default="tmpfs",
                        help="the station's state on a tmpfs of its own (private mount namespace), or not "
                             "(no disk faults)")
    parser.add_argument("--state-mb", type=int, default=64)
    parser.add_argument("--floor-mb", type=int, default=16, help="the controller's store.min_free_mb")
    parser.add_argument("--camera-fps", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory: logs, central's storage, soak.json (the station's own store "
                             "was on the tmpfs and is gone)")
    args = parser.parse_args(argv)
    applicants = args.applicants or (12 if args.quick else 400)
    if applicants < 1:
        parser.error("--applicants must be at least 1")
    try:
        chosen = parse_rates(args.rate)
    except ValueError as exc:
        parser.error(str(exc))
    # A day draws faults at its rates; the quick run has each kind exactly once (unless a
    # --rate asks for more, or 0 for none).
    base = {k: 0.0 for k in FAULT_KINDS} if args.quick else {k: v * args.fault_scale for k, v in DAY_RATES.items()}
    rates = {**base, **chosen}
    required = [k for k in FAULT_KINDS if (chosen.get(k, 1.0) if args.quick else rates[k]) > 0]
    if args.state_fs == "none":
        rates.update({kind: 0.0 for kind in DISK_KINDS})
        required = [k for k in required if k not in DISK_KINDS]
    settings = Settings(
        applicants=applicants, seed=args.seed, quick=args.quick,
        fingers=args.fingers if args.fingers is not None else (2 if args.quick else None),
        rates=rates, required=required, durations=QUICK_DURATIONS if args.quick else DAY_DURATIONS,
        fuzz_rate=args.fuzz_rate,
        give_up_s=args.give_up_s or (90.0 if args.quick else 180.0),
        warmup_s=args.warmup_s if args.warmup_s is not None else (15.0 if args.quick else 60.0),
        rss_bound_mb=args.rss_bound_mb, watchdog_goal=args.watchdog_goal, state_fs=args.state_fs,
        state_mb=args.state_mb, floor_mb=args.floor_mb, camera_fps=args.camera_fps,
        workdir=(args.workdir or Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))).resolve(), keep=args.keep)
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, settings = parse_args(argv)
    if args.workdir is None:
        argv += ["--workdir", str(settings.workdir)]  # the same one after the re-run below
    if settings.state_fs == "tmpfs" and not os.environ.get(NAMESPACE_MARK):
        why = can_mount_privately()
        if why:
            parser_error = f"--state-fs tmpfs: {why}; run as root, or with --state-fs none (no disk faults)"
            print(f"soak: {parser_error}", file=sys.stderr)
            return 2
        os.environ[NAMESPACE_MARK] = "1"  # the same process, in a mount namespace of its own
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", "--", sys.executable,
                              str(Path(__file__).resolve()), *argv])
    settings.workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(settings)
    report = soak.run()
    met = goals(report)
    report["goals"] = met
    report["goal_met"] = all(met.values())
    (settings.workdir / "soak.json").write_text(json.dumps({**report, "fault_log": soak.fault_log}, indent=2) + "\n")
    soak.release_state_fs()
    print(json.dumps(report, indent=2))
    if not settings.keep and report["goal_met"]:
        shutil.rmtree(settings.workdir, ignore_errors=True)
    else:
        progress(f"work directory kept: {settings.workdir} (logs in logs/, soak.json)")
    for run in (soak.paths.run, soak.central.run):
        shutil.rmtree(run, ignore_errors=True)
    return 0 if report["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
