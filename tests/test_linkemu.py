"""The emulated 4G link used by benchmarks/uplink.py (benchmarks/linkemu.py).

Timing assertions are lower bounds only: a busy machine can make the link slower, never
faster than the emulated path allows.
"""
from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from linkemu import EchoServer, EmulatedLink  # noqa: E402

DELAY_S = 0.060
SCHEDULING_GRACE_S = 0.05   # a byte released just before a window opens may be read just after


def recv_all(sock: socket.socket, log: list | None = None) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        if log is not None:
            log.append((time.monotonic(), len(chunk)))
        data += chunk
    return bytes(data)


def test_bytes_cross_intact_both_ways_and_half_close_propagates():
    payload = os.urandom(1_000_000)
    with EchoServer() as echo, EmulatedLink(target=echo.address, blackhole_s=0) as link:
        with socket.create_connection(link.address) as sock:
            def send():
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)   # the echo server answers our FIN with its own
            sender = threading.Thread(target=send)
            sender.start()
            echoed = recv_all(sock)             # returns only once the FIN came back
            sender.join()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        link.wait_connections(1, timeout_s=2)
        assert len(link.connections()) == 1


def test_round_trip_is_at_least_twice_the_one_way_delay():
    with EchoServer() as echo, EmulatedLink(target=echo.address, blackhole_s=0, delay_ms=DELAY_S * 1000) as link:
        with socket.create_connection(link.address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for i in range(5):
                started = time.monotonic()
                sock.sendall(struct.pack("!Q", i))
                assert sock.recv(8) == struct.pack("!Q", i)
                rtts.append(time.monotonic() - started)
    assert min(rtts) >= 2 * DELAY_S


def test_each_direction_is_rate_limited():
    size = 2_000_000                  # 1.6 s of payload at 10 Mbit/s (1.66 s with headers)
    done: dict[str, float] = {}
    server = socket.create_server(("127.0.0.1", 0))

    def serve():                      # sink upstream and source downstream at the same time
        conn, _ = server.accept()
        with conn:
            def sink():
                got = len(recv_all(conn))
                done["up"] = time.monotonic()
                done["up_bytes"] = got
            reader = threading.Thread(target=sink)
            reader.start()
            conn.sendall(b"d" * size)
            conn.shutdown(socket.SHUT_WR)
            reader.join()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with EmulatedLink(target=server.getsockname(), blackhole_s=0, rate_mbit=10.0) as link:
            with socket.create_connection(link.address) as sock:
                started = time.monotonic()
                sender = threading.Thread(target=lambda: (sock.sendall(b"u" * size), sock.shutdown(socket.SHUT_WR)))
                sender.start()
                down = recv_all(sock)
                done["down"] = time.monotonic()
                sender.join()
            deadline = time.monotonic() + 10
            while "up" not in done and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        server.close()
    assert len(down) == size and done["up_bytes"] == size
    assert done["up"] - started >= 1.4
    assert done["down"] - started >= 1.4


def test_a_sender_nobody_reads_is_held_back():
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    try:
        with EmulatedLink(target=server.getsockname(), blackhole_s=0) as link:
            with socket.create_connection(link.address) as sock:
                sock.setblocking(False)
                written, last_progress = 0, time.monotonic()
                while time.monotonic() - last_progress < 1.0 and written < 64_000_000:
                    try:
                        written += sock.send(b"x" * 65536)
                        last_progress = time.monotonic()
                    except BlockingIOError:
                        time.sleep(0.01)
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    # the modem queue (256 KiB), the path, and kernel buffers sized for a 1500-byte MTU
    assert written < 8_000_000


def test_black_hole_is_silent_both_ways_keeps_the_connection_and_then_delivers():
    with EchoServer(log=True) as echo, EmulatedLink(target=echo.address, blackhole_s=1.0, blackhole_every_s=3.0,
                                                    first_blackhole_s=0.8) as link:
        start, end = link.next_blackhole()
        assert end - start == pytest.approx(1.0)
        sent, down = bytearray(), []
        with socket.create_connection(link.address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            received = []
            reader = threading.Thread(target=lambda: received.append(recv_all(sock, down)))
            reader.start()
            seq = 0
            while time.monotonic() < end + 0.4:
                message = struct.pack("!Q", seq)
                sock.sendall(message)
                sent += message
                seq += 1
                if start + 0.2 < time.monotonic() < end - 0.2:
                    assert link.in_blackhole()
                    assert link.connection_log()[0]["closed"] is None   # still open in the hole
                time.sleep(0.01)
            sock.shutdown(socket.SHUT_WR)
            reader.join(timeout=10)
        up = list(echo.arrivals)
        assert link.blackhole_starts() == [start]

    def during(log):
        return sum(n for t, n in log if start + SCHEDULING_GRACE_S <= t < end)

    assert during(up) == 0 and during(down) == 0
    assert any(t < start for t, _ in up) and any(t >= end for t, _ in up)
    assert any(t < start for t, _ in down) and any(t >= end for t, _ in down)
    assert received == [bytes(sent)]           # nothing lost, nothing reordered
    assert len(link.connections()) == 1        # the same connection all along


def test_a_reconnect_during_the_hole_is_recorded_and_waits_for_the_path():
    with EchoServer() as echo, EmulatedLink(target=echo.address, blackhole_s=1.0, blackhole_every_s=3.0,
                                            first_blackhole_s=0.5) as link:
        start, end = link.next_blackhole()
        first = socket.create_connection(link.address)
        time.sleep(max(0.0, start + 0.3 - time.monotonic()))
        first.close()                                   # "the path is dead": reconnect
        with socket.create_connection(link.address) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            answered = time.monotonic()
        assert link.wait_connections(2, timeout_s=2)
        delays = link.reconnect_delays()
        log = link.connection_log()
    assert answered >= end + 2 * DELAY_S               # nothing crossed before the hole closed
    assert len(delays) == 1 and delays[0] >= 0.3
    assert log[1]["accepted"] - start == pytest.approx(delays[0])
    assert log[1]["opened"] >= end                     # not even the upstream connect in the hole


def test_closing_leaves_nothing_listening():
    with EchoServer() as echo:
        with EmulatedLink(target=echo.address) as link:
            address = link.address
            pid = link._proc.pid
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2)
    assert not Path(f"/proc/{pid}").exists()
