"""The JetStream backend against real nats-server processes (2.9.10 as Debian packages it).

Each test uses its own station and record ids: the cluster and its streams are shared by
the module. What subscribers see is checked with a plain nats-py client, not the backend.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import nats
import pytest
from nats.js import api

from station.collector.jetstream import JetStreamStorage
from station.collector.storage import EventGap, NewRecord, StationEvent, StorageError, StoredRecord
from station.errors import ConfigError, StationError
from tests.nats_cluster import NatsCluster

pytestmark = pytest.mark.timeout(120)


def station_id() -> str:
    return f"VN-T-{uuid.uuid4().hex[:10]}"


def record(station: str, size: int = 60_000) -> NewRecord:
    sealed = os.urandom(size)
    return NewRecord(station, uuid.uuid4().hex, hashlib.sha256(sealed).hexdigest(), sealed)


def event(station: str, seq: int) -> StationEvent:
    return StationEvent(station, seq, 1_700_000_000_000_000_000 + seq, "session.opened",
                        {"seq": seq, "operator": "Nguyễn Văn A"})


@pytest.fixture
def gateway(nats_cluster: NatsCluster) -> Iterator[Callable[..., JetStreamStorage]]:
    """Opens storages on the cluster (one per simulated gateway); all closed afterwards."""
    opened: list[JetStreamStorage] = []

    def open_storage(servers: list[str] | None = None, **options) -> JetStreamStorage:
        opened.append(JetStreamStorage(servers or nats_cluster.urls, **options))
        return opened[-1]

    yield open_storage
    for storage in opened:
        storage.close()


def read_stream(urls: list[str], subject: str) -> list:
    """Every message on ``subject``, read by an independent client with an ordered consumer."""
    async def read() -> list:
        nc = await nats.connect(urls)
        try:
            js = nc.jetstream(timeout=15)
            info = await js.stream_info(await js.find_stream_name_by_subject(subject), subjects_filter=subject)
            expected = sum((info.state.subjects or {}).values())
            sub = await js.subscribe(subject, ordered_consumer=True)
            messages = [await sub.next_msg(timeout=5) for _ in range(expected)]
            await sub.unsubscribe()
            return messages
        finally:
            await nc.close()
    return asyncio.run(read())


def message_count(urls: list[str], stream: str, subject: str) -> int:
    async def count() -> int:
        nc = await nats.connect(urls)
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())
        finally:
            await nc.close()
    return asyncio.run(count())


# -- records ---------------------------------------------------------------------------

def test_a_record_delivered_through_two_gateways_is_stored_once(nats_cluster, gateway):
    station = station_id()
    first, second = gateway(), gateway()
    new = record(station)

    [stored] = first.put_records([new])
    [again] = second.put_records([new])

    assert isinstance(stored, StoredRecord) and not stored.duplicate
    assert stored.ref.startswith("STATION_RECORDS:") and stored.size == len(new.sealed)
    assert isinstance(again, StoredRecord) and again.duplicate
    assert (again.ref, again.sha256, again.stored_ns) == (stored.ref, stored.sha256, stored.stored_ns)
    assert message_count(nats_cluster.urls, "STATION_RECORDS", f"stations.{station}.records") == 1


def test_a_batch_races_itself_on_two_gateways_and_every_record_is_stored_once(nats_cluster, gateway):
    station = station_id()
    batch = [record(station, 20_000) for _ in range(30)]
    gateways = [gateway(), gateway()]
    outcomes: list[list] = [[], []]

    def deliver(index: int) -> None:
        outcomes[index] = gateways[index].put_records(batch)

    threads = [threading.Thread(target=deliver, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for left, right in zip(*outcomes):
        assert isinstance(left, StoredRecord) and isinstance(right, StoredRecord)
        assert left.ref == right.ref
    assert message_count(nats_cluster.urls, "STATION_RECORDS", f"stations.{station}.records") == len(batch)


def test_a_record_id_with_another_hash_is_refused_and_the_batch_keeps_its_order(nats_cluster, gateway):
    station = station_id()
    storage = gateway()
    kept = record(station)
    storage.put_records([kept])
    impostor = NewRecord(station, kept.record_id, hashlib.sha256(b"other").hexdigest(), b"other")
    fresh = record(station)

    outcomes = gateway().put_records([fresh, impostor, kept])

    assert isinstance(outcomes[0], StoredRecord) and outcomes[0].record_id == fresh.record_id
    assert isinstance(outcomes[1], StationError) and outcomes[1].code == "record_conflict"
    assert not outcomes[1].retryable and kept.sha256 in outcomes[1].message
    assert isinstance(outcomes[2], StoredRecord) and outcomes[2].duplicate
    assert storage.get_record(kept.record_id) == kept.sealed
    assert message_count(nats_cluster.urls, "STATION_RECORDS", f"stations.{station}.records") == 2


def test_get_record_returns_the_stored_bytes_and_not_found_otherwise(gateway):
    station = station_id()
    storage = gateway()
    new = record(station, 150_000)
    storage.put_records([new])

    assert gateway().get_record(new.record_id) == new.sealed
    found = storage.find_record(new.record_id)
    assert found is not None and (found.station_id, found.sha256, found.size) == (station, new.sha256, 150_000)
    assert storage.find_record("no-such-record") is None
    with pytest.raises(StationError) as refused:
        storage.get_record("no-such-record")
    assert refused.value.code == "not_found"


def test_the_index_not_the_dedup_window_keeps_a_record_single(nats_single):
    station = station_id()
    with JetStreamStorage(nats_single.urls, replicas=1, duplicate_window_s=1) as storage:
        new = record(station)
        [stored] = storage.put_records([new])
        time.sleep(1.5)  # the server has forgotten the Nats-Msg-Id
        [again] = storage.put_records([new])
        assert again.duplicate and again.ref == stored.ref
        assert message_count(nats_single.urls, "STATION_RECORDS", f"stations.{station}.records") == 1


def test_a_record_stored_without_its_index_entry_is_indexed_on_the_retry(nats_cluster, gateway):
    """A gateway died between the record's PubAck and the index entry; the station retries."""
    station = station_id()
    orphan, forged = record(station), record(station)

    async def publish_without_index() -> None:
        nc = await nats.connect(nats_cluster.urls)
        js = nc.jetstream()
        for new in (orphan, forged):
            await js.publish(f"stations.{station}.records", new.sealed, headers={
                "Nats-Msg-Id": new.record_id, "Record-Sha256": new.sha256, "Station-Id": station})
        await nc.close()

    storage = gateway()
    asyncio.run(publish_without_index())
    impostor = NewRecord(station, forged.record_id, orphan.sha256, orphan.sealed)

    retried, conflicting = storage.put_records([orphan, impostor])

    assert isinstance(retried, StoredRecord) and retried.duplicate
    assert storage.get_record(orphan.record_id) == orphan.sealed
    assert isinstance(conflicting, StationError) and conflicting.code == "record_conflict"
    assert storage.get_record(forged.record_id) == forged.sealed  # the index names what is really stored
    assert message_count(nats_cluster.urls, "STATION_RECORDS", f"stations.{station}.records") == 2


