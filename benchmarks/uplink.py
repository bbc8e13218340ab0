#!/usr/bin/env python3
"""Benchmark record delivery (uplink -> collector) against raw transports and a TCP stream.

Three parts, each with its own baseline in the same run on the same payload bytes, so the
figures are ratios (this machine's speed drifts between runs, and with other work on it).
Setup is never measured: records are sealed and committed before a part starts (store
``fsync`` off for speed, then one ``os.sync()`` so their write-back does not land inside a
measurement). Every delivery is checked afterwards at the collector: each record once,
with its SHA-256.

(a) loopback drain: ``ratio`` and ``ratio_vs_transport``
    ``--records`` (1,000) sealed records of 0.5-1 MB (uniform, seeded) in a real station
    store, drained by a real ``station-uplink`` (the packaged ``uplink.yaml``; the store's
    production ``fsync: true``, so every ``delivered`` mark is a full SQLite commit) into a
    real ``station-collector serve`` (embedded storage, ``fsync: true``). The uplink is
    started with no endpoint and waits, its store open; the clock starts when it is given
    the collector (config written, SIGHUP) and stops at the last record's ``delivered_ns``
    in the store: connecting, the CURVE handshake and the hello are inside. Against two
    raw pyzmq runs, sender and receiver each a spawned process, DEALER -> ROUTER over CURVE
    on loopback, sending the station's own sealed files (read per record, as the uplink
    does), one message per record, at most the uplink's window of bytes unacknowledged:

    - transport: the receiver acknowledges each message on arrival;
    - durable limit: the receiver hands what arrived to a writer thread that writes each
      payload to its own file, fsyncs every file of the batch and then the directory, and
      only then acknowledges the batch, while the next accumulates (group commit, at most
      the collector's ``batch_max`` a batch).

    Each round runs the three back to back; ``--rounds`` (3) rounds, and ``ratio`` is the
    median over rounds of durable-limit seconds / ours (goal >= 0.8), ``ratio_vs_transport``
    the same against the transport. Ours does more on purpose: offers, pieces and the
    collector's spool, two SHA-256 passes and two signature checks, temporary file and
    rename, the SQLite index, and the station's own durable ``delivered`` mark; ``cpu_s``
    (each process's CPU seconds during the transfer, all threads) shows what that costs.

(b) emulated 4G link: ``lossy_ratio`` and ``stall_detect_s``
    ``--lossy-records`` (300) records of the demo's sealed sizes (``DEMO_SEALED_BYTES``, read
    from ``station demo``'s store: 120-165 kB) through ``benchmarks/linkemu.EmulatedLink``
    (10 Mbit/s, 60 ms each way, a 5 s black hole every 30 s) to a real collector (embedded,
    fsync on), against ``linkemu.tcp_bulk_baseline``: one plain TCP stream of the same total
    bytes over a fresh link with the same parameters, which waits holes out. Both links
    open their first hole ``first_blackhole_s`` after they come up (5 s; earlier for a short
    run), so both transfers span the same holes. The idle uplink is given the link's
    address once the link is up; ours runs from the relay accepting its first connection to
    the last ``delivered_ns``. The uplink runs with its packaged config, as it ships:
    ``lossy_ratio`` = baseline seconds / ours (goal >= 0.9). Its ``stall_s`` (6 s) outlasts
    a 5 s hole, so it rides those out like TCP does; ``stall_detect_s`` comes from a short
    run with one ``STALL_PROBE_HOLE_S`` hole (``lossy.stall_probe``): from the hole's start
    to the first connection accepted after it (goal <= 10). The same transfer with
    ``LOSSY_UPLINK`` over the packaged config (a 3 s stall timer, which notices every 5 s
    hole and reconnects) is reported as ``lossy.tuned_config`` (``--lossy-uplink``
    replaces it).

(c) fan-in: ``fan_in.embedded`` and ``fan_in.jetstream``
    ``--stations`` (200) simulated stations upload ``--records-per-station`` (5) records of
    ~100 kB each to one real collector at once, embedded storage (fsync on), then JetStream
    (a 3-node ``nats-server`` cluster from ``tests/nats_cluster.py``, replicas 3). Real
    uplink processes would need ~8 GB and more than two cores, so the stations are
    ``SimulatedStation`` objects in this process under one poll loop: each a DEALER with its
    own CURVE key, speaking ``station.link`` under its own ``station.delivery.Window`` (the
    packaged window and chunk size), retrying refused or unanswered records. Each is a
    distinct allowed station (its public bundle written into the collector's stations
    directory, as ``station-collector allow`` does) sealing with its own keys, so the
    collector checks both signatures of every record. ``records_per_s`` runs from the first
    connect to the last ``stored``. The copies are then counted in the backend itself: the
    embedded SQLite index and files, or every message of ``stations.*.records`` by
    ``Nats-Msg-Id``; ``lost`` = records without a stored copy of the right SHA-256,
    ``duplicated`` = copies beyond one (goals 0 and 0). A backend that fails reports
    ``{"error": ...}`` and the rest of the run goes on.

Prints one JSON object on stdout; progress on stderr. About 5 minutes with the defaults,
under 2 with ``--quick`` (100 records and one round, 60 records over the link, 50 stations).

    .venv/bin/python benchmarks/uplink.py [--quick] [--records 1000] [--rounds 3]
        [--lossy-records 300] [--stations 200] [--only drain|lossy|fan-in] [--dir /var/tmp]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import yaml  # noqa: E402
import zmq  # noqa: E402

from delivery_harness import Central, UplinkProcess, wait_for  # noqa: E402
from filesystems import fs_type  # noqa: E402
from linkemu import EmulatedLink, tcp_bulk_baseline  # noqa: E402
from station import keyring, link, sealing  # noqa: E402
from station.bus import CommandClient  # noqa: E402
from station.delivery import Window  # noqa: E402
from station.errors import StationError  # noqa: E402
from station.store import RecordStore  # noqa: E402
from common import progress_for  # noqa: E402

CONTENT_TYPE = "application/octet-stream"
SEED = 20240601
# Sealed sizes of the three records `station demo` commits (two applicants with ten fingers,
# one with exceptions), read from <workdir>/state/store/records/*.sealed.
DEMO_SEALED_BYTES = (119_623, 164_478, 119_940)
FAN_IN_RECORD_BYTES = 100_000
GOAL_RATIO = 0.8
GOAL_LOSSY_RATIO = 0.9
GOAL_STALL_S = 10.0
LINK = {"rate_mbit": 10.0, "delay_ms": 60.0, "blackhole_s": 5.0, "blackhole_every_s": 30.0}
# The uplink on the 4G link. Packaged values except: a path is declared dead after 3 s of
# silence (heartbeat 1 s), below the 5 s holes, so a hole is noticed while it lasts (the
# packaged 6 s outlasts it: the uplink rides every hole out and never reconnects); and a
# 1 MiB window, ~2.5 x (bandwidth-delay product 150 kB + the modem's 256 kB queue): enough
# to keep the link busy, and a bound on what is sent again after a reconnect (records in
# flight start over: one-piece records are never spooled). The packaged 4 MiB is 3.4 s of
# line time at 10 Mbit/s.
LOSSY_UPLINK = {"stall_s": 3.0, "heartbeat_s": 1.0, "window": {"bytes": 1 << 20, "records": 32}}
STALL_PROBE_HOLE_S = 12.0  # longer than the packaged stall_s (6 s) plus its first backoff (<= 1 s)
SIM_HEARTBEAT_S = 2.0
SIM_STALL_S = 30.0       # generous: a collector busy with 200 stations answers late, not never
SIM_RETRY_S = 0.5


progress = progress_for("uplink")


def packaged(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def mb(n: float) -> float:
    return round(n / 1e6, 3)


def wall_to_monotonic(ns: int) -> float:
    """A ``time.time_ns()`` stamp (what the store keeps) on this process's monotonic clock."""
    return ns / 1e9 - (time.time() - time.monotonic())


