"""The bus: sequence gaps, boot changes, malformed messages, commands and snapshots."""
import json
import random
import time

import numpy as np
import pytest
import zmq

from station.bus import CommandClient, CommandServer, Publisher, Subscriber
from station.envelope import decode, encode, image_fields, make_header
from station.errors import CommandError, DeadlineExceeded, StationError

pytestmark = pytest.mark.timeout(30)


def settle(sub, pub, topic="cam.x.warmup"):
    """Publish until the subscriber sees one message: PUB/SUB connects asynchronously."""
    for _ in range(200):
        pub.publish("warmup")
        if sub.receive(timeout_ms=20) is not None:
            while sub.receive(timeout_ms=20) is not None:
                pass
            return
    raise AssertionError("subscriber never connected")


@pytest.fixture
def pair(ctx, rundir):
    endpoint = f"ipc://{rundir}/cam0.pub"
    pub = Publisher(ctx, endpoint, kind="camera", src="cam0", boot="b1")
    gaps, boots = [], []
    sub = Subscriber(ctx, [endpoint], on_gap=lambda *a: gaps.append(a), on_boot=lambda *a: boots.append(a))
    settle(sub, pub)
    yield pub, sub, gaps, boots
    sub.close()
    pub.close()


def test_sequence_numbers_are_per_topic_without_gaps(pair):
    pub, sub, gaps, _ = pair
    for _ in range(5):
        pub.publish("frame")
        pub.publish("status", {"state": "ready"})
    got = [sub.receive(timeout_ms=1000) for _ in range(10)]
    frames = [m.seq for m in got if m.event == "frame"]
    assert frames == [1, 2, 3, 4, 5]
    assert [m.seq for m in got if m.event == "status"] == [1, 2, 3, 4, 5]
    assert gaps == [] and sub.gaps == 0
    assert all(m.topic.startswith("camera.cam0.") and m.boot == "b1" for m in got)


def test_dropped_messages_are_reported_as_a_gap(pair):
    pub, sub, gaps, _ = pair
    pub.publish("frame")
    assert sub.receive(timeout_ms=1000).seq == 1
    pub.seq["camera.cam0.frame"] += 3  # three messages "lost" on the way
    pub.publish("frame")
    msg = sub.receive(timeout_ms=1000)
    assert msg.seq == 5
    assert gaps == [("cam0", "camera.cam0.frame", 2, 5)]
    assert sub.gaps == 1


def test_a_restarted_publisher_is_a_boot_change_not_a_gap(ctx, rundir, pair):
    pub, sub, gaps, boots = pair
    pub.publish("frame")
    pub.publish("frame")
    assert sub.receive(timeout_ms=1000).seq == 1 and sub.receive(timeout_ms=1000).seq == 2
    pub.close()
    endpoint = f"ipc://{rundir}/cam0.pub"
    new = Publisher(ctx, endpoint, kind="camera", src="cam0", boot="b2")
    for _ in range(200):
        new.publish("frame")
        msg = sub.receive(timeout_ms=20)
        if msg is not None:
            break
    assert boots == [("cam0", "b1", "b2")]
    assert msg.boot == "b2" and gaps == []
    new.close()


