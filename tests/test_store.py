"""The store: sealed records committed durably, encrypted sessions, a gap-free journal, one
writer, recovery of crash leftovers, migration of the plaintext schema-1 store, a full disk."""
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from station.errors import StationError
from station.keyring import CaptureCipher
from station.store import SCHEMA_VERSION, RecordStore, StoreError

pytestmark = pytest.mark.timeout(60)
CIPHER = CaptureCipher(bytes(range(32)))


def store_at(path, **kwargs) -> RecordStore:
    return RecordStore(path, cipher=CIPHER, **kwargs)


def commit(store, record_id, sealed=b"SEALED" * 100, session="s1"):
    def closing(tx):
        tx.save_session(session, "finished", "op7", 1, 2, None, record_id)
        tx.keep_captures(session, [])
        tx.journal("station.enrollment.completed", {"session": session, "record": record_id})
        tx.audit("op7", "session.finish", session_id=session, record_id=record_id)
    return store.commit_record(record_id, session, "application/test", sealed, {"fingers": 10}, closing)


def test_commit_keeps_the_sealed_blob_its_hash_and_outbox_state(tmp_path):
    store = store_at(tmp_path / "store")
    row = commit(store, "r1", b"x" * 5000)
    assert row.sealed_bytes == 5000 and row.delivered_ns is None and row.summary == {"fingers": 10}
    assert store.sealed("r1") == b"x" * 5000 and store.verify("r1") == []
    path = store.sealed_path("r1")
    assert path.stat().st_mode & 0o777 == 0o600 and store.root.stat().st_mode & 0o777 == 0o700
    assert store.session_outcome("s1") == ("finished", "r1")
    assert [e.topic for e in store.journal_since(0)] == ["station.enrollment.completed"]
    assert store.audit_log()[0]["actor"] == "op7"
    store.close()
    again = store_at(tmp_path / "store")
    assert again.record_ids() == ["r1"] and again.counts() == {"records": 1, "open_sessions": 0}


def test_a_tampered_or_missing_sealed_file_is_reported(tmp_path):
    store = store_at(tmp_path / "store")
    commit(store, "r1", session="s1")
    commit(store, "r2", session="s2")
    data = bytearray(store.sealed_path("r1").read_bytes())
    data[10] ^= 1
    store.sealed_path("r1").write_bytes(bytes(data))
    store.sealed_path("r2").unlink()
    assert "does not match its stored hash" in store.verify("r1")[0]
    assert store.verify("r2") and store.verify("nope") == ["record nope is not in the store"]


def test_duplicate_record_id_is_refused_and_keeps_the_first(tmp_path):
    store = store_at(tmp_path / "store")
    commit(store, "r1", b"first")
    with pytest.raises(StoreError, match="exists already"):
        commit(store, "r1", b"second", session="s2")
    assert store.sealed("r1") == b"first"


def test_sessions_and_captures_are_encrypted_at_rest(tmp_path):
    store = store_at(tmp_path / "store")
    name, image = "Nguyễn Thị Hương", b"\xff\xd8\xff\xe0JFIF" + secrets.token_bytes(2000)
    with store.transaction() as tx:
        tx.save_session("s1", "open", "op7", 1, 2, {"applicant": {"full_name": name}})
        tx.put_capture("s1", "portrait.jpg", image)
        tx.put_capture("s1", "finger-01.gray8", b"\x80" * 5000)
    assert store.open_sessions() == [{"applicant": {"full_name": name}}]
    assert store.capture("s1", "portrait.jpg") == image
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert name.encode() not in raw and b"JFIF" not in raw and b"\x80" * 64 not in raw
    # another key cannot read them
    other = RecordStore(tmp_path / "store", cipher=CaptureCipher(bytes(32)))
    with pytest.raises(Exception):
        other.capture("s1", "portrait.jpg")


def test_ending_a_session_destroys_its_captures(tmp_path):
    store = store_at(tmp_path / "store")
    with store.transaction() as tx:
        tx.save_session("s1", "open", "op7", 1, 2, {"x": 1})
        for n in ("a", "b", "c"):
            tx.put_capture("s1", n, b"data")
    with store.transaction() as tx:
        tx.keep_captures("s1", ["b"])
    assert store.capture("s1", "b") == b"data"
    with pytest.raises(StoreError):
        store.capture("s1", "a")
    with store.transaction() as tx:
        tx.save_session("s1", "cancelled", "op7", 1, 3, None)
        tx.keep_captures("s1", [])
    assert store.db.execute("SELECT COUNT(*) FROM captures").fetchone()[0] == 0
    assert store.open_sessions() == [] and store.session_outcome("s1") == ("cancelled", "")


def test_journal_is_gap_free_even_when_a_transaction_rolls_back(tmp_path):
    store = store_at(tmp_path / "store")
    with store.transaction() as tx:
        assert tx.journal("station.a.x", {"n": 1}) == 1
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.journal("station.a.x", {"n": 2})
            raise RuntimeError("the transition failed")
    with store.transaction() as tx:
        assert tx.journal("station.a.x", {"n": 3}) == 2
    assert [(e.seq, e.body["n"]) for e in store.journal_since(0)] == [(1, 1), (2, 3)]
    assert [e.seq for e in store.journal_since(1)] == [2] and store.last_seq() == 2


