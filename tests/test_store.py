"""The record store: durable commit, integrity check, crash leftovers, a full disk."""
import os
import subprocess
import sys
import textwrap

import pytest

from station.store import RecordStore, StoreError

pytestmark = pytest.mark.timeout(60)


def test_commit_get_verify(tmp_path):
    store = RecordStore(tmp_path / "store")
    record = store.commit("r1", "s1", {"operator": "op7"}, {"portrait.jpg": b"\xff\xd8jpeg", "finger-01.wsq": b"w" * 1000})
    assert record.manifest["operator"] == "op7"
    assert {f["name"] for f in record.manifest["files"]} == {"portrait.jpg", "finger-01.wsq"}
    assert store.verify("r1") == []
    assert (record.directory / "finger-01.wsq").stat().st_mode & 0o777 == 0o600
    assert record.directory.stat().st_mode & 0o777 == 0o700
    store.close()
    # durable across a reopen
    again = RecordStore(tmp_path / "store")
    assert again.get("r1").manifest["files"] == record.manifest["files"]
    assert again.counts() == {"committed": 1}


def test_tampered_or_missing_file_is_reported(tmp_path):
    store = RecordStore(tmp_path / "store")
    record = store.commit("r1", "s1", {}, {"a.bin": b"12345", "b.bin": b"678"})
    (record.directory / "a.bin").write_bytes(b"99999")
    (record.directory / "b.bin").unlink()
    problems = store.verify("r1")
    assert any("a.bin" in p and "hash" in p for p in problems)
    assert any("b.bin" in p for p in problems)
    assert store.verify("nope") == ["record nope is not in the store"]


def test_duplicate_record_id_is_refused_and_keeps_the_first(tmp_path):
    store = RecordStore(tmp_path / "store")
    store.commit("r1", "s1", {}, {"a.bin": b"first"})
    with pytest.raises(StoreError, match="exists already"):
        store.commit("r1", "s2", {}, {"a.bin": b"second"})
    assert (store.get("r1").directory / "a.bin").read_bytes() == b"first"


def test_files_of_a_commit_that_never_reached_the_database_are_removed(tmp_path):
    store = RecordStore(tmp_path / "store")
    store.commit("kept", "s", {}, {"a.bin": b"1"})
    (store.records_dir / "crashed").mkdir()
    (store.records_dir / "crashed" / "a.bin").write_bytes(b"half")
    store.close()
    again = RecordStore(tmp_path / "store")
    assert not (again.records_dir / "crashed").exists()
    assert again.verify("kept") == []


DISK_FULL = textwrap.dedent("""
    import sys
    from station.store import RecordStore, StoreError
    store = RecordStore(sys.argv[1])
    committed = []
    for i in range(1000):
        try:
            store.commit(f"r{i}", "s", {"i": i}, {"finger.wsq": bytes(100_000)})
        except StoreError as exc:
            print("FULL", exc.retryable, exc.message.split(":")[0], flush=True)
            break
        committed.append(f"r{i}")
    assert committed, "nothing fit"
    problems = [p for r in committed for p in store.verify(r)]
    leftovers = sorted(p.name for p in store.records_dir.iterdir() if p.name not in committed)
    print("COMMITTED", len(committed), "PROBLEMS", len(problems), "LEFTOVERS", leftovers, flush=True)
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
    assert "FULL True could not commit record" in out.stdout
    assert "PROBLEMS 0 LEFTOVERS []" in out.stdout
    committed = int(out.stdout.split("COMMITTED")[1].split()[0])
    assert 5 <= committed < 20  # 2 MiB holds a handful of 100 kB records, then it is full
