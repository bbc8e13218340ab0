"""Hostile and careless requests: every one that carries a correlation id is answered, the
rest are counted and dropped, none costs the main loop more than its own decoding, and the
watchdog keeps beating under a flood. A second copy of a daemon touches nothing of the first.
Plus: every error code raised anywhere is in the one documented set."""
import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station.bus import CommandClient, CommandServer
from station.envelope import MalformedMessage, decode_request, scan_corr
from station.errors import CODES, CommandError
from station.paths import Paths
from tests.station_harness import BIN, applicant

ROOT = Path(__file__).resolve().parent.parent
DEEP = b'{"corr": "deep1", "cmd": "status", "deadline_ns": 1, "args": ' + b"[" * 2000 + b"]" * 2000 + b"}"
SURROGATE_CMD = b'{"corr": "sur1", "cmd": "\\ud800", "deadline_ns": 99999999999999999999, "args": {}}'
SURROGATE_CORR = b'{"corr": "\\udfff", "cmd": "status", "deadline_ns": 1}'


def request(cmd="status", corr="c1", args=None, deadline_ns=None) -> bytes:
    return json.dumps({"v": 1, "corr": corr, "cmd": cmd, "args": {} if args is None else args,
                       "deadline_ns": deadline_ns or time.time_ns() + 10**10}).encode()


# -- the pure decoder ------------------------------------------------------------------------
def test_a_request_too_deep_or_badly_encoded_is_still_answered_by_its_corr():
    for raw, corr in ((DEEP, "deep1"), (SURROGATE_CMD, "sur1"), (b'{"corr":"c9","cmd":"x"' + b"\xff", "c9")):
        with pytest.raises(MalformedMessage) as bad:
            decode_request(raw)
        assert bad.value.corr == corr
    with pytest.raises(MalformedMessage) as unanswerable:
        decode_request(SURROGATE_CORR)
    assert unanswerable.value.corr is None  # a reply could not carry it: counted, dropped


@pytest.mark.parametrize("header,reason", [
    ({"corr": 7, "cmd": "status", "deadline_ns": 1}, "bad_corr"),
    ({"corr": "c" * 65, "cmd": "status", "deadline_ns": 1}, "bad_corr"),
    ({"corr": "c", "cmd": ["status"], "deadline_ns": 1}, "bad_cmd"),
    ({"corr": "c", "cmd": "status", "deadline_ns": 1.5}, "bad_deadline"),
    ({"corr": "c", "cmd": "status", "deadline_ns": True}, "bad_deadline"),
    ({"corr": "c", "cmd": "status", "deadline_ns": 1, "args": [1]}, "bad_args"),
])
def test_header_fields_are_checked_by_type(header, reason):
    with pytest.raises(MalformedMessage) as bad:
        decode_request(json.dumps(header).encode())
    assert bad.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decode_request_raises_nothing_but_malformed_on_any_bytes(raw):
    try:
        decode_request(raw)
    except MalformedMessage:
        pass


# -- the dispatcher, in process --------------------------------------------------------------
@pytest.fixture
def served(ctx, rundir):
    server = CommandServer(ctx, f"ipc://{rundir}/fuzz.cmd", name="fuzz")
    server.register("status", lambda r: {"ok": 1})
    server.register("finger", lambda r: {"position": r.args["position"]},
                    {"position": {"type": "integer", "minimum": 1, "maximum": 10}}, ("position",))
    server.register("boom", lambda r: {"not json": object()})
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"ipc://{rundir}/fuzz.cmd")
    time.sleep(0.05)

    def exchange(*frames: bytes, expect_reply: bool = True):
        client.send_multipart(list(frames))
        deadline = time.monotonic() + 2
        while not server.socket.poll(10):
            assert time.monotonic() < deadline, "the request never arrived"
        server.handle_ready()
        if not client.poll(200 if expect_reply else 20):
            return None
        return orjson.loads(client.recv_multipart()[0])

    yield server, exchange
    client.close()
    server.close()


def test_wrong_argument_types_are_bad_requests_naming_the_argument(served):
    _server, exchange = served
    for value in (True, 2.0, "1", None, [1], 11):
        reply = exchange(request("finger", args={"position": value}))
        assert reply["error"]["code"] == "bad_request" and "position" in reply["error"]["message"], value
    reply = exchange(request("finger", args={"position": 2, "extra": 1}))
    assert reply["error"]["code"] == "bad_request" and "extra" in reply["error"]["message"]
    reply = exchange(request("finger", args={}))
    assert "'position' is a required property" in reply["error"]["message"]
    assert exchange(request("finger", args={"position": 3}))["result"] == {"position": 3}


def test_a_request_over_the_size_limit_in_total_is_refused(served):
    server, exchange = served
    frame = bytes(200 * 1024)  # under libzmq's per-frame limit, over the request limit in total
    reply = exchange(request("status"), frame, frame)
    assert reply["error"]["code"] == "bad_request" and "limit" in reply["error"]["message"]
    assert server.malformed == {"too_large": 1}


def test_a_reply_that_cannot_be_encoded_is_answered_as_internal(served):
    _server, exchange = served
    reply = exchange(request("boom"))
    assert reply["corr"] == "c1" and reply["error"]["code"] == "internal"


