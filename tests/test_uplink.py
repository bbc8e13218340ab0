"""The uplink and the collector as real processes: delivery, partitions, kills, resumption."""
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from delivery_harness import BIN, Relay, UplinkProcess, fill_store, free_port, journal, outbox_state, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from linkemu import EmulatedLink  # noqa: E402  (the benchmark's emulated 4G path)
from station.bus import CommandClient
from station.store import RecordStore

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def uplinks():
    started = []

    def start(*args, **kwargs):
        uplink = UplinkProcess(*args, **kwargs).start()
        started.append(uplink)
        return uplink
    yield start
    for uplink in started:
        uplink.stop(signal.SIGKILL)


def uplink_status(station, ctx):
    client = CommandClient(ctx, f"ipc://{station['run']}/uplink.cmd", name="uplink")
    try:
        return client.call("state", timeout_s=5).result["status"]
    finally:
        client.close()


def assert_all_delivered_once_in_order(central, station, ids):
    stored = central.records()
    assert sorted(stored) == sorted(ids)                       # every record, and nothing else
    store = RecordStore.reader(station["state"] / "store")
    try:
        rows = {r.record_id: r for r in store.records()}
        last_seq = store.last_seq()
    finally:
        store.close()
    for record_id, sha in stored.items():
        assert rows[record_id].sealed_sha256 == sha             # the very bytes the station sealed
    events = central.events("VN-HP-0001")
    assert [e["seq"] for e in events] == list(range(1, last_seq + 1))  # each once, in order, no gap


def test_delivers_every_record_and_event_once_then_confirms_and_purges(station, central, uplinks, ctx):
    ids = fill_store(station["state"], 12, 200_000)
    journal(station["state"], 30)
    central.start()
    uplinks(station["env"], station["etc"], central)
    wait_for(lambda: outbox_state(station["state"])["confirmed"] == 12, 60, "every record confirmed")
    assert_all_delivered_once_in_order(central, station, ids)
    store = RecordStore.reader(station["state"] / "store")
    try:
        wait_for(lambda: all(r.purged_ns for r in store.records()), 20, "purge after retention (0 days)")
        for row in store.records():
            assert not store.sealed_path(row.record_id).exists()          # the payload is gone
            assert row.sealed_sha256 == central.records()[row.record_id]  # the id and hash stay
        receipt = store.db.execute("SELECT receipt FROM records LIMIT 1").fetchone()[0]
    finally:
        store.close()
    assert '"collector"' in receipt and '"stored_ns"' in receipt
    status = uplink_status(station, ctx)
    assert status["link"] == "connected" and status["backlog"]["records"] == 0
    assert status["records_delivered"] == 12 and status["records_purged"] == 12
    shown = subprocess.run([str(BIN / "stationctl"), "uplink"], env=station["env"], capture_output=True,
                           text=True, timeout=30)
    assert shown.returncode == 0 and "link:        connected" in shown.stdout
    assert "backlog:     0 record(s), 0 B, 0 event(s)" in shown.stdout and "12 purged" in shown.stdout
    reported = central.tool("stations")
    assert '"station": "VN-HP-0001"' in reported and '"last_seq": 42' in reported


