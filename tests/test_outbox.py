"""The uplink's view of the store: delivery marks beside a running writer, purge rules."""
import sqlite3

import pytest

from delivery_harness import fill_store, journal
from station.outbox import Outbox
from station.store import SCHEMA_VERSION, RecordStore, StoreError


@pytest.fixture
def store_root(provisioned):
    return provisioned["state"] / "store"


def test_a_record_goes_delivered_confirmed_purged_keeping_its_id_hash_and_receipt(provisioned, store_root):
    [first, second] = fill_store(provisioned["state"], 2, 1000)
    outbox = Outbox(store_root, fsync=False)
    assert [r.record_id for r in outbox.undelivered()] == [first, second]
    outbox.mark_delivered([(first, {"collector": "c1", "record": first})])
    assert [r.record_id for r in outbox.undelivered()] == [second]
    with pytest.raises(StoreError, match="not confirmed"):
        outbox.purge(first)                                   # acknowledged is not enough
    assert outbox.sealed(first)
    outbox.mark_confirmed([first])
    assert [r.record_id for r in outbox.purgeable(confirmed_before_ns=2**62)] == [first]
    outbox.purge(first)
    with pytest.raises(FileNotFoundError):
        outbox.sealed(first)
    outbox.close()
    store = RecordStore.reader(store_root)
    row = store.get(first)
    assert row.purged_ns and row.sealed_sha256 and store.verify(second) == []
    with pytest.raises(StoreError) as purged:
        store.sealed(first)
    assert purged.value.code == "purged"
    store.close()
    assert Outbox(store_root, read_only=True).receipt(first) == {"collector": "c1", "record": first}


def test_a_record_central_does_not_have_goes_back_to_the_queue(provisioned, store_root):
    [record_id] = fill_store(provisioned["state"], 1, 1000)
    outbox = Outbox(store_root, fsync=False)
    outbox.mark_delivered([(record_id, {"collector": "c1"})])
    outbox.mark_missing(record_id)
    assert [r.record_id for r in outbox.undelivered()] == [record_id]
    assert outbox.receipt(record_id) is None


def test_backlog_counts_what_is_waiting_and_the_event_cursor_only_moves_forward(provisioned, store_root):
    ids = fill_store(provisioned["state"], 3, 5000)
    journal(provisioned["state"], 4)
    outbox = Outbox(store_root, fsync=False)
    backlog = outbox.backlog()
    assert (backlog.records, backlog.events, backlog.last_seq) == (3, 7, 7) and backlog.bytes > 15000
    assert backlog.oldest_ns is not None
    outbox.set_events_acked(5)
    outbox.set_events_acked(2)                                # a stale ack never moves it back
    assert outbox.events_acked() == 5 and outbox.backlog().events == 2
    outbox.mark_delivered([(record_id, {}) for record_id in ids])
    assert outbox.backlog().records == 0 and outbox.backlog().unconfirmed == 3


def test_the_uplink_writes_beside_the_controller_holding_the_store(provisioned, store_root):
    from station import keyring
    keys = keyring.load(provisioned["state"] / "keys")
    [record_id] = fill_store(provisioned["state"], 1, 1000)
    writer = RecordStore(store_root, cipher=keys.capture, fsync=False)   # the controller, running
    outbox = Outbox(store_root, fsync=False)
    outbox.mark_delivered([(record_id, {"collector": "c1"})])
    with writer.transaction() as tx:
        tx.journal("station.test", {})
    assert writer.get(record_id).delivered_ns is not None
    writer.close()


def test_an_outbox_waits_for_the_controller_to_create_or_migrate_the_store(provisioned, store_root, tmp_path):
    with pytest.raises(StoreError) as missing:
        Outbox(tmp_path / "nothing-here")
    assert missing.value.code == "store_not_ready" and missing.value.retryable
    fill_store(provisioned["state"], 1, 1000)
    db = sqlite3.connect(store_root / "store.db")
    db.execute("DROP TABLE uplink")
    db.execute("PRAGMA user_version=2")                      # a store of the previous release
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="migrates it"):
        Outbox(store_root)
    from station import keyring
    RecordStore(store_root, cipher=keyring.load(provisioned["state"] / "keys").capture, fsync=False).close()
    outbox = Outbox(store_root)                              # the controller migrated it to the current schema
    assert outbox.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert outbox.events_acked() == 0
