#!/usr/bin/env python3
"""An emulated 4G uplink: 10 Mbit/s, 60 ms each way, black-holed 5 s every 30 s.

How the path is built
---------------------
``EmulatedLink`` starts a userspace TCP relay in a child process (plain ``python`` running
this file with ``--serve``; stdlib only, so it starts in ~0.1 s and never competes for the
GIL of the code under test). The relay listens on ``link.address`` and, for every accepted
connection, opens one to ``target``; each direction then goes through its own emulated path:

* rate: a bottleneck queue served at ``rate_mbit`` (payload counted with TCP/IP headers,
  1500 wire bytes per 1448 payload bytes). The queue holds at most ``queue_bytes``
  (default 256 KiB, about 200 ms at 10 Mbit/s: a modem's buffer); when it is full the relay
  stops reading, so a bulk sender feels backpressure through its own TCP window instead of
  queueing without limit. For the same reason the relay's sockets ask for 64 KiB kernel
  buffers and a 1448-byte MSS (a 1500-byte MTU): with loopback's 64 KiB segments the
  endpoints' kernels would size their send buffers at many MB. A sender nobody reads
  blocks after ~2-3 MB, most of it its own send buffer (Linux sizes it from the
  congestion window, as it would for a real sender on this path).
* delay: every chunk is stamped when it leaves the queue and released ``delay_ms`` later,
  in order; stream bytes are never discarded.
* black hole: windows of ``blackhole_s`` every ``blackhole_every_s`` (the first
  ``first_blackhole_s`` after the link comes up, default one period). Inside a window the
  relay neither reads nor writes in either direction, nor opens the upstream connection of
  a newly accepted one: no RST, no FIN, connections stay open, endpoints see silence, as
  behind a carrier NAT. The path's clock stops: bytes queued or "on the wire" when a
  window opens are neither lost nor early; they move on when it closes.

Why a relay and not the kernel: this kernel has no ``netem`` and this machine no
iptables/nft, so delay and black-holing must be done in userspace anyway, and ``tbf`` on a
veth pair would only shape one leg of a path the relay already terminates, at the cost of
root, a network namespace and qdiscs to tear down. The relay needs none of that; closing
the link (context manager exit, ``close()``, interpreter exit, or the parent dying, which
closes the child's stdin) leaves nothing behind.

Limits of the emulation (what a real black hole does differently): the relay terminates
TCP, so each endpoint's kernel talks to a local peer that keeps ACKing. Kernel-level
detection (TCP keepalive, ``TCP_USER_TIMEOUT``, unacknowledged bytes in ``SIOCOUTQ``) never
sees the hole; only application-level timeouts (ZMTP heartbeats, ack timeouts) do, which is
what a stall detector should use anyway. A ``connect()`` during a hole succeeds at once
(loopback) and then sees silence, where a real one would retransmit SYNs. After a real hole
TCP's retransmission backoff adds up to a few more seconds of silence; here bytes flow as
soon as the hole closes, which favours a plain TCP transfer (the baseline), if anything.
Each endpoint's own kernel send buffer sits in front of the path, as it would on a modem.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process).

Self-check (prints one JSON object on stdout, progress on stderr; about 55 s):

    .venv/bin/python benchmarks/linkemu.py [--mb 20]
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import hashlib
import json
import math
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod

_THIS_FILE = os.path.abspath(__file__)
MSS_BYTES = 1448                             # a 1500-byte MTU with TCP timestamps
WIRE_BYTES_PER_PAYLOAD_BYTE = 1500 / MSS_BYTES   # IP + TCP headers per full segment
DEFAULT_QUEUE_BYTES = 256 * 1024
RELAY_SOCKET_BUFFER = 64 * 1024
CHUNK_BYTES = 8192                           # ~6.8 ms of line time at 10 Mbit/s


# --------------------------------------------------------------------------- schedule


class BlackholeSchedule:
    """Windows ``[first + k*every, first + k*every + length)`` for k = 0, 1, ... (monotonic).

    ``up(t)`` is the path's own clock: monotonic time minus the black-holed time before
    ``t``; it stands still inside a window. ``wall(u)`` is its inverse, the first time
    outside a window at which ``up`` reaches ``u``.
    """

    def __init__(self, epoch: float, length_s: float, every_s: float, first_s: float | None):
        self.length = float(length_s or 0.0)
        self.every = float(every_s or 0.0)
        self.enabled = self.length > 0 and self.every > 0
        if self.enabled and self.length >= self.every:
            raise ValueError("blackhole_s must be shorter than blackhole_every_s")
        self.first = epoch + (self.every if first_s is None else float(first_s))

    def window(self, k: int) -> tuple[float, float]:
        start = self.first + k * self.every
        return start, start + self.length

    def _index(self, t: float) -> int:
        return math.floor((t - self.first) / self.every) if t >= self.first else -1

    def hole_end(self, t: float) -> float | None:
        """The end of the window ``t`` is in, or None if the path is up at ``t``."""
        if not self.enabled:
            return None
        k = self._index(t)
        if k < 0:
            return None
        start, end = self.window(k)
        return end if start <= t < end else None

    def windows_started(self, t: float) -> list[tuple[float, float]]:
        if not self.enabled:
            return []
        return [self.window(k) for k in range(self._index(t) + 1)]

    def up(self, t: float) -> float:
        if not self.enabled or t < self.first:
            return t
        k = self._index(t)
        return t - k * self.length - min(self.length, t - self.window(k)[0])

    def wall(self, u: float) -> float:
        if not self.enabled or u < self.first:
            return u
        span = self.every - self.length
        k = math.floor((u - self.first) / span)
        x = max(0.0, (u - self.first) - k * span)
        return self.first + k * self.every + self.length + x


# --------------------------------------------------------------------------- relay (child)

_EOF = "eof"
_RESET = "reset"


async def _ready(sock: socket.socket, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await fut
    finally:
        try:
            (loop.remove_writer if write else loop.remove_reader)(fd)
        except (OSError, ValueError):   # the socket was closed meanwhile
            pass


def _abort(sock: socket.socket) -> None:
    """Close with RST (how a refused or broken connection looks to the other end)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _tune(sock: socket.socket) -> None:
    """Small kernel buffers and a 1500-byte-MTU segment size on the relay's sockets.

    Loopback's 64 KiB MSS would let an endpoint's kernel grow its send buffer to several
    MB (it sizes it in segments); with the MSS of a real path, a sender that is not being
    read blocks after a few hundred KB, as it would behind a modem."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RELAY_SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_SOCKET_BUFFER)


class _Relay:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.target = tuple(cfg["target"])
        self.bytes_per_s = cfg["rate_mbit"] * 1e6 / 8
        self.delay = cfg["delay_ms"] / 1000.0
        self.queue_bytes = cfg["queue_bytes"]
        # What one direction may hold in all: the queue, the bytes "on the wire" (rate x
        # delay) and a chunk; beyond that a receiver that stops reading stops the sender.
        self.pending_cap = self.queue_bytes + self.bytes_per_s * self.delay + CHUNK_BYTES
        self.sched: BlackholeSchedule
        self.tasks: set[asyncio.Task] = set()
        self.next_id = 0

    def emit(self, **event) -> None:
        try:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):   # the parent is gone; stdin EOF stops us
            pass

    async def wait_path_up(self) -> None:
        while (end := self.sched.hole_end(now := time.monotonic())) is not None:
            await asyncio.sleep(end - now)

    async def sleep_until_up(self, u: float) -> None:
        """Until the path's clock reaches ``u`` (and the path is up)."""
        while True:
            now = time.monotonic()
            end = self.sched.hole_end(now)
            if end is not None:
                await asyncio.sleep(end - now)
            elif self.sched.up(now) >= u:
                return
            else:
                await asyncio.sleep(max(0.0, self.sched.wall(u) - now))

    async def send_all(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await self.wait_path_up()
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                await _ready(sock, write=True)
                continue
            view = view[sent:]

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.cfg["host"] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _tune(listener)   # accepted sockets inherit buffers and MSS (advertised in the SYN-ACK)
        listener.bind((self.cfg["host"], 0))
        listener.listen(128)
        listener.setblocking(False)
        epoch = time.monotonic()
        self.sched = BlackholeSchedule(epoch, self.cfg["blackhole_s"], self.cfg["blackhole_every_s"],
                                       self.cfg["first_blackhole_s"])
        stop = loop.create_future()

        def on_stdin() -> None:  # the parent closes our stdin (or dies): stop
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data and not stop.done():
                stop.set_result(None)

        loop.add_reader(0, on_stdin)
        self.emit(ev="listening", host=self.cfg["host"], port=listener.getsockname()[1], epoch=epoch)
        acceptor = asyncio.create_task(self.accept_loop(listener))
        await stop
        acceptor.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(acceptor, *self.tasks, return_exceptions=True)
        listener.close()

    async def accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(listener)
            self.next_id += 1
            self.emit(ev="accept", id=self.next_id, t=time.monotonic())
            task = asyncio.create_task(self.handle(client, self.next_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def handle(self, client: socket.socket, cid: int) -> None:
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = None
        how = "closed"
        pipes: list[_Pipe] = []
        tasks: list[asyncio.Task] = []
        try:
            await self.wait_path_up()   # not even a SYN crosses a black hole
            upstream = socket.socket(client.family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            _tune(upstream)
            try:
                await loop.sock_connect(upstream, self.target)
            except OSError as exc:
                how = f"connect failed: {exc}"
                return
            self.emit(ev="open", id=cid, t=time.monotonic())
            pipes = [_Pipe(self, client, upstream), _Pipe(self, upstream, client)]
            tasks = [asyncio.create_task(p.run()) for p in pipes]
            pending = set(tasks)
            while pending and how == "closed":
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None or task.result() is _RESET:
                        how = "reset"   # propagate: both ends see a reset connection
        except asyncio.CancelledError:
            how = "relay stopped"
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sock in (client, upstream):
                if sock is not None and how in ("closed", "relay stopped"):
                    sock.close()
                elif sock is not None:
                    _abort(sock)
            self.emit(ev="close", id=cid, t=time.monotonic(), how=how,
                      up_bytes=pipes[0].delivered if pipes else 0,
                      down_bytes=pipes[1].delivered if pipes else 0)


class _Pipe:
    """One direction: read -> bottleneck queue at the rate -> delay line -> write."""

    def __init__(self, relay: _Relay, src: socket.socket, dst: socket.socket):
        self.relay, self.src, self.dst = relay, src, dst
        self.queue: collections.deque = collections.deque()   # (release at, path clock; item)
        self.pending = 0          # bytes read and not yet written
        self.free_at = 0.0        # path clock when the bottleneck has sent all it holds
        self.delivered = 0
        self.has_data = asyncio.Event()
        self.drained = asyncio.Event()

    def put(self, item, release_at: float) -> None:
        self.queue.append((release_at, item))
        if isinstance(item, bytes):
            self.pending += len(item)
        self.has_data.set()

    async def read_side(self) -> None:
        r = self.relay
        while True:
            await r.wait_path_up()
            while True:   # room in the modem queue, and the far end is keeping up?
                if self.pending >= r.pending_cap:
                    self.drained.clear()
                    await self.drained.wait()
                    continue
                backlog = (self.free_at - r.sched.up(time.monotonic())) * r.bytes_per_s
                if backlog < r.queue_bytes:
                    break
                target = r.sched.up(time.monotonic()) + (backlog - r.queue_bytes) / r.bytes_per_s
                await r.sleep_until_up(target + 0.0005)
            await _ready(self.src, write=False)
            await r.wait_path_up()
            try:
                data = self.src.recv(CHUNK_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = None
            self.free_at = max(r.sched.up(time.monotonic()), self.free_at)
            if not data:
                self.put(_EOF if data == b"" else _RESET, self.free_at + r.delay)
                return
            self.free_at += len(data) * WIRE_BYTES_PER_PAYLOAD_BYTE / r.bytes_per_s
            self.put(data, self.free_at + r.delay)

    async def run(self) -> str:
        r = self.relay
        reader = asyncio.create_task(self.read_side())
        try:
            while True:
                while not self.queue:
                    self.has_data.clear()
                    await self.has_data.wait()
                release_at, item = self.queue[0]
                await r.sleep_until_up(release_at)
                if item is _EOF:
                    try:
                        self.dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        return _RESET
                    return _EOF
                if item is _RESET:
                    return _RESET
                await r.send_all(self.dst, item)
                self.queue.popleft()
                self.pending -= len(item)
                self.delivered += len(item)
                self.drained.set()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def _serve(cfg: dict) -> None:
    try:
        asyncio.run(_Relay(cfg).main())
    except (BrokenPipeError, KeyboardInterrupt):
        pass


# --------------------------------------------------------------------------- parent side

_LIVE: "weakref.WeakSet[EmulatedLink]" = weakref.WeakSet()


@atexit.register
def _close_live_links() -> None:
    for link in list(_LIVE):
        link.close()


class EmulatedLink:
    """A TCP listen address (``address``) that forwards to ``target`` over an emulated 4G path.

    Use as a context manager (or ``start()``/``close()``). ``rate_mbit`` and ``delay_ms``
    apply to each direction; ``blackhole_s=0`` disables black holes. Timestamps are
    ``time.monotonic()``.
    """

    def __init__(self, rate_mbit: float = 10.0, delay_ms: float = 60.0, blackhole_s: float = 5.0,
                 blackhole_every_s: float = 30.0, target: tuple[str, int] | None = None, *,
                 first_blackhole_s: float | None = None, queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 host: str = "127.0.0.1", start_timeout_s: float = 10.0):
        if target is None:
            raise ValueError("target=(host, port) is required")
        if rate_mbit <= 0 or delay_ms < 0 or queue_bytes <= 0:
            raise ValueError("rate_mbit and queue_bytes must be positive, delay_ms not negative")
        BlackholeSchedule(0.0, blackhole_s, blackhole_every_s, first_blackhole_s)  # validates
        self.rate_mbit, self.delay_ms = float(rate_mbit), float(delay_ms)
        self.blackhole_s, self.blackhole_every_s = float(blackhole_s), float(blackhole_every_s)
        self.first_blackhole_s = first_blackhole_s
        self.queue_bytes, self.host, self.target = int(queue_bytes), host, (target[0], int(target[1]))
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._conns: dict[int, dict] = {}
        self._errors: list[str] = []
        self.address: tuple[str, int] | None = None
        self.epoch: float | None = None
        self.schedule: BlackholeSchedule | None = None

    # ---- lifecycle

    def __enter__(self) -> "EmulatedLink":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def params(self) -> dict:
        return {"rate_mbit": self.rate_mbit, "delay_ms": self.delay_ms, "blackhole_s": self.blackhole_s,
                "blackhole_every_s": self.blackhole_every_s, "first_blackhole_s": self.first_blackhole_s,
                "queue_bytes": self.queue_bytes}

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        cfg = dict(self.params(), target=list(self.target), host=self.host)
        self._proc = subprocess.Popen([sys.executable, _THIS_FILE, "--serve", json.dumps(cfg)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        _LIVE.add(self)
        try:
            self._reader = threading.Thread(target=self._read_events, name="linkemu-events", daemon=True)
            self._reader.start()
            with self._cond:
                ready = self._cond.wait_for(lambda: self.address is not None or self._proc.poll() is not None,
                                            timeout=self.start_timeout_s)
            if not ready or self.address is None:
                raise RuntimeError(f"link relay did not start (exit code {self._proc.poll()})")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _LIVE.discard(self)
        try:
            proc.stdin.close()          # the relay stops on EOF
        except OSError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        proc.stdout.close()

    def _read_events(self) -> None:
        for line in self._proc.stdout:
            event = json.loads(line)
            with self._cond:
                kind = event.pop("ev")
                if kind == "listening":
                    self.epoch = event["epoch"]
                    self.schedule = BlackholeSchedule(self.epoch, self.blackhole_s, self.blackhole_every_s,
                                                      self.first_blackhole_s)
                    self.address = (event["host"], event["port"])
                elif kind == "accept":
                    self._conns[event["id"]] = {"id": event["id"], "accepted": event["t"], "opened": None,
                                                "closed": None, "how": None, "up_bytes": 0, "down_bytes": 0}
                elif kind == "open":
                    self._conns[event["id"]]["opened"] = event["t"]
                elif kind == "close":
                    self._conns[event["id"]].update(closed=event["t"], how=event["how"],
                                                    up_bytes=event["up_bytes"], down_bytes=event["down_bytes"])
                self._cond.notify_all()

    # ---- black holes

    def blackhole_windows(self, until: float | None = None) -> list[tuple[float, float]]:
        """(start, end) of every window that has started by ``until`` (default: now)."""
        return self.schedule.windows_started(time.monotonic() if until is None else until)

    def blackhole_starts(self, until: float | None = None) -> list[float]:
        return [start for start, _ in self.blackhole_windows(until)]

    def next_blackhole(self, after: float | None = None) -> tuple[float, float] | None:
        """The first window starting after ``after`` (default: now); None if disabled."""
        if not self.schedule.enabled:
            return None
        after = time.monotonic() if after is None else after
        return self.schedule.window(len(self.schedule.windows_started(after)))

    def in_blackhole(self, t: float | None = None) -> bool:
        return self.schedule.hole_end(time.monotonic() if t is None else t) is not None

    # ---- connections

    def connections(self) -> list[float]:
        """Accept time of every connection made to ``address`` so far, in order."""
        with self._cond:
            return [c["accepted"] for c in sorted(self._conns.values(), key=lambda c: c["id"])]

    def connection_log(self) -> list[dict]:
        """Per connection: id, accepted, opened (upstream connected; after any hole),
        closed, how ('closed', 'reset', 'connect failed: ...'), up_bytes, down_bytes
        (delivered; known when closed)."""
        with self._cond:
            return [dict(c) for c in sorted(self._conns.values(), key=lambda c: c["id"])]

    def wait_connections(self, count: int, timeout_s: float) -> bool:
        """Wait until at least ``count`` connections have been accepted (events arrive from
        the relay within milliseconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._conns) >= count, timeout=timeout_s)

    def reconnect_delays(self, until: float | None = None) -> list[float | None]:
        """For each window started so far: seconds from its start to the first connection
        accepted at or after it (None if none yet). With a client that holds one connection
        and reconnects only when it decides the path is dead, this is its stall-detection
        time (compare with ``blackhole_s``: reconnecting after the hole closed may just
        mean it never noticed)."""
        accepts = self.connections()
        delays: list[float | None] = []
        for start in self.blackhole_starts(until):
            later = [t for t in accepts if t >= start]
            delays.append(later[0] - start if later else None)
        return delays


# --------------------------------------------------------------------------- helpers


class _TcpServer(ABC):
    """A threaded TCP server on 127.0.0.1 (``address``), one thread per connection running
    ``serve(conn)``; ``close()`` ends them all."""

    def __init__(self):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = self._sock.getsockname()[:2]
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    @abstractmethod
    def serve(self, conn: socket.socket) -> None:
        """Handle one accepted connection (in its own thread)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        _close_listener(self._sock)
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._thread.join(timeout=2)


class EchoServer(_TcpServer):
    """A threaded TCP echo server on 127.0.0.1 (``address``); ``arrivals`` logs
    (monotonic time, bytes) of everything it receives if ``log=True``."""

    def __init__(self, log: bool = False):
        self.log = log
        self.arrivals: list[tuple[float, int]] = []
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                if self.log:
                    self.arrivals.append((time.monotonic(), len(data)))
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _close_listener(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)   # wakes a thread blocked in accept(); close() does not
    except OSError:
        pass
    sock.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("connection closed")
        buf += data
    return bytes(buf)


class _BulkReceiver(_TcpServer):
    """Counts and hashes one bulk transfer; tells a reconnecting sender where to resume."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.count = 0
        self.hasher = hashlib.sha256()
        self.done_at: float | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._current: socket.socket | None = None
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        try:
            hello = _recv_exact(conn, 1)
            with self._lock:   # a new connection supersedes the old one
                if self._current is not None:
                    try:
                        self._current.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self._current = conn
                offset = self.count
            if hello == b"R":
                conn.sendall(struct.pack("!Q", offset))
            elif offset:
                raise ConnectionError("a fresh transfer after bytes were received")
            while True:
                data = conn.recv(262144)
                if not data:
                    return
                with self._lock:
                    if conn is not self._current:
                        return
                    self.hasher.update(data)
                    self.count += len(data)
                    finished = self.count >= self.total
                    if finished and self.done_at is None:
                        self.done_at = time.monotonic()
                if finished:
                    conn.sendall(struct.pack("!Q", self.count))
                    self.done.set()
                    return
        except OSError:
            return


def tcp_bulk_baseline(link_factory, total_bytes: int, *, chunk_bytes: int = 65536,
                      io_timeout_s: float = 60.0, deadline_s: float | None = None, seed: int = 0) -> dict:
    """A plain TCP bulk transfer of ``total_bytes`` over a fresh ``link_factory(target=...)``.

    One connection, the sender writes everything (no application timeouts: a black hole
    is just waited out), the receiver counts and hashes. Only if the connection breaks
    (an error, or ``io_timeout_s`` without progress) does the sender reconnect and resume
    from the byte count the receiver reports. ``seconds`` runs from the first connect to
    the receiver holding the last byte. Returns bytes, seconds, mbit_s, plus intact (hash
    check), reconnects and blackholes (windows that started during the transfer).
    """
    block = random.Random(seed).randbytes(1 << 20)
    view = memoryview(block)
    expected = hashlib.sha256()
    for pos in range(0, total_bytes, len(block)):
        expected.update(view[: min(len(block), total_bytes - pos)])
    receiver = _BulkReceiver(total_bytes)
    try:
        with link_factory(target=receiver.address) as link:
            started = time.monotonic()
            deadline = None if deadline_s is None else started + deadline_s
            reconnects, fresh = 0, True
            while not receiver.done.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"bulk transfer not done after {deadline_s} s")
                try:
                    with socket.create_connection(link.address, timeout=io_timeout_s) as sock:
                        if fresh:
                            sock.sendall(b"N")
                            pos, fresh = 0, False
                        else:
                            sock.sendall(b"R")
                            (pos,) = struct.unpack("!Q", _recv_exact(sock, 8))
                        while pos < total_bytes:
                            i = pos % len(block)
                            n = min(chunk_bytes, len(block) - i, total_bytes - pos)
                            sock.sendall(view[i:i + n])
                            pos += n
                        _recv_exact(sock, 8)   # the receiver's final count
                except OSError:
                    if not receiver.done.is_set():
                        reconnects += 1
                        time.sleep(0.1)
            seconds = receiver.done_at - started
            holes = [s for s in link.blackhole_starts(receiver.done_at) if s >= started]
    finally:
        receiver.close()
    return {
        "bytes": receiver.count,
        "seconds": round(seconds, 3),
        "mbit_s": round(receiver.count * 8 / seconds / 1e6, 3),
        "intact": receiver.hasher.digest() == expected.digest() and receiver.count == total_bytes,
        "reconnects": reconnects,
        "blackholes": len(holes),
    }


# --------------------------------------------------------------------------- self-check


def measure_rtt(rounds: int = 20, **link_kwargs) -> dict:
    """Ping-pong of 32-byte messages through a link without black holes."""
    times = []
    with EchoServer() as echo, EmulatedLink(target=echo.address, blackhole_s=0, **link_kwargs) as link:
        with socket.create_connection(link.address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(rounds):
                message = struct.pack("!I", i) * 8
                started = time.monotonic()
                sock.sendall(message)
                if _recv_exact(sock, len(message)) != message:
                    raise RuntimeError("echo mismatch")
                times.append(time.monotonic() - started)
    return {"min_ms": round(min(times) * 1000, 1), "median_ms": round(statistics.median(times) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1), "rounds": rounds}


def measure_blackhole(blackhole_s: float = 5.0, first_s: float = 1.5, interval_s: float = 0.01,
                      **link_kwargs) -> dict:
    """Small messages every ``interval_s`` through one window; arrival times at both ends."""
    with EchoServer(log=True) as echo, EmulatedLink(target=echo.address, blackhole_s=blackhole_s,
                                                    first_blackhole_s=first_s, **link_kwargs) as link:
        start, end = link.next_blackhole()
        sent = bytearray()
        echoed = bytearray()
        down: list[tuple[float, int]] = []
        with socket.create_connection(link.address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def read() -> None:
                while data := sock.recv(65536):
                    down.append((time.monotonic(), len(data)))
                    echoed.extend(data)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            seq = 0
            while time.monotonic() < end + 1.0:
                message = struct.pack("!Id", seq, time.monotonic())
                sock.sendall(message)
                sent.extend(message)
                seq += 1
                time.sleep(interval_s)
            sock.shutdown(socket.SHUT_WR)
            reader.join(timeout=10)
        up = echo.arrivals

    def during(log):   # 20 ms of grace for process scheduling at the window's edges
        return sum(n for t, n in log if start + 0.02 <= t < end)

    def longest_gap(log):
        times = [t for t, _ in log]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    return {
        "window_s": [round(start - link.epoch, 3), round(end - link.epoch, 3)],
        "up_bytes_during": during(up),
        "down_bytes_during": during(down),
        "up_longest_gap_s": round(longest_gap(up), 3),
        "down_longest_gap_s": round(longest_gap(down), 3),
        "first_up_after_end_ms": round(min(t for t, _ in up if t >= end) * 1000 - end * 1000, 1),
        "messages": seq,
        "all_echoed_in_order": bytes(echoed) == bytes(sent),
        "connections": len(link.connections()),
    }


def self_check(megabytes: float) -> dict:
    total = int(megabytes * 1e6)
    began = time.monotonic()
    print("rtt ...", file=sys.stderr, flush=True)
    rtt = measure_rtt()
    print("black hole ...", file=sys.stderr, flush=True)
    hole = measure_blackhole()
    print(f"baseline {megabytes} MB without black holes ...", file=sys.stderr, flush=True)
    clean = tcp_bulk_baseline(lambda target: EmulatedLink(target=target, blackhole_s=0), total)
    print(f"baseline {megabytes} MB, 5 s black hole every 30 s, first after 5 s ...", file=sys.stderr, flush=True)
    holed = tcp_bulk_baseline(lambda target: EmulatedLink(target=target, first_blackhole_s=5.0), total)
    return {
        "link": EmulatedLink(target=("127.0.0.1", 1)).params(),
        "rtt": rtt,
        "blackhole": hole,
        "baseline_no_blackholes": clean,
        "baseline_with_blackholes": holed,
        "checks": {
            "rtt_at_least_120ms": rtt["min_ms"] >= 120.0,
            "rate_limited_near_10mbit": 8.5 <= clean["mbit_s"] <= 10.0,
            "silent_during_hole": hole["up_bytes_during"] == 0 and hole["down_bytes_during"] == 0,
            "hole_about_5s": 4.9 <= hole["up_longest_gap_s"] <= 5.5,
            "stream_intact": hole["all_echoed_in_order"] and clean["intact"] and holed["intact"],
        },
        "seconds": round(time.monotonic() - began, 1),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        _serve(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=20.0, help="size of each baseline transfer")
    args = parser.parse_args(argv)
    print(json.dumps(self_check(args.mb), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