# -- stations and their records ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sealed:
    record_id: str
    sha256: str
    size: int


class Station:
    """One provisioned station: etc/state/run as its daemons read them, its sealed records."""

    def __init__(self, top: Path, station_id: str, central_pub: bytes):
        self.etc, self.state = top / "etc", top / "state"
        self.etc.mkdir(parents=True)
        self.state.mkdir(parents=True)
        self.run = Path(tempfile.mkdtemp(prefix="upb-", dir="/tmp"))  # ipc paths stay short
        keyring.provision(self.state / "keys", station_id, central_pub)
        store = packaged("controller")["store"]
        (self.etc / "controller.yaml").write_text(yaml.safe_dump(
            {"store": {"fsync": store["fsync"], "retention_days": store["retention_days"]}}))
        self.env = {**os.environ, "STATION_ETC": str(self.etc), "STATION_STATE": str(self.state),
                    "STATION_RUN": str(self.run)}
        self.bundle = self.state / "keys" / keyring.STATION_PUB

    def fill(self, sealed_sizes: list[int], prefix: str) -> list[Sealed]:
        """Commit one sealed record of each size, each with its journaled event, as
        ``delivery_harness.fill_store`` does but at given sizes and with one plaintext
        reused (HPKE's fresh keys make every ciphertext distinct anyway)."""
        keys = keyring.load(self.state / "keys")
        block = random.Random(SEED).randbytes(max(sealed_sizes))
        overhead = len(sealing.seal(b"", record_id=f"{prefix}00000-00000000", content_type=CONTENT_TYPE,
                                    signer=keys.signer, central=keys.central))
        store = RecordStore(self.state / "store", cipher=keys.capture, fsync=False)
        made = []
        try:
            for n, size in enumerate(sealed_sizes):
                record_id = f"{prefix}{n:05d}-{os.urandom(4).hex()}"
                sealed = sealing.seal(block[:max(0, size - overhead)], record_id=record_id,
                                      content_type=CONTENT_TYPE, signer=keys.signer, central=keys.central)

                def closing(tx, record_id=record_id):
                    tx.journal("station.enrollment.completed", {"record": record_id})

                store.commit_record(record_id, f"S{n}", CONTENT_TYPE, sealed, {"n": n}, closing)
                made.append(Sealed(record_id, hashlib.sha256(sealed).hexdigest(), len(sealed)))
        finally:
            store.close()
        os.sync()
        return made

    def undeliver(self, records: list[Sealed]) -> None:
        """Clear the delivery marks of ``records`` (the uplink is stopped), so a fresh collector
        receives the same backlog again."""
        db = sqlite3.connect(self.state / "store" / "store.db")
        try:
            db.executemany("UPDATE records SET delivered_ns=NULL, receipt=NULL WHERE record_id=?",
                           [(r.record_id,) for r in records])
            db.commit()
        finally:
            db.close()

    def delivered_ns(self) -> list[int | None]:
        db = sqlite3.connect(f"file:{self.state / 'store' / 'store.db'}?mode=ro", uri=True)
        try:
            return [row[0] for row in db.execute("SELECT delivered_ns FROM records")]
        finally:
            db.close()

    def close(self) -> None:
        shutil.rmtree(self.run, ignore_errors=True)


