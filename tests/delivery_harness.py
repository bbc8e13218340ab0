"""A station's store filled with sealed records, and central's collector, as real processes.

Used by the uplink, collector and fault tests: the uplink and the gateway run as the
programs a station and a data centre run (``station-uplink``, ``station-collector serve``)
so kills and restarts are real.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import yaml

from station import keyring, programs, sealing
from station.outbox import Outbox
from station.store import RecordStore

BIN = programs.scripts_dir()
STOP_TIMEOUT_S = 10.0  # a gateway or uplink still draining after this is hung


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition", interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def fill_store(state: Path, count: int, size: int = 60_000, *, start: int = 0, fsync: bool = False,
               plaintext: bytes = b"") -> list[str]:
    """Commit ``count`` sealed records of about ``size`` bytes (starting with ``plaintext``),
    each with a journaled event."""
    keys = keyring.load(state / "keys")
    store = RecordStore(state / "store", cipher=keys.capture, fsync=fsync)
    ids = []
    try:
        for n in range(start, start + count):
            record_id = f"R{n:06d}-{os.urandom(3).hex()}"
            sealed = sealing.seal(plaintext + os.urandom(size), record_id=record_id, content_type="application/octet-stream",
                                  signer=keys.signer, central=keys.central)

            def closing(tx, record_id=record_id):
                tx.journal("station.enrollment.completed", {"record": record_id})

            store.commit_record(record_id, f"S{n}", "application/octet-stream", sealed, {"n": n}, closing)
            ids.append(record_id)
    finally:
        store.close()
    return ids


def journal(state: Path, count: int) -> None:
    keys = keyring.load(state / "keys")
    store = RecordStore(state / "store", cipher=keys.capture, fsync=False)
    try:
        for n in range(count):
            with store.transaction() as tx:
                tx.journal("station.test.tick", {"n": n})
    finally:
        store.close()


class Relay:
    """A TCP relay on loopback that keeps a copy of every byte, and can black-hole the path
    (stop forwarding both ways, silently, connections left open: a carrier NAT's habit)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self.connections = 0
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self, on: bool) -> None:
        (self._open.clear if on else self._open.set)()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._open.wait()
                with self._lock:
                    self.captured += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._open.set()
        self.listener.close()


class Program:
    """One of our programs as a process of its own, its output appended to ``log``; a
    subclass sets ``argv``, ``env`` and ``log``. Stopped and started again, it is a restart."""

    argv: list[str]
    env: dict
    log: Path
    process: programs.Program | None = None

    def start(self):
        self.process = programs.Program(self.argv, self.env, self.log, own_session=False).start()
        return self

    @property
    def proc(self) -> subprocess.Popen | None:
        """The running process (``benchmarks/uplink.py`` polls and signals it)."""
        return None if self.process is None else self.process.popen

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """``sig`` and its end; one that outlives SIGTERM by STOP_TIMEOUT_S is killed and fails the test."""
        process, self.process = self.process, None
        if process is None:
            return
        process.stop(STOP_TIMEOUT_S, sig)
        if process.killed:
            raise AssertionError(f"{process.name} did not end within {STOP_TIMEOUT_S:g} s of signal {sig}: "
                                 f"killed; {self.log} ends:\n{process.log_tail()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Central(Program):
    """A collector gateway with its own etc/state/run, allowing the given stations."""

    def __init__(self, root: Path, stations: list[Path], *, port: int | None = None, extra: dict | None = None):
        self.root = root
        self.etc, self.state = root / "etc", root / "state"
        self.run = Path(tempfile.mkdtemp(prefix="col-", dir="/tmp"))
        self.etc.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = {"listen": [f"tcp://127.0.0.1:{self.port}"], "storage": {"fsync": False}, **(extra or {})}
        self.write_config()
        self.env = {**os.environ, "STATION_ETC": str(self.etc), "STATION_STATE": str(self.state),
                    "STATION_RUN": str(self.run)}
        out = self.tool("init")
        self.public_key = out.split('server_key: "')[1].split('"')[0]
        for bundle in stations:
            self.tool("allow", str(bundle))
        self.argv = [str(BIN / "station-collector"), "serve"]
        self.log = root / "collector.log"

    @property
    def data_dir(self) -> Path:
        return self.state / "collector"

    def write_config(self) -> None:
        (self.etc / "collector.yaml").write_text(yaml.safe_dump(self.config))

    def tool(self, *args: str, check: bool = True) -> str:
        result = subprocess.run([str(BIN / "station-collector"), *args], env=self.env, capture_output=True,
                                text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"station-collector {' '.join(args)}: {result.stderr}")
        return result.stdout

    def reload(self) -> None:
        self.process.signal(signal.SIGHUP)

    def records(self) -> dict[str, str]:
        """record id -> sha256 of what the embedded storage holds (from its index and files)."""
        import hashlib
        import sqlite3
        db = sqlite3.connect(self.data_dir / "collector.db")
        try:
            rows = db.execute("SELECT record_id, path, sha256 FROM records").fetchall()
        finally:
            db.close()
        found = {}
        for record_id, path, sha in rows:
            data = (self.data_dir / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha, f"{record_id}: stored bytes do not match the index"
            found[record_id] = sha
        return found

    def events(self, station: str | None = None) -> list[dict]:
        args = ["watch"] + (["--station", station] if station else [])
        return [json.loads(line) for line in self.tool(*args).splitlines()]



class UplinkProcess(Program):
    def __init__(self, env: dict, etc: Path, central: Central | None, *, extra: dict | None = None,
                 endpoints: list[str] | None = None, log: Path | None = None):
        self.env = env
        self.config = {
            "collector": {"endpoints": endpoints if endpoints is not None else [f"tcp://127.0.0.1:{central.port}"],
                          "server_key": central.public_key if central else ""},
            "backoff": {"initial_s": 0.2, "max_s": 1.0}, "heartbeat_s": 0.5, "stall_s": 3.0,
            "confirm": {"after_s": 0, "every_s": 0.5}, **(extra or {})}
        (etc / "uplink.yaml").write_text(yaml.safe_dump(self.config))
        self.log = log or etc.parent / "uplink.log"
        self.argv = [str(BIN / "station-uplink")]


def outbox_state(state: Path) -> dict:
    outbox = Outbox(state / "store", fsync=False)
    try:
        backlog = outbox.backlog()
        rows = outbox.records()
    finally:
        outbox.close()
    return {"backlog": backlog, "delivered": sum(r.delivered_ns is not None for r in rows),
            "confirmed": sum(r.confirmed_ns is not None for r in rows), "records": len(rows)}