def test_a_record_over_max_payload_is_refused_naming_sizes_and_the_setting():
    station = station_id()
    with NatsCluster(1, max_payload="1MB") as small, JetStreamStorage(small.urls, replicas=1) as storage:
        too_big, fits = record(station, 1_100_000), record(station, 900_000)

        refused, stored = storage.put_records([too_big, fits])

        assert isinstance(refused, StationError) and refused.code == "record_too_large"
        assert not refused.retryable
        assert "1100000 bytes" in refused.message and "1048576" in refused.message
        assert "max_payload" in refused.message
        assert isinstance(stored, StoredRecord)  # the connection survived the refusal
        assert storage.find_record(too_big.record_id) is None


def test_a_record_over_the_8_mib_ceiling_is_refused(gateway):
    station = station_id()
    [refused] = gateway().put_records([record(station, 8 * 1024 * 1024)])
    assert isinstance(refused, StationError) and refused.code == "record_too_large"
    assert "8388608" in refused.message and not refused.retryable


# -- events ----------------------------------------------------------------------------

def test_events_are_stored_in_order_resends_skipped_and_gaps_refused(nats_cluster, gateway):
    station = station_id()
    storage = gateway()
    assert storage.last_event_seq(station) == 0

    assert storage.put_events(station, [event(station, seq) for seq in (1, 2, 3)]) == 3
    assert storage.put_events(station, [event(station, seq) for seq in (2, 3, 4, 5)]) == 5  # a resend
    with pytest.raises(EventGap) as gap:
        storage.put_events(station, [event(station, 7), event(station, 8)])
    assert gap.value.expected == 6 and gap.value.details == {"expected": 6, "got": 7}
    with pytest.raises(EventGap):
        storage.put_events(station, [event(station, 6), event(station, 8)])  # a hole inside the batch
    assert storage.put_events(station, []) == 5

    seqs = [int(m.headers["Station-Seq"]) for m in read_stream(nats_cluster.urls, f"stations.{station}.events")]
    assert seqs == [1, 2, 3, 4, 5]
    assert storage.last_event_seq(station) == 5