class IdleUplink:
    """A real ``station-uplink`` started without an endpoint, so that it is up, its store
    open, before the measurement; ``connect`` gives it the collector (config + SIGHUP)."""

    def __init__(self, station: Station, central: Central, tuning: dict[str, Any]):
        defaults = packaged("uplink")
        config = {key: defaults[key] for key in ("backoff", "heartbeat_s", "stall_s", "confirm", "window",
                                                 "chunk_bytes", "event_batch")}
        config.update(tuning)
        self.process = UplinkProcess(station.env, station.etc, central, endpoints=[], extra=config)
        self.station = station
        self.config = {k: v for k, v in self.process.config.items() if k != "collector"}

    def start(self, ctx: zmq.Context) -> None:
        self.process.start()
        client = CommandClient(ctx, f"ipc://{self.station.run}/uplink.cmd", name="uplink")
        try:
            def idle_with_store() -> bool:
                if self.process.proc.poll() is not None:
                    raise RuntimeError(f"station-uplink exited: {self.process.log_text()[-2000:]}")
                try:
                    status = client.call("state", timeout_s=1).result["status"]
                except StationError:  # not answering yet: the next poll asks again
                    return False
                return status.get("link") == "idle" and bool(status.get("backlog"))
            wait_for(idle_with_store, 30, "the uplink up with its store open", interval_s=0.1)
        finally:
            client.close()

    def status(self, ctx: zmq.Context) -> dict[str, Any]:
        client = CommandClient(ctx, f"ipc://{self.station.run}/uplink.cmd", name="uplink")
        try:
            return client.call("state", timeout_s=5).result["status"]
        finally:
            client.close()

    def connect(self, endpoint: str) -> None:
        self.process.config["collector"]["endpoints"] = [endpoint]
        (self.station.etc / "uplink.yaml").write_text(yaml.safe_dump(self.process.config))
        self.process.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.stop(signal.SIGKILL)


def start_central(root: Path, bundles: list[Path], storage: dict[str, Any],
                  before: Callable[[Central], None] | None = None) -> Central:
    """A real ``station-collector serve`` allowing ``bundles``, up and listening (its
    storage opened); ``before`` runs between ``init`` and the start."""
    central = Central(root, bundles, extra={"storage": storage})
    if before is not None:
        before(central)
    central.start()
    wait_for(lambda: "listening on" in central.log_text() or central.proc.poll() is not None, 120,
             "the collector listening")
    if central.proc.poll() is not None:
        raise RuntimeError(f"station-collector serve exited: {central.log_text()[-1500:]}")
    return central


def stop_central(central: Central) -> None:
    central.stop()
    shutil.rmtree(central.run, ignore_errors=True)  # the harness's short runtime dir in /tmp


def check_embedded(central: Central, expected: list[Sealed]) -> dict[str, int]:
    """Count the embedded storage's own index rows and files against what was sent."""
    db = sqlite3.connect(central.data_dir / "collector.db")
    try:
        rows = db.execute("SELECT record_id, sha256, path FROM records").fetchall()
    finally:
        db.close()
    copies: collections.Counter = collections.Counter()
    wanted = {s.record_id: s.sha256 for s in expected}
    for record_id, sha256, path in rows:
        file = central.data_dir / path
        if file.exists() and sha256 == wanted.get(record_id) and \
                hashlib.sha256(file.read_bytes()).hexdigest() == sha256:
            copies[record_id] += 1
    indexed = {str(central.data_dir / path) for _, _, path in rows}
    stray = [p for p in (central.data_dir / "records").rglob("*") if p.is_file() and str(p) not in indexed]
    return {"found": len(copies), "lost": sum(1 for r in wanted if copies[r] == 0),
            "duplicated": sum(max(0, c - 1) for c in copies.values()),
            "unexpected": sum(1 for r, _, _ in rows if r not in wanted), "stray_files": len(stray)}


# -- (a) raw pyzmq sender and receivers (each in a spawned process) ------------------------------
def raw_receiver(conn, secret: bytes, durable_dir: str | None, batch_max: int) -> None:
    """ROUTER, CURVE server. Acks each message (transport) or each durable batch."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_SECRETKEY, secret)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    done_pull = ctx.socket(zmq.PULL)
    done_pull.bind("inproc://written")
    conn.send(router.getsockopt(zmq.LAST_ENDPOINT).decode())
    jobs: queue.Queue = queue.Queue()
    counts = {"messages": 0, "bytes": 0, "batches": 0}

    def writer() -> None:
        push = ctx.socket(zmq.PUSH)
        push.connect("inproc://written")
        directory = os.open(durable_dir, os.O_RDONLY | os.O_DIRECTORY)
        while (batch := jobs.get()) is not None:
            fds = []
            for _, index, payload in batch:
                fd = os.open(os.path.join(durable_dir, index.hex()), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                fds.append(fd)
            for fd in fds:
                os.fsync(fd)
                os.close(fd)
            os.fsync(directory)
            push.send_pyobj([(identity, index) for identity, index, _ in batch])
        os.close(directory)
        push.close()

    thread = threading.Thread(target=writer, daemon=True) if durable_dir else None
    if thread:
        thread.start()
    pending: list = []
    writing = False
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(done_pull, zmq.POLLIN)
    running = True
    cpu = time.process_time()
    while running:
        for sock, _ in poller.poll(1000):
            if sock is done_pull:
                for identity, index in done_pull.recv_pyobj():
                    router.send_multipart([identity, index])
                counts["batches"] += 1
                writing = False
                continue
            while True:
                try:
                    identity, index, *rest = router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                identity, index = identity.bytes, index.bytes
                if index == b"bye":
                    running = False
                    break
                if index == b"hello":
                    router.send_multipart([identity, b"hello"])
                    continue
                counts["messages"] += 1
                counts["bytes"] += len(rest[0])
                if thread is None:
                    router.send_multipart([identity, index])
                else:
                    pending.append((identity, index, rest[0].buffer))
        if thread is not None and pending and not writing:
            jobs.put(pending[:batch_max])
            pending = pending[batch_max:]
            writing = True
    if thread is not None:
        jobs.put(None)
        thread.join(10)
    counts["cpu_s"] = time.process_time() - cpu
    conn.send(counts)
    router.close()
    done_pull.close()
    ctx.term()


def raw_sender(conn, endpoint: str, server_key: bytes, paths: list[str], window_bytes: int) -> None:
    """DEALER, CURVE client: one message per record file, at most ``window_bytes`` unacknowledged."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    public, secret = zmq.curve_keypair()
    dealer.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    dealer.setsockopt(zmq.CURVE_PUBLICKEY, public)
    dealer.setsockopt(zmq.CURVE_SECRETKEY, secret)
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.setsockopt(zmq.SNDHWM, 0)
    started, cpu = time.monotonic(), time.process_time()
    dealer.connect(endpoint)
    dealer.send_multipart([b"hello"])
    if not dealer.poll(10_000):
        conn.send({"error": "no answer to hello"})
        return
    dealer.recv_multipart()
    inflight: dict[int, int] = {}
    sent = 0
    while sent < len(paths) or inflight:
        # as the uplink's window: a message goes if it fits, or if nothing is in flight
        while sent < len(paths) and (not inflight or
                                     sum(inflight.values()) + os.path.getsize(paths[sent]) <= window_bytes):
            with open(paths[sent], "rb") as f:
                payload = f.read()
            dealer.send_multipart([sent.to_bytes(8, "big"), payload], copy=False)
            inflight[sent] = len(payload)
            sent += 1
        if not dealer.poll(30_000):
            conn.send({"error": f"no ack for 30 s with {len(inflight)} in flight"})
            return
        while True:
            try:
                (index,) = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            inflight.pop(int.from_bytes(index, "big"), None)
    seconds = time.monotonic() - started
    dealer.send_multipart([b"bye"])
    conn.send({"seconds": seconds, "cpu_s": time.process_time() - cpu})
    dealer.close()
    ctx.term()


