"""The whole path on the scale-out backend: a station's uplink -> collector gateways ->
a three-node JetStream cluster, with kills of every part, counted from the stream itself."""
from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import signal
import subprocess
import time
import uuid
import zipfile
from collections import Counter

import pytest

from delivery_harness import BIN, Central, UplinkProcess, fill_store, outbox_state, wait_for
from station import keyring, record
from station.store import RecordStore
from tests.collector.test_jetstream import read_stream

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def station(provisioned):
    """A station of its own (the cluster outlives one test): a fresh id and keys."""
    station_id = f"VN-JS-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(provisioned["state"] / "keys")
    keyring.provision(provisioned["state"] / "keys", station_id, provisioned["central_pub"].read_bytes())
    (provisioned["etc"] / "controller.yaml").write_text("store:\n  fsync: false\n")
    return {**provisioned, "id": station_id}


def gateway(station, root, nats_cluster, port=None):
    storage = {"backend": "jetstream", "nats": nats_cluster.urls, "replicas": 3, "fsync": False}
    return Central(root, [station["state"] / "keys" / keyring.STATION_PUB], port=port, extra={"storage": storage})


def stored_records(nats_cluster, station_id):
    messages = read_stream(nats_cluster.urls, f"stations.{station_id}.records")
    copies = Counter(m.headers["Nats-Msg-Id"] for m in messages)
    hashes = {m.headers["Nats-Msg-Id"]: hashlib.sha256(m.data).hexdigest() for m in messages}
    return copies, hashes


def test_two_gateways_one_cluster_every_record_and_event_once_through_kills_of_everything(
        station, nats_cluster, tmp_path):
    rng = random.Random(11)
    ids = fill_store(station["state"], 200, 20_000)
    first = gateway(station, tmp_path / "gw1", nats_cluster).start()
    second = gateway(station, tmp_path / "gw2", nats_cluster)
    second.public_key = first.public_key                      # one service key behind DNS
    (second.data_dir / "collector.key").write_bytes((first.data_dir / "collector.key").read_bytes())
    second.start()
    uplink = UplinkProcess(station["env"], station["etc"], first,
                           endpoints=[f"tcp://127.0.0.1:{first.port}", f"tcp://127.0.0.1:{second.port}"],
                           extra={"window": {"bytes": 65536, "records": 4}, "stall_s": 4.0}).start()
    killed = Counter()
    node = None
    try:
        while outbox_state(station["state"])["backlog"].records > 0 and sum(killed.values()) < 5:
            time.sleep(rng.uniform(0.3, 1.0))
            victim = ["uplink", "gateway", "node"][sum(killed.values()) % 3]
            if victim == "uplink":
                uplink.stop(signal.SIGKILL)
                uplink.start()
            elif victim == "gateway":
                target = rng.choice([first, second])
                target.stop(signal.SIGKILL)
                target.start()
            elif node is None:
                node = nats_cluster.leader_of("STATION_RECORDS") or "n1"
                nats_cluster.kill(node)
            killed[victim] += 1
        assert sum(killed.values()) >= 3, f"the drain finished before the faults: {killed}"
        if node is not None:
            nats_cluster.start(node)
        wait_for(lambda: outbox_state(station["state"])["confirmed"] == 200, 150, "all 200 confirmed")
    finally:
        uplink.stop(signal.SIGKILL)
        first.stop(signal.SIGKILL)
        second.stop(signal.SIGKILL)
        if node is not None and not nats_cluster.node(node).running:
            nats_cluster.start(node)
    copies, hashes = stored_records(nats_cluster, station["id"])
    assert copies == Counter({record_id: 1 for record_id in ids})     # nothing lost, nothing twice
    store = RecordStore.reader(station["state"] / "store")
    try:
        assert all(hashes[r.record_id] == r.sealed_sha256 for r in store.records())
        last_seq = store.last_seq()
    finally:
        store.close()
    events = read_stream(nats_cluster.urls, f"stations.{station['id']}.events")
    seqs = [int(m.headers["Station-Seq"]) for m in events]
    assert seqs == list(range(1, last_seq + 1))                      # once each, in order
    assert all(m.headers["Nats-Msg-Id"] == f"{station['id']}:{s}" for m, s in zip(events, seqs))
    assert json.loads(events[0].data)["seq"] == 1


def a_bundle(an2: bytes) -> bytes:
    """The smallest record bundle ``record.unpack`` accepts: a transaction and its manifest."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(record.MANIFEST_NAME, json.dumps({"an2": {"sha256": hashlib.sha256(an2).hexdigest()}}))
        archive.writestr(record.AN2_NAME, an2)
    return buffer.getvalue()


def test_central_tools_read_the_cluster(station, nats_cluster, tmp_path):
    an2 = b"1.001:" + bytes(range(256)) * 40
    ids = fill_store(station["state"], 3, 0, plaintext=a_bundle(an2))
    central = gateway(station, tmp_path / "gw", nats_cluster).start()
    uplink = UplinkProcess(station["env"], station["etc"], central).start()
    try:
        wait_for(lambda: outbox_state(station["state"])["confirmed"] == 3, 60, "delivery")
    finally:
        uplink.stop()
        central.stop()
    watched = [json.loads(line) for line in central.tool("watch", "--station", station["id"]).splitlines()]
    assert [e["seq"] for e in watched] == [1, 2, 3] and watched[0]["station"] == station["id"]
    listed = [json.loads(line) for line in central.tool("stations").splitlines()]
    mine = next(s for s in listed if s["station"] == station["id"])
    assert mine["last_seq"] == 3 and mine["status"]["records"] == 3   # the backlog it reported at hello
    out = tmp_path / "r.an2"
    central.tool("export", ids[0], "--key", str(station["central_key"]), "--out", str(out))
    assert out.read_bytes() == an2                                    # what the station sealed


def test_the_demo_runs_with_its_collector_on_jetstream(nats_single, tmp_path):
    out = subprocess.run([str(BIN / "station"), "demo", "--applicants", "1", "--workdir", str(tmp_path / "booth"),
                          "--collector", nats_single.urls[0]], capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "booth" / "summary.json").read_text())
    assert summary["collector"] == nats_single.urls[0] and summary["confirmed"] == 1
    [result] = summary["results"]
    copies, _ = stored_records(nats_single, "VN-HP-0001")
    assert copies == Counter({result["record"]: 1})                 # in the stream a subscriber reads
