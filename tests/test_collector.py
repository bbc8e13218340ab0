"""The collector's door: who may connect, what it accepts, and what crosses the wire."""
import hashlib
import os

import pytest
import zmq

from delivery_harness import Relay, UplinkProcess, fill_store, outbox_state, wait_for
from station import keyring, link, sealing

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def running(central):
    return central.start()


class RawStation:
    """A DEALER speaking the link protocol by hand, with whatever keys a test gives it."""

    def __init__(self, ctx, central, public, secret, server_key=None):
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.curve_serverkey = (server_key or central.public_key).encode()
        self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
        self.socket.connect(f"tcp://127.0.0.1:{central.port}")

    def ask(self, frames, timeout_ms=3000, skip=("chunk.ack",)):
        """The answer to ``frames``: the first reply that is not a receipt of a piece."""
        self.socket.send_multipart(frames)
        while self.socket.poll(timeout_ms):
            reply = link.decode(self.socket.recv_multipart(), link.COLLECTOR_OPS)
            if reply.op not in skip:
                return reply
        return None

    def send_record(self, record_id, blob, timeout_ms=5000, sha256=None):
        sha = sha256 or hashlib.sha256(blob).hexdigest()
        return self.ask(link.encode("chunk", blob, record=record_id, sha256=sha, size=len(blob), offset=0,
                                    final=True), timeout_ms)


def keys_of(station):
    return keyring.load_transport(station["state"] / "keys")


def hello(client, station_id="VN-HP-0001"):
    return client.ask(link.encode("hello", station=station_id, boot="b0", v=link.PROTOCOL))


def a_record(state, record_id="R-1", plaintext=b"x" * 1000):
    keys = keyring.load(state / "keys")
    return sealing.seal(plaintext, record_id=record_id, content_type="application/octet-stream",
                        signer=keys.signer, central=keys.central)


def test_an_allowed_station_is_welcomed(station, central, ctx):
    reply = hello(RawStation(ctx, central, *keys_of(station)))
    assert reply.op == "welcome" and reply["last_seq"] == 0


def test_a_client_with_an_unknown_key_cannot_connect(station, central, ctx):
    public, secret = zmq.curve_keypair()                  # knows the server key, not on the allowlist
    assert hello(RawStation(ctx, central, public, secret), ) is None
    wait_for(lambda: "refused a CURVE client" in central.log_text(), 10, "the refusal logged")


def test_a_client_that_does_not_know_the_server_key_cannot_connect(station, central, ctx):
    wrong_server = zmq.curve_keypair()[0].decode()
    assert hello(RawStation(ctx, central, *keys_of(station), server_key=wrong_server)) is None


def test_a_revoked_station_is_cut_off_after_reload(station, central, ctx):
    client = RawStation(ctx, central, *keys_of(station))
    assert hello(client).op == "welcome"
    central.config["revoked"] = ["VN-HP-0001"]
    central.write_config()
    central.reload()
    wait_for(lambda: "allowlist: 0 station(s) allowed, 1 revoked" in central.log_text(), 10, "the reload")
    reply = client.ask(link.encode("ping"))                # the open connection: refused at its next message
    assert reply.op == "error" and reply["code"] == "not_allowed"
    assert client.send_record("R-rev", a_record(station["state"], "R-rev")).op == "error"
    assert hello(RawStation(ctx, central, *keys_of(station))) is None   # and cannot connect again
    assert central.records() == {}


def test_a_record_signed_by_another_station_is_refused(station, central, ctx, tmp_path):
    other = tmp_path / "other-keys"
    keyring.provision(other, "VN-HN-0002", station["central_pub"].read_bytes())
    other_keys = keyring.load(other)
    blob = sealing.seal(b"y" * 1000, record_id="R-other", content_type="application/octet-stream",
                        signer=other_keys.signer, central=other_keys.central)
    client = RawStation(ctx, central, *keys_of(station))
    reply = client.send_record("R-other", blob)
    assert reply.op == "error" and reply["code"] in ("wrong_station", "bad_signature")
    assert central.records() == {}


def test_a_modified_record_is_refused(station, central, ctx):
    blob = bytearray(a_record(station["state"], "R-mod"))
    blob[-100] ^= 0x01                                    # one bit of the ciphertext
    reply = RawStation(ctx, central, *keys_of(station)).send_record("R-mod", bytes(blob))
    assert reply.op == "error" and reply["code"] == "hash_mismatch"
    assert central.records() == {}


def test_a_record_whose_bytes_do_not_match_the_offer_is_refused(station, central, ctx):
    blob = a_record(station["state"], "R-lie")
    client = RawStation(ctx, central, *keys_of(station))
    reply = client.send_record("R-lie", blob, sha256="00" * 32)
    assert reply.op == "error" and reply["code"] == "hash_mismatch" and reply["retryable"]