def run_raw(paths: list[str], window_bytes: int, durable_dir: Path | None, batch_max: int) -> dict[str, Any]:
    spawn = mp.get_context("spawn")
    public, secret = zmq.curve_keypair()
    recv_end, recv_child = spawn.Pipe()
    send_end, send_child = spawn.Pipe()
    receiver = spawn.Process(target=raw_receiver, args=(recv_child, secret, str(durable_dir) if durable_dir else None,
                                                       batch_max))
    receiver.start()
    sender = None
    try:
        if not recv_end.poll(30):
            raise RuntimeError("raw receiver did not start")
        endpoint = recv_end.recv()
        sender = spawn.Process(target=raw_sender, args=(send_child, endpoint, public, paths, window_bytes))
        sender.start()
        if not send_end.poll(600):
            raise RuntimeError("raw sender did not finish in 600 s")
        result = send_end.recv()
        if "error" in result:
            raise RuntimeError(f"raw sender: {result['error']}")
        if not recv_end.poll(30):
            raise RuntimeError("raw receiver did not report")
        counts = recv_end.recv()
    finally:
        for process in (sender, receiver):
            if process is not None:
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join()
    total = counts["bytes"]
    return {"seconds": round(result["seconds"], 3), "mb_per_s": round(total / result["seconds"] / 1e6, 1),
            "cpu_s": {"sender": round(result["cpu_s"], 2), "receiver": round(counts["cpu_s"], 2)},
            "records": counts["messages"], "bytes": total,
            **({"fsync_batches": counts["batches"]} if durable_dir else {})}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (every thread), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_ours(top: Path, station: Station, records: list[Sealed], tuning: dict[str, Any],
               ctx: zmq.Context) -> dict[str, Any]:
    """One drain by the real daemons into a fresh collector; the station's delivery marks
    are cleared first, so every round delivers the same backlog."""
    station.undeliver(records)
    central = start_central(top, [station.bundle], {"backend": "embedded", "fsync": True})
    uplink = IdleUplink(station, central, tuning)
    try:
        uplink.start(ctx)
        pids = {"uplink": uplink.process.proc.pid, "collector": central.proc.pid}
        cpu = {name: -process_cpu_s(pid) for name, pid in pids.items()}
        started_wall = time.time_ns()
        uplink.connect(f"tcp://127.0.0.1:{central.port}")
        wait_for(lambda: all(station.delivered_ns()), 600, "every record delivered", interval_s=0.2)
        seconds = (max(station.delivered_ns()) - started_wall) / 1e9
        cpu = {name: cpu[name] + process_cpu_s(pid) for name, pid in pids.items()}
    finally:
        uplink.stop()
        stop_central(central)
    total = sum(r.size for r in records)
    return {"seconds": round(seconds, 3), "mb_per_s": round(total / seconds / 1e6, 1),
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()}, **check_embedded(central, records),
            "uplink_config": uplink.config}