def test_a_gateway_with_a_stale_cache_rereads_before_refusing(nats_cluster, gateway):
    station = station_id()
    first, second = gateway(), gateway()
    assert first.put_events(station, [event(station, 1), event(station, 2)]) == 2
    assert second.put_events(station, [event(station, seq) for seq in (3, 4, 5)]) == 5  # the station moved on

    assert first.put_events(station, [event(station, 6)]) == 6  # first's cache said 2
    assert first.put_events(station, [event(station, seq) for seq in (4, 5, 6, 7)]) == 7
    with pytest.raises(EventGap):
        second.put_events(station, [event(station, 9)])

    seqs = [int(m.headers["Station-Seq"]) for m in read_stream(nats_cluster.urls, f"stations.{station}.events")]
    assert seqs == [1, 2, 3, 4, 5, 6, 7]


def test_a_resend_refills_an_event_missing_below_the_last(nats_cluster, gateway):
    """Event 3 lost in a leader change while 4 got in: the station's resend brings 3 back."""
    station = station_id()
    storage = gateway()

    async def publish_with_a_hole() -> None:
        nc = await nats.connect(nats_cluster.urls)
        js = nc.jetstream()
        for seq in (1, 2, 4):
            body = {"seq": seq, "t_ns": event(station, seq).t_ns, "topic": "session.opened", "body": {}}
            await js.publish(f"stations.{station}.events", json.dumps(body).encode(),
                             headers={"Station-Seq": str(seq), "Nats-Msg-Id": f"{station}:{seq}"})
        await nc.close()

    asyncio.run(publish_with_a_hole())
    assert storage.put_events(station, [event(station, seq) for seq in (3, 4, 5)]) == 5

    seqs = sorted(int(m.headers["Station-Seq"]) for m in read_stream(nats_cluster.urls, f"stations.{station}.events"))
    assert seqs == [1, 2, 3, 4, 5]


def test_events_replay_from_a_sequence_per_station_and_follow(gateway):
    one, two = station_id(), station_id()
    storage = gateway()
    storage.put_events(one, [event(one, seq) for seq in range(1, 6)])
    storage.put_events(two, [event(two, seq) for seq in range(1, 4)])

    assert [e.seq for e in storage.events(one, 2)] == [3, 4, 5]
    assert list(storage.events(one, 5)) == []
    assert list(storage.events(station_id(), 0)) == []
    merged = [(e.station_id, e.seq) for e in storage.events(None, 3) if e.station_id in (one, two)]
    assert merged == [(one, 4), (one, 5)]
    assert next(iter(storage.events(two, 0))) == event(two, 1)

    writer = gateway()
    later = threading.Timer(0.5, writer.put_events, args=(one, [event(one, 6), event(one, 7)]))
    later.start()
    started = time.monotonic()
    followed = [e.seq for e in storage.events(one, 4, follow=True, timeout_s=1.5)]
    later.join()
    assert followed == [5, 6, 7]
    assert 1.9 <= time.monotonic() - started < 5


def test_close_ends_a_follower_at_once(gateway):
    station = station_id()
    storage = gateway()
    storage.put_events(station, [event(station, 1)])
    outcome: list = []

    def follow() -> None:
        try:
            outcome.extend(e.seq for e in storage.events(station, 0, follow=True))
        except StorageError as error:
            outcome.append(error)

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.5)
    started = time.monotonic()
    storage.close()
    follower.join(5)
    assert not follower.is_alive() and time.monotonic() - started < 3
    assert outcome[0] == 1 and (len(outcome) == 1 or isinstance(outcome[1], StorageError))


# -- the public contract and the station list ---------------------------------------------