def test_a_replayed_record_is_acknowledged_and_not_stored_twice(station, central, ctx):
    blob = a_record(station["state"], "R-rep")
    client = RawStation(ctx, central, *keys_of(station))
    first = client.send_record("R-rep", blob)
    again = client.send_record("R-rep", blob)
    offer = client.ask(link.encode("offer", record="R-rep", sha256=hashlib.sha256(blob).hexdigest(), size=len(blob)))
    assert first.op == "stored" and not first["duplicate"]
    assert again.op == "stored" and again["duplicate"] and offer.op == "stored" and offer["duplicate"]
    assert central.records() == {"R-rep": hashlib.sha256(blob).hexdigest()}
    assert len(list((central.data_dir / "records" / "VN-HP-0001").iterdir())) == 1


def test_a_file_no_index_row_names_is_removed_at_the_next_start(station, central, ctx):
    """Files are written under their final names; only the index makes one a record."""
    blob = a_record(station["state"], "R-kept")
    assert RawStation(ctx, central, *keys_of(station)).send_record("R-kept", blob).op == "stored"
    left = central.data_dir / "records" / "VN-HP-0001" / "R-lost.sealed"
    left.write_bytes(blob[:1000])                          # a batch that failed before its index commit
    central.stop()
    central.start()
    wait_for(lambda: not left.exists(), 20, "the stray file removed at start")
    assert central.records() == {"R-kept": hashlib.sha256(blob).hexdigest()}


def test_a_hello_claiming_another_station_is_refused(station, central, ctx):
    reply = hello(RawStation(ctx, central, *keys_of(station)), station_id="VN-HN-0002")
    assert reply.op == "error" and reply["code"] == "wrong_station"


def test_malformed_traffic_is_answered_and_the_collector_stays_up(station, central, ctx):
    client = RawStation(ctx, central, *keys_of(station))
    for frames in ([b"garbage"], [b'{"op": "offer"}'], [b'{"op": "chunk", "record": "x"}', b"1"],
                   [os.urandom(64), os.urandom(64)], [b'{"op": "events", "entries": [1]}']):
        reply = client.ask(frames, skip=())
        assert reply.op == "error" and reply["code"] == "bad_request", frames
    assert hello(client).op == "welcome"


def test_the_wire_carries_no_plaintext_name_or_image(station, central, tmp_path):
    name = "NGUYỄN THỊ THU HƯƠNG".encode()
    image = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
    ids = fill_store(station["state"], 3, 20_000, plaintext=name + image)
    relay = Relay(central.port)
    try:
        uplink = UplinkProcess(station["env"], station["etc"], central,
                               endpoints=[f"tcp://127.0.0.1:{relay.port}"]).start()
        try:
            wait_for(lambda: outbox_state(station["state"])["confirmed"] == 3, 30, "delivery through the relay")
        finally:
            uplink.stop()
    finally:
        relay.close()
    wire = bytes(relay.captured)
    assert len(wire) > 60_000                             # the records did cross this wire
    assert sorted(central.records()) == sorted(ids)
    assert name not in wire and b"JFIF" not in wire and bytes(range(64)) not in wire
    assert b"VN-HP-0001" not in wire and b"station.enrollment" not in wire  # even ids and events are sealed


def test_pieces_nobody_adds_to_for_days_are_swept_and_fresh_ones_kept(station, central, ctx):
    spool = central.data_dir / "spool" / "VN-HP-0001"
    spool.mkdir(parents=True, exist_ok=True)
    old, fresh = spool / "R-gone.0123456789abcdef.part", spool / "R-busy.0123456789abcdef.part"
    old.write_bytes(b"\0" * 1000)
    fresh.write_bytes(b"\0" * 1000)
    three_days_ago = os.path.getmtime(fresh) - 73 * 3600
    os.utime(old, (three_days_ago, three_days_ago))
    central.stop()
    central.start()
    wait_for(lambda: not old.exists(), 20, "the abandoned piece removed")
    assert fresh.exists()


def test_a_station_cannot_fill_the_collectors_spool(station, central, ctx):
    central.config["spool"] = {"max_mib_per_station": 16}
    central.write_config()
    central.stop()
    central.start()
    client = RawStation(ctx, central, *keys_of(station))
    piece, size = b"\x5a" * link.MAX_CHUNK_BYTES, 5 * link.MAX_CHUNK_BYTES
    sha = hashlib.sha256(piece * 5).hexdigest()
    for offset in range(0, 4 * len(piece), len(piece)):   # 16 MiB: the whole share
        ack = client.ask(link.encode("chunk", piece, record="R-big", sha256=sha, size=size, offset=offset,
                                     final=False), skip=())
        assert ack.op == "chunk.ack" and ack["offset"] == offset + len(piece)
    refused = client.ask(link.encode("chunk", piece, record="R-big", sha256=sha, size=size, offset=4 * len(piece),
                                     final=True), skip=())
    assert refused.op == "error" and refused["code"] == "spool_full" and refused["retryable"]
    parts = list((central.data_dir / "spool" / "VN-HP-0001").iterdir())
    assert [p.stat().st_size for p in parts] == [4 * len(piece)]
    assert central.records() == {}