def run_drain(top: Path, count: int, rounds: int, tuning: dict[str, Any], ctx: zmq.Context) -> dict[str, Any]:
    progress(f"(a) sealing {count} records of 0.5-1 MB into a station store")
    _, central_pub = keyring.write_central_pair(top / "central-keys")
    station = Station(top / "station", "VN-HP-0001", central_pub.read_bytes())
    rng = random.Random(SEED)
    records = station.fill([rng.randint(500_000, 1_000_000) for _ in range(count)], "D")
    total = sum(r.size for r in records)
    paths = [str(station.state / "store" / "records" / f"{r.record_id}.sealed") for r in records]
    window_bytes = {**packaged("uplink"), **tuning}["window"]["bytes"]
    batch_max = packaged("collector")["batch_max"]
    rows = []
    try:
        for n in range(rounds):
            # Each round writes ~2 x the backlog; nothing is deleted until the end (deleting
            # on this `discard`-mounted disk would trim under the next measurement).
            progress(f"(a) round {n + 1}/{rounds}: raw pyzmq CURVE transport, {mb(total)} MB")
            transport = run_raw(paths, window_bytes, None, batch_max)
            durable_dir = top / f"durable-{n}"
            durable_dir.mkdir()
            os.sync()
            progress(f"(a) round {n + 1}/{rounds}: raw pyzmq CURVE, receiver fsyncs each batch (durable limit)")
            durable = run_raw(paths, window_bytes, durable_dir, batch_max)
            os.sync()
            progress(f"(a) round {n + 1}/{rounds}: station-uplink -> station-collector serve (embedded, fsync on)")
            ours = drain_ours(top / f"central-{n}", station, records, tuning, ctx)
            rows.append({"transport": transport, "durable_limit": durable, "ours": ours,
                         "ratio": round(durable["seconds"] / ours["seconds"], 3),
                         "ratio_vs_transport": round(transport["seconds"] / ours["seconds"], 3)})
            progress(f"(a) round {n + 1}: ours {ours['mb_per_s']} MB/s, durable limit {durable['mb_per_s']} MB/s, "
                     f"transport {transport['mb_per_s']} MB/s")
    finally:
        station.close()
    config = rows[-1]["ours"].pop("uplink_config")
    for row in rows[:-1]:
        row["ours"].pop("uplink_config")
    return {
        # per-round ratios (each round's three runs back to back), their median
        "ratio": round(statistics.median(r["ratio"] for r in rows), 3),
        "ratio_vs_transport": round(statistics.median(r["ratio_vs_transport"] for r in rows), 3),
        "rounds": rows, "records": count, "bytes": total,
        "record_bytes": {"min": min(r.size for r in records), "max": max(r.size for r in records),
                         "mean": round(total / count)},
        "uplink_config": config, "window_bytes_raw": window_bytes,
        "collector": {"storage": "embedded", "fsync": True, "batch_max": batch_max},
        "station_store_fsync": packaged("controller")["store"]["fsync"],
    }


# -- (b) the emulated 4G link --------------------------------------------------------------------
def deliver_over_link(top: Path, station: Station, records: list[Sealed], tuning: dict[str, Any],
                      params: dict[str, Any], ctx: zmq.Context) -> dict[str, Any]:
    """``records`` (undelivered again) through a fresh ``EmulatedLink`` to a fresh collector;
    timed from the relay accepting the uplink's first connection to the last ``delivered_ns``."""
    station.undeliver(records)
    total = sum(r.size for r in records)
    central = start_central(top, [station.bundle], {"backend": "embedded", "fsync": True})
    uplink = IdleUplink(station, central, tuning)
    try:
        uplink.start(ctx)
        with EmulatedLink(target=("127.0.0.1", central.port), **params) as path:
            uplink.connect(f"tcp://{path.address[0]}:{path.address[1]}")
            wait_for(lambda: all(station.delivered_ns()), 3 * total * 8 / (params["rate_mbit"] * 1e6) + 120,
                     "every record delivered over the link", interval_s=0.2)
            finished = wall_to_monotonic(max(station.delivered_ns()))
            began = path.connections()[0]
            delays = path.reconnect_delays(until=finished)
            status = uplink.status(ctx)
            holes = [start for start in path.blackhole_starts(finished) if start >= began]
            connections = len([t for t in path.connections() if t <= finished])
    finally:
        uplink.stop()
        stop_central(central)
    detected = [d for d in delays if d is not None]
    seconds = finished - began
    return {"seconds": round(seconds, 3), "mbit_s": round(total * 8 / seconds / 1e6, 3), "records": len(records),
            "bytes": total, "blackholes": len(holes), "connections": connections,
            "reconnect_delays_s": [None if d is None else round(d, 2) for d in delays],
            # the slowest detection, None if a hole passed unnoticed (or no hole came)
            "stall_detect_s": round(max(detected), 2) if delays and len(detected) == len(delays) else None,
            "bytes_sent": status["bytes_sent"], "stalls": status["stalls"],
            "records_duplicate": status["records_duplicate"], **check_embedded(central, records),
            "uplink_config": uplink.config}


def run_lossy(top: Path, count: int, tuning: dict[str, Any], ctx: zmq.Context) -> dict[str, Any]:
    progress(f"(b) sealing {count} records of the demo's sizes")
    _, central_pub = keyring.write_central_pair(top / "central-keys")
    station = Station(top / "station", "VN-HP-0002", central_pub.read_bytes())
    records = station.fill([DEMO_SEALED_BYTES[n % len(DEMO_SEALED_BYTES)] for n in range(count)], "L")
    total = sum(r.size for r in records)
    line_s = total * 8 / (LINK["rate_mbit"] * 1e6)
    # The first hole early enough that every transfer meets it, the next well inside a long one.
    params = dict(LINK, first_blackhole_s=5.0 if line_s > 20 else round(max(1.0, line_s / 4), 1))
    try:
        progress(f"(b) station-uplink (tuned) over the emulated link, {mb(total)} MB ({line_s:.0f} s of line time)")
        tuned = deliver_over_link(top / "central-tuned", station, records, tuning, params, ctx)
        progress("(b) station-uplink (packaged config) over the same link")
        packaged_run = deliver_over_link(top / "central-packaged", station, records, {}, params, ctx)
        # The packaged stall_s outlasts a 5 s hole; one longer hole under load shows its detection.
        probe_params = dict(LINK, blackhole_s=STALL_PROBE_HOLE_S, first_blackhole_s=3.0)
        probe_records = records[:max(1, int(14e6 / total * count))]  # ~11 s of line time
        progress(f"(b) packaged config, one {STALL_PROBE_HOLE_S:g} s hole (stall detection)")
        probe = deliver_over_link(top / "central-probe", station, probe_records, {}, probe_params, ctx)
    finally:
        station.close()
    progress(f"(b) plain TCP bulk transfer of the same {mb(total)} MB over the same link parameters")
    baseline = tcp_bulk_baseline(lambda target: EmulatedLink(target=target, **params), total,
                                 deadline_s=3 * line_s + 120)
    # The headline figures are the uplink as it ships (packaged config); the tuned run shows
    # what a 4G-specific config changes.
    return {
        "lossy_ratio": round(baseline["seconds"] / packaged_run["seconds"], 3),
        "stall_detect_s": probe["stall_detect_s"],
        "ours": packaged_run, "baseline": baseline,
        "stall_probe": {"link": probe_params, **{k: v for k, v in probe.items() if k != "uplink_config"}},
        "tuned_config": {"lossy_ratio": round(baseline["seconds"] / tuned["seconds"], 3), **tuned},
        "record_bytes": sorted(set(DEMO_SEALED_BYTES)), "link": params,
    }