def test_subscribers_see_the_documented_subjects_headers_and_bodies(nats_cluster, gateway):
    station = station_id()
    storage = gateway()
    new = record(station, 50_000)

    async def watch() -> tuple[list, list]:
        nc = await nats.connect(nats_cluster.urls)
        live = await nc.subscribe(f"stations.{station}.>")
        await nc.flush()
        await asyncio.to_thread(storage.put_events, station, [event(station, 1), event(station, 2)])
        await asyncio.to_thread(storage.put_records, [new])
        seen = [await live.next_msg(timeout=5) for _ in range(3)]
        streams = [await nc.jetstream().stream_info(name) for name in
                   ("STATION_EVENTS", "STATION_RECORDS", "STATION_RECORD_INDEX", "STATION_STATUS")]
        await nc.close()
        return seen, streams

    seen, streams = asyncio.run(watch())

    first, second, sealed = seen
    assert first.subject == f"stations.{station}.events"
    assert first.headers == {"Station-Seq": "1", "Nats-Msg-Id": f"{station}:1"}
    assert first.data == ('{"seq":1,"t_ns":1700000000000000001,"topic":"session.opened",'
                          '"body":{"seq":1,"operator":"Nguyễn Văn A"}}').encode("utf-8")
    assert second.headers["Nats-Msg-Id"] == f"{station}:2"
    assert sealed.subject == f"stations.{station}.records"
    assert sealed.headers == {"Nats-Msg-Id": new.record_id, "Record-Sha256": new.sha256, "Station-Id": station}
    assert sealed.data == new.sealed
    assert [m.headers for m in read_stream(nats_cluster.urls, f"stations.{station}.events")] == \
        [first.headers, second.headers]

    events_stream, records_stream, index_stream, status_stream = (info.config for info in streams)
    assert events_stream.subjects == ["stations.*.events"] and records_stream.subjects == ["stations.*.records"]
    for config in (events_stream, records_stream):
        assert (config.num_replicas, config.storage, config.duplicate_window) == (3, api.StorageType.FILE, 86400)
    assert records_stream.max_msg_size == 8 * 1024 * 1024
    assert (index_stream.max_msgs_per_subject, index_stream.discard, index_stream.discard_new_per_subject) == \
        (1, api.DiscardPolicy.NEW, True)
    assert (status_stream.max_msgs_per_subject, status_stream.discard) == (1, api.DiscardPolicy.OLD)


def test_stations_lists_status_last_event_and_record_count(gateway):
    station, quiet = station_id(), station_id()
    storage = gateway()
    storage.note_station(station, 111, {"backlog": 3})
    storage.note_station(station, 222, {"backlog": 1})
    storage.note_station(quiet, 333, {})
    storage.put_events(station, [event(station, seq) for seq in (1, 2, 3)])
    storage.put_records([record(station), record(station)])

    listed = {info.station_id: info for info in gateway().stations()}

    assert listed[station].to_dict() == {"station": station, "last_seen_ns": 222, "last_seq": 3, "records": 2,
                                         "status": {"backlog": 1}}
    assert (listed[quiet].last_seen_ns, listed[quiet].last_seq, listed[quiet].records) == (333, 0, 0)


