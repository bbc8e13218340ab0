"""The pure parts of delivery: the link codec, the window, the backoff."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station import link
from station.delivery import Window
from station.errors import BadRequest

SHA = "ab" * 32


def test_link_round_trip_of_every_station_message():
    messages = [
        link.encode("hello", station="VN-HP-0001", boot="b1", v=link.PROTOCOL, status={"records": 3}),
        link.encode("events", entries=[{"seq": 1, "t_ns": 5, "topic": "station.x", "body": {"a": 1}}]),
        link.encode("offer", record="R1", sha256=SHA, size=10),
        link.encode("chunk", b"0123456789", record="R1", sha256=SHA, size=10, offset=0, final=True),
        link.encode("confirm", records=[{"record": "R1", "sha256": SHA}]),
        link.encode("ping"),
    ]
    for frames in messages:
        decoded = link.decode(frames, link.STATION_OPS)
        assert decoded.op in link.STATION_OPS
    chunk = link.decode(messages[3], link.STATION_OPS)
    assert chunk.payload == b"0123456789" and chunk["final"] is True


@pytest.mark.parametrize("frames, says", [
    ([b"not json"], "not JSON"),
    ([b'{"op": "stored"}'], "unknown link message"),          # a collector op sent by a station
    ([b'{"op": "offer", "record": "R1", "sha256": "zz", "size": 1}'], "sha256"),
    ([b'{"op": "offer", "record": "../etc", "sha256": "' + SHA.encode() + b'", "size": 1}'], "record"),
    ([b'{"op": "chunk", "record": "R1", "sha256": "' + SHA.encode() + b'", "size": 1, "offset": 0, "final": true}'],
     "payload"),
    ([b'{"op": "ping"}', b"extra"], "payload"),
    ([b'{"op": "events", "entries": []}'], "entries"),
    ([b'{"op": "events", "entries": [{"seq": 0, "t_ns": 1, "topic": "t", "body": {}}]}'], "seq"),
    ([b"[]"], "unknown link message"),
    ([], "1 or 2 frames"),
])
def test_link_refuses_malformed_messages_saying_what_is_wrong(frames, says):
    with pytest.raises(BadRequest) as caught:
        link.decode(frames, link.STATION_OPS)
    assert says in caught.value.message


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=3))
def test_link_decoder_never_raises_anything_but_bad_request(frames):
    try:
        link.decode(frames, link.STATION_OPS)
    except BadRequest:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4), max_leaves=20),
       st.sampled_from(sorted(link.STATION_OPS)))
def test_link_decoder_on_structured_garbage(value, op):
    import orjson
    header = {"op": op, "x": value} if not isinstance(value, dict) else {**value, "op": op}
    try:
        link.decode([orjson.dumps(header)], link.STATION_OPS)
    except BadRequest:
        pass


def test_window_bounds_bytes_in_flight_and_resumes_at_the_collectors_offset():
    window = Window(max_bytes=300, max_records=4, chunk_bytes=100)
    window.start("R1", SHA, 1000)
    assert window.next_pieces() == []                 # nothing before the collector said where
    window.want("R1", 200)                            # its spool holds 200 bytes already
    pieces = window.next_pieces()
    assert [(offset, length) for _, offset, length in pieces] == [(200, 100), (300, 100), (400, 100)]
    assert window.bytes_inflight == 300 and window.next_pieces() == []
    window.acked("R1", 400)                           # two pieces received
    assert window.bytes_inflight == 100
    assert [(o, n) for _, o, n in window.next_pieces()] == [(500, 100), (600, 100)]
    window.want("R1", 550)                            # the collector lost some: start there again
    assert window.bytes_inflight == 0
    assert [o for _, o, _ in window.next_pieces()] == [550, 650, 750]
    window.finish("R1")
    assert window.bytes_inflight == 0 and window.records_inflight == 0


def test_a_received_record_keeps_its_slot_until_stored_but_frees_its_bytes():
    window = Window(max_bytes=1000, max_records=2, chunk_bytes=1000)
    window.start("A", SHA, 400)
    window.want("A", 0)
    assert [(o, n) for _, o, n in window.next_pieces()] == [(0, 400)]
    window.acked("A", 400)                            # received, not yet stored
    assert window.bytes_inflight == 0 and window.records_inflight == 1
    assert window.can_start()
    window.start("B", SHA, 400)
    assert not window.can_start()                     # two records awaiting their stored
    window.finish("A")
    assert window.can_start()


def test_the_uplink_never_offers_far_ahead_of_what_it_can_send():
    window = Window(max_bytes=1000, max_records=32, chunk_bytes=500)
    started = 0
    while window.can_start():
        window.start(f"R{started}", SHA, 400)
        started += 1
    assert started == 3                               # 1200 unsent bytes > 1000: stop offering
    for name in ("R0", "R1", "R2"):
        window.want(name, 0)
    assert [(t.record_id, o) for t, o, _ in window.next_pieces()] == [("R0", 0), ("R1", 0)]


def test_a_one_piece_record_goes_without_waiting_for_an_offer():
    window = Window(max_bytes=1000, max_records=4, chunk_bytes=500)
    window.start("R", SHA, 400, offset=0)
    assert [(t.record_id, o, n) for t, o, n in window.next_pieces()] == [("R", 0, 400)]


def test_window_keeps_record_order():
    window = Window(max_bytes=10_000, max_records=3, chunk_bytes=100)
    for name in ("A", "B", "C"):
        assert window.can_start()
        window.start(name, SHA, 150)
    assert not window.can_start()                     # three records in flight
    window.want("B", 0)
    window.want("A", 0)
    assert [(t.record_id, o) for t, o, _ in window.next_pieces()] == [("A", 0), ("A", 100), ("B", 0), ("B", 100)]
    assert window.finish("A") is not None and window.finish("A") is None


def test_a_large_piece_goes_alone_when_the_window_is_smaller_than_it():
    window = Window(max_bytes=50, max_records=8, chunk_bytes=100)
    window.start("R", SHA, 300)
    window.want("R", 0)
    assert [o for _, o, _ in window.next_pieces()] == [0]  # never stuck: one piece may exceed it


def test_backoff_is_capped_and_jittered():
    backoff = link.Backoff(1.0, 8.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 4.0                      # it grows up to the cap
    assert len(set(round(d, 3) for d in delays)) > 6   # jitter: not one fixed schedule
    backoff.reset()
    assert backoff.next_delay() <= 1.0