# -- (c) fan-in: simulated stations ----------------------------------------------------------------
@dataclasses.dataclass
class FleetStation:
    station_id: str
    public: bytes
    secret: bytes
    bundle_pem: str
    records: list[tuple[Sealed, bytes]]


def make_fleet(stations: int, per_station: int, central_pub: bytes) -> list[FleetStation]:
    """Stations provisioned as ``keyring.provision`` does (signing keys, CURVE pair, public
    bundle with its Curve-Key), kept in memory; each seals its own records."""
    central = sealing.CentralPublicKey.from_pem(central_pub)
    block = random.Random(SEED).randbytes(FAN_IN_RECORD_BYTES)
    fleet = []
    for n in range(stations):
        station_id = f"VN-SIM-{n:04d}"
        signer = sealing.StationSigner.generate(station_id)
        public, secret = zmq.curve_keypair()
        bundle = dataclasses.replace(signer.public(), curve_key=public.decode()).to_pem()
        records = []
        for k in range(per_station):
            record_id = f"F{n:04d}-{k:02d}-{os.urandom(4).hex()}"
            sealed = sealing.seal(block, record_id=record_id, content_type=CONTENT_TYPE, signer=signer,
                                  central=central)
            records.append((Sealed(record_id, hashlib.sha256(sealed).hexdigest(), len(sealed)), sealed))
        fleet.append(FleetStation(station_id, public, secret, bundle, records))
    return fleet


class SimulatedStation:
    """One station's uplink, reduced to delivery: hello, then its records offered and sent in
    pieces under its own ``Window``, each retried until the collector answers ``stored``
    (a retryable error puts it back in the queue; silence for ``SIM_STALL_S`` reconnects)."""

    def __init__(self, ctx: zmq.Context, fleet: FleetStation, endpoint: str, server_key: str,
                 uplink_defaults: dict[str, Any]):
        self.ctx, self.fleet, self.endpoint, self.server_key = ctx, fleet, endpoint, server_key.encode()
        window = uplink_defaults["window"]
        self.window = Window(window["bytes"], window["records"], uplink_defaults["chunk_bytes"])
        self.blobs = {sealed.record_id: (sealed, blob) for sealed, blob in fleet.records}
        self.todo: collections.deque = collections.deque((0.0, r) for r in self.blobs)  # (not before, id)
        self.stored: dict[str, bool] = {}      # record id -> answered as a duplicate
        self.refused: dict[str, str] = {}
        self.socket: zmq.Socket | None = None
        self.welcomed = False
        self.last_heard = self.last_sent = 0.0
        self.counters: collections.Counter = collections.Counter()
        self.finished_at: float | None = None

    @property
    def done(self) -> bool:
        return len(self.stored) + len(self.refused) == len(self.blobs)

    def connect(self, now: float) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.fleet.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.fleet.secret)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(self.endpoint)
        self.socket, self.welcomed, self.last_heard = sock, False, now
        self.counters["connects"] += 1
        self.send(link.encode("hello", station=self.fleet.station_id, boot=f"sim{self.counters['connects']}",
                              v=link.PROTOCOL, status={}), now)

    def reconnect(self, now: float) -> None:
        self.socket.close(linger=0)
        self.window.clear()
        waiting = {r for _, r in self.todo}
        self.todo.extend((now + SIM_RETRY_S, r) for r in self.blobs
                         if r not in self.stored and r not in self.refused and r not in waiting)
        self.connect(now)

    def send(self, frames: list, now: float) -> None:
        self.socket.send_multipart(frames, copy=False)
        self.last_sent = now

    def receive(self, now: float) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.last_heard = now
            message = link.decode(frames, link.COLLECTOR_OPS)
            record = message.header.get("record")
            if message.op == "welcome":
                self.welcomed = True
            elif message.op == "want":
                self.window.want(record, message["offset"])
            elif message.op == "chunk.ack":
                self.window.acked(record, message["offset"])
            elif message.op == "stored":
                transfer = self.window.finish(record)
                if transfer is not None and transfer.sha256 == message["sha256"]:
                    self.stored[record] = bool(message.header.get("duplicate"))
            elif message.op == "error":
                self.counters[f"error:{message['code']}"] += 1
                if record:
                    self.window.finish(record)
                    if message["retryable"]:
                        self.todo.append((now + SIM_RETRY_S, record))
                    else:
                        self.refused[record] = message["code"]
        if self.done and self.finished_at is None:
            self.finished_at = now
        self.pump(now)

    def pump(self, now: float) -> None:
        if not self.welcomed:
            return
        for _ in range(len(self.todo)):
            if not self.window.can_start():
                break
            ready_at, record = self.todo.popleft()
            if ready_at > now or record in self.stored or record in self.window:
                if record not in self.stored:
                    self.todo.append((ready_at, record))
                continue
            sealed, _ = self.blobs[record]
            self.window.start(record, sealed.sha256, sealed.size)
            self.send(link.encode("offer", record=record, sha256=sealed.sha256, size=sealed.size), now)
        for transfer, offset, length in self.window.next_pieces():
            _, blob = self.blobs[transfer.record_id]
            self.send(link.encode("chunk", memoryview(blob)[offset:offset + length], record=transfer.record_id,
                                  sha256=transfer.sha256, size=transfer.size, offset=offset,
                                  final=offset + length >= transfer.size), now)

    def tick(self, now: float) -> None:
        if self.socket is None:
            self.connect(now)
        elif now - self.last_heard > SIM_STALL_S:
            self.counters["stalls"] += 1
            self.reconnect(now)
        elif now - self.last_sent > SIM_HEARTBEAT_S:
            self.send(link.encode("ping"), now)
        if self.todo:
            self.pump(now)