def test_one_writer_at_a_time_and_readers_touch_nothing(tmp_path):
    store = store_at(tmp_path / "store")
    commit(store, "r1")
    with pytest.raises(StoreError, match=f"in use by another process \\(pid {os.getpid()}\\)") as busy:
        store_at(tmp_path / "store")
    assert busy.value.code == "store_busy" and busy.value.exit_status == 75
    # a writer mid-commit: its sealed file is on disk, its row not yet; a reader must not
    # mistake it for crash debris
    half = store.sealed_path("r2")
    half.write_bytes(b"being committed")
    reader = RecordStore.reader(tmp_path / "store")
    assert reader.record_ids() == ["r1"] and half.exists()
    with pytest.raises(StoreError):
        reader.recover()
    with pytest.raises(StoreError):
        with reader.transaction():
            pass
    reader.close()
    store.close()
    # the next writer (after a crash) does clean it up
    again = store_at(tmp_path / "store")
    assert not half.exists() and again.verify("r1") == []


def test_migration_seals_schema_1_records_and_removes_their_plaintext(tmp_path):
    root = tmp_path / "store"
    (root / "records" / "old1").mkdir(parents=True)
    (root / "records" / "old1" / "portrait.jpg").write_bytes(b"\xff\xd8JFIF-plain")
    db = sqlite3.connect(root / "store.db")
    db.executescript("""CREATE TABLE records (record_id TEXT PRIMARY KEY, session_id TEXT NOT NULL,
        created_ns INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'committed', manifest TEXT NOT NULL,
        delivered_ns INTEGER, purged_ns INTEGER);""")
    manifest = {"applicant": {"surname": "ERIKSSON"}, "files": [{"name": "portrait.jpg"}]}
    db.execute("INSERT INTO records(record_id, session_id, created_ns, manifest) VALUES ('old1','s0',42,?)",
               (json.dumps(manifest),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="provision") as unkeyed:
        store_at(root)
    assert unkeyed.value.code == "not_provisioned"
    sealed_with = []

    def sealer(record_id, manifest, files):
        sealed_with.append((record_id, manifest["applicant"], files))
        return b"SEALED:" + record_id.encode()

    (root / "records" / "old1.sealed").write_bytes(b"half of a migration that crashed")
    store = store_at(root, legacy_sealer=sealer)
    assert sealed_with == [("old1", {"surname": "ERIKSSON"}, {"portrait.jpg": b"\xff\xd8JFIF-plain"})]
    row = store.get("old1")
    assert row.created_ns == 42 and row.content_type == "application/vnd.station.legacy-record"
    assert store.sealed("old1") == b"SEALED:old1"
    assert not (root / "records" / "old1").exists()
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
    raw = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert b"ERIKSSON" not in raw and b"JFIF-plain" not in raw


DISK_FULL = textwrap.dedent("""
    import sys
    from station.keyring import CaptureCipher
    from station.store import SCHEMA_VERSION, RecordStore, StoreError
    store = RecordStore(sys.argv[1], cipher=CaptureCipher(bytes(32)))
    committed = []
    for i in range(1000):
        def closing(tx, i=i):
            tx.journal("station.enrollment.completed", {"record": f"r{i}"})
        try:
            store.commit_record(f"r{i}", f"s{i}", "t", bytes(100_000), {}, closing)
        except StoreError as exc:
            print("FULL", exc.retryable, exc.message.split(":")[0], flush=True)
            break
        committed.append(f"r{i}")
    assert committed, "nothing fit"
    problems = [p for r in committed for p in store.verify(r)]
    leftovers = sorted(p.name for p in store.records_dir.iterdir() if p.name.removesuffix(".sealed") not in committed)
    print("COMMITTED", len(committed), "PROBLEMS", len(problems), "LEFTOVERS", leftovers,
          "JOURNAL", store.last_seq(), flush=True)
""")


def test_a_full_disk_fails_the_commit_cleanly_and_keeps_earlier_records(tmp_path):
    """A real full filesystem: a 2 MiB tmpfs mounted in a private mount namespace."""
    mount = tmp_path / "small"
    mount.mkdir()
    script = (f"mount -t tmpfs -o size=2m tmpfs {mount} && "
              f"exec {sys.executable} -c '{DISK_FULL}' {mount}/store")
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert "FULL True could not" in out.stdout
    assert "PROBLEMS 0 LEFTOVERS []" in out.stdout
    committed = int(out.stdout.split("COMMITTED")[1].split()[0])
    assert 5 <= committed < 20  # 2 MiB holds a handful of 100 kB records, then it is full
    assert f"JOURNAL {committed}" in out.stdout  # no journal entry for the record that failed


# -- the print queue (schema 4) ------------------------------------------------------------
def print_job(state="queued", job_id="j1", record_id="r1", attempt=1):
    return {"job_id": job_id, "record_id": record_id, "state": state, "attempt": attempt, "max_attempts": 3,
            "paused": None, "reason": "", "spoiled": [], "created_ns": 1, "updated_ns": 2, "reject_first": False}


def card_data(name="Nguyễn Thị Hương"):
    header = json.dumps({"full_name": name, "id_number": "001234567890"}, ensure_ascii=False).encode()
    return b"CCCD-CARD/1\n" + header + b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(30_000)


def test_a_print_jobs_card_is_encrypted_at_rest_bound_to_its_job_and_survives_reopening(tmp_path):
    store = store_at(tmp_path / "store")
    card = card_data()
    with store.transaction() as tx:
        tx.save_print_job(print_job("queued"), card)
        tx.save_print_job(print_job("queued", job_id="j2", record_id="r2"), b"another card")
    with store.transaction() as tx:
        tx.save_print_job({**print_job("encoding"), "updated_ns": 3})  # no card: the stored one stays
    assert store.print_card("j1") == card and store.print_job("j1")["state"] == "encoding"
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert "Nguyễn".encode() not in raw and b"001234567890" not in raw and card[-64:] not in raw
    assert b"another card" not in raw
    again = store_at(tmp_path / "store")
    assert again.print_card("j1") == card and again.print_card("j2") == b"another card"
    assert [j["job_id"] for j in again.print_jobs()] == ["j1", "j2"]  # the order first saved: the queue's
    assert [j["job_id"] for j in again.print_jobs(["queued"])] == ["j2"] and again.print_jobs(("done",)) == []
    assert again.print_job("j1") == {**print_job("encoding"), "updated_ns": 3} and again.print_job("nope") is None
    # a card moved to another job's row does not decrypt: the AAD names the job
    again.db.execute("UPDATE print_jobs SET card=(SELECT card FROM print_jobs WHERE job_id='j1') WHERE job_id='j2'")
    with pytest.raises(StationError, match="corrupt") as moved:
        again.print_card("j2")
    assert moved.value.code == "capture_corrupt"
    again.close()
    with pytest.raises(StationError):
        RecordStore(tmp_path / "store", cipher=CaptureCipher(bytes(32))).print_card("j1")


def test_a_rejected_print_job_keeps_its_card_for_the_operators_retry(tmp_path):
    store = store_at(tmp_path / "store")
    card = card_data()
    with store.transaction() as tx:
        tx.save_print_job(print_job("printing"), card)
    with store.transaction() as tx:
        tx.save_print_job(print_job("rejected"))
    assert store.print_card("j1") == card
    store.close()


@pytest.mark.parametrize("ending", ["done", "cancelled"])
def test_a_print_job_that_ends_destroys_its_card(tmp_path, ending):
    store = store_at(tmp_path / "store")
    card = card_data()
    with store.transaction() as tx:
        tx.save_print_job(print_job("printing"), card)
    sealed = store.db.execute("SELECT card FROM print_jobs WHERE job_id='j1'").fetchone()[0]
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the encrypted card in the database file itself
    assert sealed[1000:1064] in (tmp_path / "store" / "store.db").read_bytes()
    with store.transaction() as tx:
        tx.save_print_job(print_job(ending), card)  # even passed again, an ended job keeps no card
    assert store.db.execute("SELECT card FROM print_jobs WHERE job_id='j1'").fetchone()[0] is None
    with pytest.raises(StoreError, match=f"print job j1 \\({ending}\\) holds no card data") as gone:
        store.print_card("j1")
    assert gone.value.code == "not_found" and store.print_job("j1")["state"] == ending
    with pytest.raises(StoreError, match="no print job nope in the store") as absent:
        store.print_card("nope")
    assert absent.value.code == "not_found"
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert sealed[1000:1064] not in raw and sealed[-64:] not in raw  # secure_delete zeroed its pages
    again = store_at(tmp_path / "store")
    with pytest.raises(StoreError, match="holds no card data"):
        again.print_card("j1")
    # a retried job prints only once the controller hands the card data in again
    with again.transaction() as tx:
        tx.save_print_job(print_job("queued"))
    with pytest.raises(StoreError, match="print job j1 \\(queued\\) holds no card data"):
        again.print_card("j1")
    with again.transaction() as tx:
        tx.save_print_job(print_job("queued"), card)
    assert again.print_card("j1") == card


def test_a_schema_3_store_migrates_to_4_with_an_empty_print_queue(tmp_path):
    root = tmp_path / "store"
    store = store_at(root)
    commit(store, "r1")
    store.close()
    db = sqlite3.connect(root / "store.db")  # as the previous release left it
    db.executescript("DROP INDEX print_jobs_state; DROP TABLE print_jobs; PRAGMA user_version=3;")
    db.close()
    store = store_at(root)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert store.record_ids() == ["r1"] and store.verify("r1") == [] and store.print_jobs() == []
    with store.transaction() as tx:
        tx.save_print_job(print_job("queued"), b"card")
    assert store.print_card("j1") == b"card"
    store.close()
    reader = RecordStore.reader(root)
    assert [j["job_id"] for j in reader.print_jobs()] == ["j1"]
    reader.close()