def test_malformed_messages_never_crash_a_subscriber(pair, ctx, rundir, caplog):
    pub, sub, _, _ = pair
    raw = ctx.socket(zmq.PUB)
    raw.bind(f"ipc://{rundir}/evil.pub")
    sub.connect(f"ipc://{rundir}/evil.pub")
    good = encode("camera.evil.frame", make_header("evil", "b", 1))
    for _ in range(100):  # wait for the connection
        raw.send_multipart(good)
        if sub.receive(timeout_ms=20) is not None:
            break
    rng = random.Random(7)
    bad = [
        [b"camera.evil.x"],  # missing header frame
        [b"camera.evil.x", b"{not json"],
        [b"camera.evil.x", b"[1,2]"],
        [b"camera.evil.x", json.dumps({"v": 1, "src": "evil", "boot": "b", "seq": -1, "t_pub_ns": 1}).encode()],
        [b"camera.evil.x", json.dumps({"v": 99, "src": "evil", "boot": "b", "seq": 9, "t_pub_ns": 1}).encode()],
        [b"\xff\xfe", b"{}"],
        [b"nodots", b"{}"],
        [b"camera.evil.frame", json.dumps({"v": 1, "src": "evil", "boot": "b", "seq": 3, "t_pub_ns": 1,
                                            "encoding": "bgr8", "width": 10, "height": 10, "step": 30}).encode(),
         b"short"],
        [b"camera.evil.frame", json.dumps({"v": 1, "src": "evil", "boot": "b", "seq": 4, "t_pub_ns": 1,
                                            "encoding": "jpeg", "width": 10, "height": 10}).encode()],
    ] + [[bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))) for _ in range(rng.randint(1, 4))]
         for _ in range(200)]
    for message in bad:
        raw.send_multipart(message)
    raw.send_multipart(encode("camera.evil.frame", make_header("evil", "b", 2)))  # after the garbage
    seen = None
    deadline = time.monotonic() + 5
    while seen is None and time.monotonic() < deadline:
        msg = sub.receive(timeout_ms=100)
        if msg is not None and msg.src == "evil":
            seen = msg
    assert seen is not None and seen.seq == 2, "a good message after the garbage must still arrive"
    assert sum(sub.malformed.values()) >= 9
    assert {"too_few_frames", "bad_json", "bad_header", "bad_seq", "bad_version", "bad_geometry",
            "missing_payload", "bad_topic"} <= set(sub.malformed)
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == len(sub.malformed), "each reason is logged once, then only counted"
    raw.close(linger=0)


def test_image_payload_round_trip_and_geometry_check():
    image = np.zeros((1080, 1920, 3), np.uint8)
    header = make_header("cam0", "b", 1, image_fields(image, "bgr8"))
    msg = decode(encode("camera.cam0.frame", header, {"image": image.data}))
    assert (msg.get("width"), msg.get("height"), msg.get("step")) == (1920, 1080, 5760)


def test_late_joiner_snapshot_drops_what_it_already_covers(ctx, rundir):
    endpoint = f"ipc://{rundir}/fp0.pub"
    pub = Publisher(ctx, endpoint, kind="fingerprint", src="fp0", boot="b1")
    for _ in range(7):
        pub.publish("status")
    gaps = []
    sub = Subscriber(ctx, [endpoint], topics=["fingerprint.fp0.status"], on_gap=lambda *a: gaps.append(a))
    time.sleep(0.2)  # connected, but everything above was before it joined
    snapshot = pub.snapshot()
    sub.apply_snapshot("fp0", "b1", snapshot)
    pub.publish("status")
    msg = sub.receive(timeout_ms=2000)
    assert msg.seq == 8 and gaps == []
    # a replayed old message at or below the snapshot is dropped, not delivered
    stale = encode("fingerprint.fp0.status", make_header("fp0", "b1", 5))
    assert sub.accept(stale) is None and sub.stale == 1
    sub.close()
    pub.close()


def test_heartbeat_only_when_idle(ctx, rundir):
    pub = Publisher(ctx, f"ipc://{rundir}/h.pub", kind="camera", src="h", boot="b", heartbeat_s=1.0,
                    heartbeat_fields=lambda: {"state": "ready"})
    now = time.monotonic()
    assert pub.tick(now) is False
    assert pub.tick(now + 1.1) is True
    assert pub.seq["camera.h.heartbeat"] == 1
    pub.publish("frame")
    assert pub.tick(time.monotonic() + 0.5) is False
    pub.close()


def test_silent_source_goes_offline(pair):
    pub, sub, _, _ = pair
    pub.publish("status")
    sub.receive(timeout_ms=1000)
    now = time.monotonic()
    assert sub.offline(now + 1.0) == []
    assert sub.offline(now + 3.5) == ["cam0"]