def drive(stations: list[SimulatedStation], deadline_s: float) -> tuple[float, float]:
    """All stations in one poll loop until each is done; (first connect, last ``stored``)."""
    poller = zmq.Poller()
    by_socket: dict[zmq.Socket, SimulatedStation] = {}
    began = time.monotonic()
    while not all(s.done for s in stations):
        now = time.monotonic()
        if now - began > deadline_s:
            raise TimeoutError(f"{sum(not s.done for s in stations)} station(s) not done after {deadline_s:.0f} s")
        for station in stations:
            before = station.socket
            station.tick(now)
            if station.socket is not before:
                if before is not None:
                    poller.unregister(before)
                    by_socket.pop(before, None)
                poller.register(station.socket, zmq.POLLIN)
                by_socket[station.socket] = station
        for sock, _ in poller.poll(10):
            by_socket[sock].receive(time.monotonic())
    return began, max(s.finished_at for s in stations)


async def _read_records_stream(urls: list[str]) -> list[tuple[str, str, str]]:
    """(subject, Nats-Msg-Id, sha256 of the body) of every message in the records stream."""
    import nats
    import nats.js.errors
    from station.collector import jetstream
    nc = await nats.connect(urls, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(jetstream.RECORDS_STREAM)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                message = await js.get_msg(jetstream.RECORDS_STREAM, seq)
            except nats.js.errors.NotFoundError:
                continue
            found.append((message.subject, (message.headers or {}).get("Nats-Msg-Id", ""),
                          hashlib.sha256(message.data or b"").hexdigest()))
        return found
    finally:
        await nc.close()


def check_jetstream(urls: list[str], fleet: list[FleetStation]) -> dict[str, int]:
    wanted = {sealed.record_id: (f.station_id, sealed.sha256) for f in fleet for sealed, _ in f.records}
    copies: collections.Counter = collections.Counter()
    unexpected = 0
    for subject, record_id, sha256 in asyncio.run(_read_records_stream(urls)):
        station_id, expected_sha = wanted.get(record_id, (None, None))
        if subject == f"stations.{station_id}.records" and sha256 == expected_sha:
            copies[record_id] += 1
        else:
            unexpected += 1
    return {"found": len(copies), "lost": sum(1 for r in wanted if copies[r] == 0),
            "duplicated": sum(max(0, c - 1) for c in copies.values()), "unexpected": unexpected}


def fan_in_once(root: Path, fleet: list[FleetStation], storage: dict[str, Any], ctx: zmq.Context,
                check: Callable[[Central], dict[str, int]]) -> dict[str, Any]:
    def allow_fleet(central: Central) -> None:  # what `station-collector allow BUNDLE` writes, 200 times
        stations_dir = central.data_dir / packaged("collector")["stations_dir"]
        stations_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for station in fleet:
            (stations_dir / f"{station.station_id}.pub.pem").write_text(station.bundle_pem)

    central = start_central(root, [], storage, before=allow_fleet)
    try:
        uplink_defaults = packaged("uplink")
        sims = [SimulatedStation(ctx, f, f"tcp://127.0.0.1:{central.port}", central.public_key, uplink_defaults)
                for f in fleet]
        cpu = {"collector": -process_cpu_s(central.proc.pid), "stations": -time.process_time()}
        try:
            began, finished = drive(sims, 600)
            cpu = {"collector": round(cpu["collector"] + process_cpu_s(central.proc.pid), 2),
                   "stations": round(cpu["stations"] + time.process_time(), 2)}
        finally:
            for sim in sims:
                if sim.socket is not None:
                    sim.socket.close(linger=0)
    finally:
        stop_central(central)
    total = sum(len(f.records) for f in fleet)
    counters: collections.Counter = collections.Counter()
    for sim in sims:
        counters.update(sim.counters)
    counted = check(central)
    return {"records_per_s": round(total / (finished - began), 1), "seconds": round(finished - began, 3),
            "cpu_s": cpu, "lost": counted["lost"], "duplicated": counted["duplicated"], "found": counted["found"],
            "unexpected": counted["unexpected"], "records": total,
            "answered_duplicate": sum(sum(s.stored.values()) for s in sims),
            "refused": sum(len(s.refused) for s in sims),
            "connects": counters["connects"], "stalls": counters["stalls"],
            "errors": {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("error:")}}


def run_fan_in(top: Path, stations: int, per_station: int, ctx: zmq.Context) -> dict[str, Any]:
    progress(f"(c) provisioning {stations} stations, sealing {per_station} records of ~100 kB each")
    _, central_pub = keyring.write_central_pair(top / "central-keys")
    fleet = make_fleet(stations, per_station, central_pub.read_bytes())
    expected = [sealed for f in fleet for sealed, _ in f.records]
    result: dict[str, Any] = {"stations": stations, "records_per_station": per_station,
                              "record_bytes": expected[0].size}
    progress(f"(c) {stations} stations -> one collector, embedded storage (fsync on)")
    result["embedded"] = fan_in_once(top / "embedded", fleet, {"backend": "embedded", "fsync": True}, ctx,
                                     lambda central: check_embedded(central, expected))
    progress(f"(c) {stations} stations -> one collector, JetStream (3 nats-server, replicas 3)")
    try:
        from nats_cluster import NatsCluster
        with NatsCluster(3) as cluster:
            storage = {"backend": "jetstream", "nats": cluster.urls, "replicas": 3}
            result["jetstream"] = fan_in_once(top / "jetstream", fleet, storage, ctx,
                                              lambda central: check_jetstream(cluster.urls, fleet))
            result["jetstream"]["nats_server"] = "3 nodes, replicas 3"
    except Exception as exc:  # reported, not fatal: the embedded figures stand on their own
        result["jetstream"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return result


# -- the run ---------------------------------------------------------------------------------------
def problems(out: dict[str, Any], top: Path, kind: str) -> list[str]:
    """What makes a figure doubtful: a record not delivered exactly once, a backend that failed."""
    found = [f"{top} is on {kind}: fsync costs nothing there; use --dir on a disk"] \
        if kind in ("tmpfs", "ramfs") else []
    runs = [(f"drain round {n + 1}", r["ours"]) for n, r in enumerate(out.get("drain", {}).get("rounds", []))]
    if "lossy" in out:
        runs += [("lossy", out["lossy"]["ours"]), ("lossy tuned", out["lossy"]["tuned_config"]),
                 ("stall probe", out["lossy"]["stall_probe"])]
    for backend, figures in out.get("fan_in", {}).items():
        if isinstance(figures, dict) and "error" in figures:
            found.append(f"fan-in {backend}: {figures['error']}")
        elif isinstance(figures, dict):
            runs.append((f"fan-in {backend}", figures))
    for name, figures in runs:
        if figures["lost"] or figures["duplicated"] or figures["unexpected"] or figures.get("stray_files"):
            found.append(f"{name}: {figures['lost']} lost, {figures['duplicated']} duplicated, "
                         f"{figures['unexpected']} unexpected, {figures.get('stray_files', 0)} stray files")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100 records, one round, 60 over the 4G link, 50 stations (under 2 minutes)")
    parser.add_argument("--records", type=int, help="(a) records drained over loopback (default 1000)")
    parser.add_argument("--lossy-records", type=int, help="(b) records over the emulated 4G link (default 300)")
    parser.add_argument("--stations", type=int, help="(c) simulated stations (default 200)")
    parser.add_argument("--records-per-station", type=int, default=5, help="(c) records each (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="(a) rounds of the three drains (default 3)")
    parser.add_argument("--drain-uplink", type=json.loads, default={}, metavar="JSON",
                        help="(a) uplink config keys over the packaged ones, e.g. '{\"chunk_bytes\": 1048576}'")
    parser.add_argument("--lossy-uplink", type=json.loads, default=LOSSY_UPLINK, metavar="JSON",
                        help=f"(b) uplink config keys over the packaged ones (default {json.dumps(LOSSY_UPLINK)})")
    parser.add_argument("--only", choices=("drain", "lossy", "fan-in"), action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (a disk, not tmpfs)")
    args = parser.parse_args(argv)
    records = args.records or (100 if args.quick else 1000)
    lossy_records = args.lossy_records or (60 if args.quick else 300)
    stations = args.stations or (50 if args.quick else 200)
    parts = set(args.only or ("drain", "lossy", "fan-in"))
    top = Path(tempfile.mkdtemp(prefix="uplinkb-", dir=args.dir))
    kind = fs_type(top)
    began = time.monotonic()
    load = [round(x, 2) for x in os.getloadavg()]
    ctx = zmq.Context()
    out: dict[str, Any] = {"benchmark": "uplink"}
    try:
        if "drain" in parts:
            drain = run_drain(top / "drain", records, 1 if args.quick else args.rounds, args.drain_uplink, ctx)
            out.update(ratio=drain.pop("ratio"), ratio_vs_transport=drain.pop("ratio_vs_transport"))
            shutil.rmtree(top / "drain", ignore_errors=True)
        if "lossy" in parts:
            lossy = run_lossy(top / "lossy", lossy_records, args.lossy_uplink, ctx)
            out.update(lossy_ratio=lossy.pop("lossy_ratio"), stall_detect_s=lossy.pop("stall_detect_s"))
            shutil.rmtree(top / "lossy", ignore_errors=True)
        if "fan-in" in parts:
            out["fan_in"] = run_fan_in(top / "fan_in", stations, args.records_per_station, ctx)
        if "drain" in parts:
            out["drain"] = drain
        if "lossy" in parts:
            out["lossy"] = lossy
    finally:
        ctx.destroy(linger=0)
        shutil.rmtree(top, ignore_errors=True)
    goal_met: dict[str, bool | None] = {}
    if "drain" in parts:
        goal_met["ratio>=0.8"] = out["ratio"] >= GOAL_RATIO
    if "lossy" in parts:
        goal_met["lossy_ratio>=0.9"] = out["lossy_ratio"] >= GOAL_LOSSY_RATIO
        goal_met["stall_detect_s<=10"] = out["stall_detect_s"] is not None and out["stall_detect_s"] <= GOAL_STALL_S
    if "fan-in" in parts:
        for backend in ("embedded", "jetstream"):
            figures = out["fan_in"][backend]
            goal_met[f"fan_in.{backend}.lost=0,duplicated=0"] = \
                None if "error" in figures else figures["lost"] == 0 and figures["duplicated"] == 0
    out["goal_met"] = goal_met
    out["goals_met"] = all(goal_met.values())
    out["filesystem"] = kind
    out["load_average_at_start"] = load  # other work on this machine shows here: the ratios drift with it
    out["problems"] = problems(out, top, kind)
    out["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