def test_known_failures_each_get_their_answer(served):
    server, exchange = served
    assert exchange(DEEP)["corr"] == "deep1"
    assert exchange(SURROGATE_CMD)["error"]["code"] == "bad_request"
    assert exchange(SURROGATE_CORR, expect_reply=False) is None
    assert exchange(request(corr="c" * 65), expect_reply=False) is None
    assert server.malformed == {"bad_json": 3, "bad_corr": 1}


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                           max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corr=st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True), cmd=json_values, args=json_values,
       deadline=json_values)
def test_any_request_with_a_usable_corr_gets_exactly_one_reply(served, corr, cmd, args, deadline):
    server, exchange = served
    raw = orjson.dumps({"corr": corr, "cmd": cmd, "args": args, "deadline_ns": deadline})
    reply = exchange(raw)
    assert reply is not None and reply["corr"] == corr
    assert reply["ok"] or reply["error"]["code"] in CODES


# -- a running daemon under a flood ----------------------------------------------------------
def flood(endpoint: str, ctx, count: int) -> tuple[int, int]:
    """Send ``count`` malformed requests, a third of them answerable; (sent answerable, answers)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    shapes = [DEEP, SURROGATE_CMD, SURROGATE_CORR, b"\x00" * 100, b"[]", b"{" * 5000,
              request("session.finger", args={"session": "0" * 16, "position": True}),
              request("session.start", args={"applicant": {"full_name": "x" * 100}, "operator": 5}),
              request("events.since", args={"since": -1})]
    answerable = 0
    for i in range(count):
        raw = shapes[i % len(shapes)]
        corr = f"f{i}"
        if raw.startswith(b'{"v"'):
            raw = raw.replace(b'"c1"', f'"{corr}"'.encode())
        if scan_corr(raw) is not None or raw.startswith(b'{"v"'):
            answerable += 1
        sock.send(raw)
    answers = 0
    deadline = time.monotonic() + 30
    while answers < answerable and time.monotonic() < deadline:
        if sock.poll(200):
            sock.recv()
            answers += 1
    sock.close()
    return answerable, answers


def test_a_flood_of_malformed_requests_is_answered_and_the_watchdog_keeps_beating(provisioned, ctx, rundir):
    notify = rundir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.1)
    env = dict(provisioned["env"], NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="2000000")
    proc = subprocess.Popen([str(BIN / "station-controller")], env=env, stderr=subprocess.DEVNULL)
    pings: list[float] = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                if sock.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except socket.timeout:
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    client = CommandClient(ctx, Paths.resolve().cmd("controller"), name="controller")
    try:
        deadline = time.monotonic() + 20
        while not pings:
            assert time.monotonic() < deadline and proc.poll() is None, "controller never pinged"
            time.sleep(0.05)
        started = time.monotonic()
        answerable, answers = flood(Paths.resolve().cmd("controller"), ctx, 2000)
        time.sleep(1.5)
        assert answers == answerable, f"{answerable - answers} requests with a correlation id got no reply"
        gaps = [b - a for a, b in zip(pings, pings[1:]) if b >= started]
        assert gaps and max(gaps) < 1.0 + 0.5, f"watchdog gap {max(gaps):.2f} s under the flood (interval 1 s)"
        # and it still works
        sid = client.call("session.start", {"applicant": applicant(3), "operator": "op"}).result["session"]
        assert client.call("session.get", {"session": sid}).result["step"] == "portrait"
        with pytest.raises(CommandError) as typed:
            client.call("session.finger", {"session": sid, "position": 1.5})
        assert typed.value.code == "bad_request"
    finally:
        stop.set()
        listener.join()
        client.close()
        proc.terminate()
        proc.wait(5)
        sock.close()


def test_a_second_copy_of_a_daemon_exits_and_touches_nothing_of_the_first(provisioned, ctx):
    (provisioned["etc"] / "camera@cam0.yaml").write_text("source: {kind: emulated}\n")
    first = subprocess.Popen([str(BIN / "station-camerad"), "cam0"], env=provisioned["env"],
                             stderr=subprocess.DEVNULL)
    client = CommandClient(ctx, Paths.resolve().cmd("cam0"), name="cam0")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                boot = client.call("ping", timeout_s=0.5).result["boot"]
                break
            except Exception:
                assert time.monotonic() < deadline and first.poll() is None
        sockets = {p: p.stat().st_ino for p in Paths.resolve().run.glob("cam0.*")}
        second = subprocess.run([str(BIN / "station-camerad"), "cam0"], env=provisioned["env"],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 75
        assert f"in use by another process (pid {first.pid})" in second.stderr and "Traceback" not in second.stderr
        assert {p: p.stat().st_ino for p in Paths.resolve().run.glob("cam0.*")} == sockets
        assert client.call("ping", timeout_s=2).result["boot"] == boot  # still the first one
    finally:
        client.close()
        first.terminate()
        first.wait(5)


def test_every_error_code_raised_is_in_the_documented_set():
    raised = set()
    for path in [*ROOT.joinpath("station").rglob("*.py"), *ROOT.joinpath("drivers").rglob("*.py")]:
        if path.name == "demo.py":  # the demo's own failures never cross a socket
            continue
        text = path.read_text()
        raised |= set(re.findall(r'\bcode="([a-z_]+)"', text)) | set(re.findall(r'^\s+code = "([a-z_]+)"', text, re.M))
    assert raised, "found no error codes at all"
    assert raised - set(CODES) == set(), "codes raised but not documented in station/errors.py CODES"