def test_partition_collector_down_during_enrollments_every_record_and_event_arrives_once(
        station, central, uplinks):
    central.start()
    uplinks(station["env"], station["etc"], central)
    ids = fill_store(station["state"], 5, 50_000)
    wait_for(lambda: outbox_state(station["state"])["delivered"] == 5, 30, "first records delivered")
    central.stop()                                              # the link to central is gone
    for batch in range(3):                                      # 15 enrollments while it is down
        ids += fill_store(station["state"], 5, 50_000, start=5 + 5 * batch)
        journal(station["state"], 3)
        time.sleep(0.5)
    assert outbox_state(station["state"])["delivered"] == 5
    follow = subprocess.Popen([str(BIN / "stationctl"), "uplink", "--follow"], env=station["env"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    central.start()                                             # back, later
    wait_for(lambda: outbox_state(station["state"])["backlog"].records == 0
             and outbox_state(station["state"])["backlog"].events == 0, 60, "backlog drained")
    shown, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0 and "[" + "." * 30 + "] 0/15 records" in shown   # the bar while down
    assert "[" + "#" * 30 + "] 15/15 records" in shown and "all records and events delivered" in shown
    assert_all_delivered_once_in_order(central, station, ids)


def test_sigkill_of_uplink_and_collector_at_random_points_loses_and_duplicates_nothing(
        station, central, uplinks):
    rng = random.Random(7)
    ids = fill_store(station["state"], 200, 20_000)
    central.start()
    uplink = uplinks(station["env"], station["etc"], central, extra={"window": {"bytes": 65536, "records": 4}})
    kills = 0
    while outbox_state(station["state"])["backlog"].records > 0 and kills < 6:
        time.sleep(rng.uniform(0.2, 0.8))
        if rng.random() < 0.5:
            uplink.stop(signal.SIGKILL)
            uplink.start()
        else:
            central.stop(signal.SIGKILL)
            central.start()
        kills += 1
    assert kills >= 2, "the drain finished before the faults: make it slower"
    wait_for(lambda: outbox_state(station["state"])["confirmed"] == 200, 90, "all 200 confirmed")
    assert_all_delivered_once_in_order(central, station, ids)


def test_a_partly_sent_record_resumes_where_the_collector_spool_ends(station, central, uplinks, ctx):
    size = 3_000_000
    [record_id] = fill_store(station["state"], 1, size)
    central.start()
    extra = {"chunk_bytes": 65536, "window": {"bytes": 65536, "records": 1}}
    uplink = uplinks(station["env"], station["etc"], central, extra=extra)
    spool = central.data_dir / "spool" / "VN-HP-0001"

    def spooled():
        parts = list(spool.glob("*.part")) if spool.exists() else []
        return parts and parts[0].stat().st_size > 1_000_000
    wait_for(spooled, 60, "a third of the record spooled", interval_s=0.01)
    uplink.stop(signal.SIGKILL)                                 # mid-record
    held = next(spool.glob("*.part")).stat().st_size
    uplink = uplinks(station["env"], station["etc"], central, extra=extra)
    wait_for(lambda: outbox_state(station["state"])["delivered"] == 1, 60, "the record delivered")
    sent_after_restart = uplink_status(station, ctx)["bytes_sent"]
    assert sent_after_restart < size - held + 200_000           # only the rest went again
    assert central.records() == {record_id: RecordStore.reader(station["state"] / "store").get(record_id)
                                 .sealed_sha256}


def test_events_are_not_stuck_behind_a_record_backlog(station, central, uplinks):
    fill_store(station["state"], 20, 400_000)                   # 8 MB: over 6 s on a 10 Mbit/s link
    central.start()
    with EmulatedLink(rate_mbit=10, delay_ms=30, blackhole_s=0, target=("127.0.0.1", central.port)) as path:
        uplinks(station["env"], station["etc"], central, endpoints=[f"tcp://127.0.0.1:{path.address[1]}"],
                extra={"window": {"bytes": 1_000_000, "records": 8}})
        wait_for(lambda: outbox_state(station["state"])["delivered"] >= 1, 30, "the drain started")
        journal(station["state"], 5)                            # events happen during the drain
        last = outbox_state(station["state"])["backlog"].last_seq
        wait_for(lambda: outbox_state(station["state"])["backlog"].events_acked >= last, 30, "the new events acked",
                 interval_s=0.05)
        assert outbox_state(station["state"])["backlog"].records >= 5  # long before the records are through


def test_a_black_holed_path_is_noticed_and_left_for_a_new_connection(station, central, uplinks, ctx):
    central.start()
    relay = Relay(central.port)
    try:
        uplinks(station["env"], station["etc"], central, endpoints=[f"tcp://127.0.0.1:{relay.port}"],
                extra={"stall_s": 2.0, "heartbeat_s": 0.5})
        fill_store(station["state"], 2, 10_000)
        wait_for(lambda: outbox_state(station["state"])["delivered"] == 2, 30, "first delivery")
        relay.blackhole(True)                                    # silently, connections stay open
        ids = fill_store(station["state"], 2, 10_000, start=2)
        wait_for(lambda: uplink_status(station, ctx)["stalls"] >= 1, 15, "the stall noticed")
        wait_for(lambda: relay.connections >= 2, 10, "a new connection")  # it dialled again, not waited forever
        assert "no answer for 2 s" in uplink_status(station, ctx)["last_error"]
        relay.blackhole(False)
        wait_for(lambda: outbox_state(station["state"])["confirmed"] == 4, 30, "delivery after the hole")
        assert set(ids) <= set(central.records())
    finally:
        relay.close()


def test_several_endpoints_fail_over_to_the_next(station, central, uplinks):
    central.start()
    dead = f"tcp://127.0.0.1:{free_port()}"                     # nobody listens there
    uplinks(station["env"], station["etc"], central, endpoints=[dead, f"tcp://127.0.0.1:{central.port}"],
            extra={"stall_s": 1.0})
    ids = fill_store(station["state"], 3, 10_000)
    wait_for(lambda: outbox_state(station["state"])["confirmed"] == 3, 30, "delivery via the second endpoint")
    assert sorted(central.records()) == sorted(ids)