@pytest.fixture
def server(ctx, rundir):
    srv = CommandServer(ctx, f"ipc://{rundir}/d.cmd", name="test.d")
    kept = []

    def fail(request):
        raise StationError("the cover is open: close it and retry", code="cover_open", retryable=True)

    def crash(request):
        raise ZeroDivisionError("bug")

    srv.register("echo", lambda r: {"args": r.args, "n": len(r.payloads)},
                 {"a": {"type": "integer"}, "first": {"type": "boolean"}, "second": {"type": "boolean"}})
    srv.register("fail", fail)
    srv.register("crash", crash)
    srv.register("slow", lambda r: kept.append(r))
    yield srv, kept
    srv.close()


def serve_while(srv, fn):
    """Run the server loop in this thread while ``fn`` runs in another."""
    import threading
    result = {}

    def client():
        try:
            result["value"] = fn()
        except Exception as exc:  # handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    while thread.is_alive():
        if srv.socket.poll(20):
            srv.handle_ready()
        srv.expire()
    thread.join()
    return result


def test_command_reply_error_deadline(ctx, rundir, server):
    srv, kept = server
    client = CommandClient(ctx, f"ipc://{rundir}/d.cmd", name="d")
    r = serve_while(srv, lambda: client.call("echo", {"a": 1}, payloads={"blob": b"x" * 100000}))
    assert r["value"].result == {"args": {"a": 1}, "n": 1}

    r = serve_while(srv, lambda: client.call("fail"))
    err = r["error"]
    assert isinstance(err, CommandError) and err.code == "cover_open" and err.retryable
    assert "cover is open" in err.message

    r = serve_while(srv, lambda: client.call("crash"))
    assert r["error"].code == "internal" and not r["error"].retryable

    r = serve_while(srv, lambda: client.call("nope"))
    assert r["error"].code == "unknown_command" and "echo" in r["error"].message

    # a kept request past its deadline: the server answers deadline_exceeded itself
    r = serve_while(srv, lambda: client.call("slow", timeout_s=0.3))
    assert r["error"].code == "deadline_exceeded"
    assert kept and kept[0].done
    client.close()


def test_client_deadline_when_nobody_answers(ctx, rundir):
    client = CommandClient(ctx, f"ipc://{rundir}/nobody.cmd", name="nobody")
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="no reply from nobody"):
        client.call("state", timeout_s=0.3)
    assert time.monotonic() - start < 2
    client.close()


def test_stale_reply_is_ignored(ctx, rundir, server):
    srv, kept = server
    client = CommandClient(ctx, f"ipc://{rundir}/d.cmd", name="d")
    with pytest.raises(DeadlineExceeded):
        client.call("echo", {"first": True}, timeout_s=0.2)  # server not serving yet
    # the late reply to the first call must not be taken as the answer to the second
    r = serve_while(srv, lambda: client.call("echo", {"second": True}))
    assert r["value"].result["args"] == {"second": True}
    assert client.stale_replies == 1
    client.close()


def test_malformed_request_is_dropped_or_answered(ctx, rundir, server):
    srv, _ = server
    raw = ctx.socket(zmq.DEALER)
    raw.connect(f"ipc://{rundir}/d.cmd")
    raw.send_multipart([b"garbage"])
    raw.send_multipart([json.dumps({"corr": "c1"}).encode()])
    deadline = time.monotonic() + 3
    while sum(srv.malformed.values()) < 2 and time.monotonic() < deadline:
        if srv.socket.poll(50):
            srv.handle_ready()
    assert srv.malformed == {"bad_json": 1, "bad_cmd": 1}
    assert raw.poll(1000)
    reply = json.loads(raw.recv())
    assert reply["corr"] == "c1" and reply["error"]["code"] == "bad_request"
    raw.close(linger=0)


def test_plain_tcp_is_refused(ctx):
    with pytest.raises(StationError, match="CURVE"):
        Publisher(ctx, "tcp://127.0.0.1:5999", kind="camera", src="x", boot="b")