def test_construction_is_idempotent_and_errors_are_actionable(nats_cluster):
    storages = []
    threads = [threading.Thread(target=lambda: storages.append(JetStreamStorage.from_url(nats_cluster.url)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(storages) == 3 and all(storage.name == "jetstream" for storage in storages)
    finally:
        for storage in storages:
            storage.close()
    with pytest.raises(StationError) as closed:
        storages[0].last_event_seq("VN-1")
    assert closed.value.code == "storage_unavailable"

    with pytest.raises(ConfigError) as bad_url:
        JetStreamStorage.from_url("nats://127.0.0.1:4222,localhost")
    assert "'localhost' is not nats://host:port" in str(bad_url.value)
    with pytest.raises(StorageError) as nobody:
        JetStreamStorage(["nats://127.0.0.1:1"], connect_timeout_s=0.5)
    assert "nats://127.0.0.1:1" in nobody.value.message and nobody.value.retryable


def test_three_replicas_on_one_server_is_refused_clearly(nats_single):
    with pytest.raises(StorageError) as refused:
        JetStreamStorage(nats_single.urls, replicas=3)
    assert "replicas 3" in refused.value.message and "STATION_EVENTS" in refused.value.message
    assert "single server" in refused.value.message and not refused.value.retryable


# -- a node dies mid-write -------------------------------------------------------------

def test_killing_a_node_mid_batch_loses_and_duplicates_nothing(nats_cluster, gateway):
    """Two gateways deliver the same 100 records (a station failing over) while the records
    stream's leader is SIGKILLed; each retries what failed, as a station would."""
    station = station_id()
    rng = random.Random(7)
    batch = [record(station, rng.randint(50_000, 200_000)) for _ in range(100)]
    gateway().put_records([batch[0]])  # the stream has a leader before the kill
    victim = nats_cluster.leader_of("STATION_RECORDS")
    assert victim is not None
    # One gateway knows only the victim (it finds the others in the server's INFO), one knows all.
    gateways = [gateway([nats_cluster.node(victim).url], request_timeout_s=2),
                gateway(nats_cluster.urls, request_timeout_s=2)]
    retries, never_stored = Counter(), Counter()
    refused: list[StationError] = []

    def deliver(index: int) -> None:
        pending = list(batch)
        deadline = time.monotonic() + 45
        while pending and time.monotonic() < deadline:
            try:
                outcomes = gateways[index].put_records(pending)
            except StorageError:
                outcomes = [StorageError("batch failed")] * len(pending)
            refused.extend(o for o in outcomes if isinstance(o, StationError) and not o.retryable)
            pending = [r for r, o in zip(pending, outcomes) if isinstance(o, StationError) and o.retryable]
            retries[index] += len(pending)
            if pending:
                time.sleep(0.2)
        never_stored[index] = len(pending)

    killer = threading.Timer(0.3, nats_cluster.kill, args=(victim,))
    threads = [threading.Thread(target=deliver, args=(index,)) for index in (0, 1)]
    killer.start()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        killer.join()
        assert not nats_cluster.node(victim).running
        assert not +never_stored, f"records never stored by gateway 0, 1: {never_stored}"
        assert not refused, refused[:3]
        assert sum(retries.values()) > 0, "the kill did not interrupt any write: the test proves nothing"
        again = gateways[1].put_records(batch)  # a late resend: every one a duplicate
        assert all(isinstance(o, StoredRecord) and o.duplicate for o in again)
    finally:
        killer.join()
        nats_cluster.start(victim)

    stored = read_stream(nats_cluster.urls, f"stations.{station}.records")
    copies = Counter(message.headers["Nats-Msg-Id"] for message in stored)
    assert copies == Counter({new.record_id: 1 for new in batch})
    expected = {new.record_id: new.sha256 for new in batch}
    for message in stored:
        assert hashlib.sha256(message.data).hexdigest() == expected[message.headers["Nats-Msg-Id"]]
        assert message.headers["Record-Sha256"] == expected[message.headers["Nats-Msg-Id"]]


def test_stream_setup_asks_again_after_a_timeout_and_gives_up_at_its_deadline(monkeypatch):
    """A cluster electing its leaders answers nothing for a while: creating the streams (an
    idempotent request) is asked again, within a deadline. The client is a stand-in: no
    real server can be made to time out on cue."""
    import nats.errors
    from station.collector import jetstream

    asked: list[str] = []

    class SilentFirst:
        def __init__(self, silent: int):
            self.silent = silent

        async def add_stream(self, config):
            asked.append(config.name)
            if len(asked) <= self.silent:
                raise nats.errors.TimeoutError

    def storage_with(jsm) -> JetStreamStorage:
        storage = JetStreamStorage.__new__(JetStreamStorage)
        storage._nc = type("Client", (), {"jsm": lambda self, timeout: jsm})()
        return storage

    configs = [api.StreamConfig(name="A"), api.StreamConfig(name="B")]
    asyncio.run(storage_with(SilentFirst(1))._ensure_streams(configs))
    assert asked == ["A", "A", "B"]
    asked.clear()
    monkeypatch.setattr(jetstream, "STREAM_SETUP_TIMEOUT_S", 0.0)
    monkeypatch.setattr(jetstream, "STREAM_SETUP_DEADLINE_S", -1.0)  # no time left for a second ask
    with pytest.raises(nats.errors.TimeoutError):
        asyncio.run(storage_with(SilentFirst(1))._ensure_streams(configs))
    assert asked == ["A"]
