"""The controller as a process: structured errors, validated demographics, persisted sessions
that survive SIGKILL, the journal, reload, the disk floor, expiry. No devices needed: these
sessions use exceptions (what an officer declares) where fingers would be scanned."""
import json
import signal
import subprocess
import time

import pytest
import yaml

from station import keyring, record, sealing
from station.bus import CommandClient, Subscriber
from station.errors import CommandError
from station.paths import Paths
from station.store import RecordStore
from tests.station_harness import BIN, applicant

pytestmark = pytest.mark.timeout(90)
NO_DEVICES = {"finger_positions": [1, 2, 3], "portrait_required": False, "exception_photo_required": False}


def write_policy(etc, **policy):
    (etc / "enrollment.yaml").write_text(yaml.safe_dump({**NO_DEVICES, **policy}))


class Controller:
    def __init__(self, env, ctx):
        self.env, self.ctx, self.proc = env, ctx, None
        self.client = CommandClient(ctx, Paths.resolve().cmd("controller"), name="controller")

    def start(self):
        self.proc = subprocess.Popen([str(BIN / "station-controller")], env=self.env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            try:
                self.client.call("ping", timeout_s=0.5)
                return self
            except CommandError:
                raise
            except Exception:
                assert time.monotonic() < deadline, "controller did not start"

    def call(self, cmd, args=None, timeout_s=10.0):
        return self.client.call(cmd, args, timeout_s=timeout_s).result

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)


@pytest.fixture
def controller(provisioned, ctx):
    write_policy(provisioned["etc"])
    c = Controller(provisioned["env"], ctx).start()
    yield c
    if c.proc.poll() is None:
        c.proc.terminate()
        assert c.proc.wait(timeout=5) == 0
    c.client.close()


def test_an_unprovisioned_station_refuses_to_start_and_says_how_to_fix_it(station_env):
    out = subprocess.run([str(BIN / "station-controller")], env=station_env["env"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 78
    assert "stationctl provision" in out.stderr


def test_a_second_controller_exits_without_touching_the_first(controller, provisioned):
    out = subprocess.run([str(BIN / "station-controller")], env=provisioned["env"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 75 and "in use by another process" in out.stderr
    assert controller.call("status")["station"] == "VN-HP-0001"


def test_session_errors_are_structured_and_actionable(controller):
    status = controller.call("status")
    assert status["drivers"] == {"cam0": {"kind": "camera", "online": False, "state": "unknown"},
                                 "fp0": {"kind": "fingerprint", "online": False, "state": "unknown"}}
    with pytest.raises(CommandError) as bad:
        controller.call("session.start", {"applicant": applicant(1, sex="M", id_number="031185123456"),
                                          "operator": "op1"})
    assert bad.value.code == "invalid_demographics"
    assert any(p["field"] == "id_number" for p in bad.value.details["problems"])
    with pytest.raises(CommandError) as no_operator:
        controller.call("session.start", {"applicant": applicant(1)})
    assert no_operator.value.code == "bad_request"

    session = controller.call("session.start", {"applicant": applicant(1), "operator": "op1"})
    sid = session["session"]
    assert session["finger_positions"] == [1, 2, 3] and session["step"] == "fingers"
    assert "Nguyễn" not in json.dumps(session, ensure_ascii=False)

    with pytest.raises(CommandError) as offline:
        controller.call("session.finger", {"session": sid, "position": 2})
    assert offline.value.code == "driver_offline" and offline.value.retryable
    assert "fp0 is offline" in offline.value.message
    for position in (11, 1.0, True):
        with pytest.raises(CommandError) as wrong:
            controller.call("session.finger", {"session": sid, "position": position})
        assert wrong.value.code == "bad_request"
    with pytest.raises(CommandError) as reason:
        controller.call("session.exception", {"session": sid, "position": 3, "reason": "ZZ"})
    assert "XX" in reason.value.message and "UP" in reason.value.message
    assert controller.call("session.exception", {"session": sid, "position": 3, "reason": "UP"})["reason"] == "UP"
    with pytest.raises(CommandError) as incomplete:
        controller.call("session.finish", {"session": sid})
    assert incomplete.value.code == "incomplete" and "finger 1 (right thumb)" in incomplete.value.message

    assert controller.call("session.cancel", {"session": sid}) == {"cancelled": sid}
    with pytest.raises(CommandError) as gone:
        controller.call("session.finish", {"session": sid})
    assert gone.value.code == "no_session"
    assert controller.call("session.get", {"session": sid})["status"] == "cancelled"


def complete_with_exceptions(controller, sid):
    for position, reason in ((1, "XX"), (2, "UP"), (3, "XX")):
        controller.call("session.exception", {"session": sid, "position": position, "reason": reason})


def test_a_sigkilled_controller_resumes_every_open_session_where_it_was(controller, provisioned):
    first = controller.call("session.start", {"applicant": applicant(2), "operator": "op1"})["session"]
    second = controller.call("session.start", {"applicant": applicant(3), "operator": "op2"})["session"]
    controller.call("session.exception", {"session": first, "position": 1, "reason": "XX"})
    before = controller.call("session.get", {"session": first})
    controller.kill()
    controller.start()
    assert controller.call("session.get", {"session": first}) == before
    assert {s["session"] for s in controller.call("session.list")["sessions"]} == {first, second}
    controller.call("session.exception", {"session": first, "position": 2, "reason": "UP"})
    controller.call("session.exception", {"session": first, "position": 3, "reason": "XX"})
    done = controller.call("session.finish", {"session": first}, timeout_s=30)
    # the answer was lost? asking again gives the same record, never a second one
    assert controller.call("session.finish", {"session": first}) == {"record": done["record"], "repeated": True}

    store = RecordStore.reader(provisioned["state"] / "store")
    blob = store.sealed(done["record"])
    central = sealing.CentralPrivateKey.from_pem(provisioned["central_key"].read_bytes())
    station = sealing.StationPublicKeys.from_pem((provisioned["state"] / "keys" / keyring.STATION_PUB).read_bytes())
    header, plaintext = sealing.open_sealed(blob, central, station)
    manifest, an2 = record.unpack(plaintext)
    assert header.record_id == done["record"] and header.station_id == "VN-HP-0001"
    assert [f["exception"] for f in manifest["fingers"]] == ["XX", "UP", "XX"] and manifest["operator"] == "op1"
    assert applicant(2)["full_name"].encode() in an2  # demographics are in the transaction, sealed
    store.close()


def test_the_journal_is_gap_free_replayable_and_published_after_commit(controller, ctx):
    events = Subscriber(ctx, [Paths.resolve().pub("controller")], topics=["station.enrollment."])
    time.sleep(0.3)
    sid = controller.call("session.start", {"applicant": applicant(4), "operator": "op1"})["session"]
    complete_with_exceptions(controller, sid)
    record_id = controller.call("session.finish", {"session": sid}, timeout_s=30)["record"]
    published = []
    while len(published) < 5:
        msg = events.receive(timeout_ms=3000)
        assert msg is not None, published
        published.append(msg)
    journal = controller.call("events.since", {"since": 0})["events"]
    enrollment_events = [e for e in journal if e["topic"].startswith("station.enrollment.")]
    assert [e["topic"].split(".", 2)[2] for e in enrollment_events] == [
        "session.started", "finger.exception", "finger.exception", "finger.exception", "completed"]
    assert [e["seq"] for e in journal] == list(range(1, len(journal) + 1))
    assert [m.get("jseq") for m in published] == [e["seq"] for e in enrollment_events]
    assert enrollment_events[-1]["body"]["record"] == record_id
    text = json.dumps(journal, ensure_ascii=False)
    assert applicant(4)["full_name"] not in text and applicant(4)["id_number"] not in text
    later = controller.call("events.since", {"since": journal[2]["seq"], "limit": 2})["events"]
    assert [e["seq"] for e in later] == [journal[3]["seq"], journal[4]["seq"]]
    with pytest.raises(CommandError) as bad:
        controller.call("events.since", {"since": "zero"})
    assert bad.value.code == "bad_request"
    events.close()


def test_reload_applies_a_whole_config_or_rejects_it(controller, provisioned, ctx):
    etc = provisioned["etc"]
    events = Subscriber(ctx, [Paths.resolve().pub("controller")], topics=["station.controller.config"])
    time.sleep(0.3)
    (etc / "controller.yaml").write_text(yaml.safe_dump({"drivers": {"camera": ["cam1"], "fingerprint": ["fp9"]}}))
    write_policy(etc, finger_positions=[7])
    controller.proc.send_signal(signal.SIGHUP)
    msg = events.receive(timeout_ms=5000)
    assert msg is not None and msg.event == "config.applied"
    assert set(controller.call("status")["drivers"]) == {"cam1", "fp9"}
    sid = controller.call("session.start", {"applicant": applicant(5), "operator": "op1"})["session"]
    with pytest.raises(CommandError) as offline:
        controller.call("session.finger", {"session": sid, "position": 7})
    assert offline.value.code == "driver_offline" and "fp9" in offline.value.message

    (etc / "controller.yaml").write_text("drivers: {camera: [cam0], fingerprint: [fp0]}\n")
    write_policy(etc, finger_positions=[0])  # invalid: the controller file alone must not apply
    controller.proc.send_signal(signal.SIGHUP)
    msg = events.receive(timeout_ms=5000)
    assert msg is not None and msg.event == "config.rejected"
    assert any("finger_positions" in p for p in msg.get("problems"))
    assert set(controller.call("status")["drivers"]) == {"cam1", "fp9"}
    assert controller.call("session.get", {"session": sid})["finger_positions"] == [7]
    events.close()


def test_a_disk_below_the_floor_refuses_new_sessions(provisioned, ctx):
    write_policy(provisioned["etc"])
    (provisioned["etc"] / "controller.yaml").write_text(yaml.safe_dump({"store": {"min_free_mb": 1000000}}))
    c = Controller(provisioned["env"], ctx).start()
    try:
        with pytest.raises(CommandError) as low:
            c.call("session.start", {"applicant": applicant(6), "operator": "op1"})
        assert low.value.code == "disk_low" and "1000000 MB" in low.value.message
    finally:
        c.kill(signal.SIGTERM)
        c.client.close()


def test_an_idle_session_expires_and_its_captures_are_destroyed(provisioned, ctx):
    write_policy(provisioned["etc"], session_expiry_s=60)
    c = Controller(provisioned["env"], ctx).start()
    try:
        sid = c.call("session.start", {"applicant": applicant(7), "operator": "op1"})["session"]
        c.call("session.exception", {"session": sid, "position": 1, "reason": "XX"})
        c.kill()
        # the station was off for longer than the expiry: the stored session is stale on restart
        store = RecordStore(provisioned["state"] / "store", cipher=keyring.load(provisioned["state"] / "keys").capture)
        state = store.open_sessions()[0]
        state["updated_ns"] -= 120 * 10**9
        with store.transaction() as tx:
            tx.save_session(sid, "open", "op1", state["started_ns"], state["updated_ns"], state)
            tx.put_capture(sid, "portrait.jpg", b"\xff\xd8 a capture to destroy")
        assert store.db.execute("SELECT COUNT(*) FROM captures").fetchone()[0] == 1
        store.close()
        c.start()
        c_status = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            c_status = c.call("session.get", {"session": sid})
            if c_status["status"] == "expired":
                break
            time.sleep(0.2)
        assert c_status["status"] == "expired"
        journal = c.call("events.since", {"since": 0})["events"]
        assert journal[-1]["topic"] == "station.enrollment.session.expired"
        reader = RecordStore.reader(provisioned["state"] / "store")
        assert reader.db.execute("SELECT COUNT(*) FROM captures").fetchone()[0] == 0
        assert any(a["action"] == "session.expired" and a["actor"] == "system" for a in reader.audit_log())
        reader.close()
    finally:
        c.kill(signal.SIGTERM)
        c.client.close()


def test_a_finish_whose_answer_came_too_late_still_closes_the_session_once(controller, provisioned):
    """The officer's request timed out while the record was being sealed: the record is
    kept, the session closed, and asking again gives that record, never a second one."""
    from station.errors import DeadlineExceeded

    records = {}
    for n, timeout in enumerate((0.002, 0.005, 0.01, 0.02, 0.04)):
        sid = controller.call("session.start", {"applicant": applicant(20 + n), "operator": "op1"})["session"]
        complete_with_exceptions(controller, sid)
        try:
            controller.call("session.finish", {"session": sid}, timeout_s=timeout)
        except (CommandError, DeadlineExceeded):
            pass  # too late for this caller; the sealing may still be under way
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = controller.call("session.finish", {"session": sid})
                break
            except CommandError as exc:
                assert exc.code == "busy" and time.monotonic() < deadline, exc
                time.sleep(0.05)
        assert controller.call("session.finish", {"session": sid}) == {"record": answer["record"], "repeated": True}
        records[sid] = answer["record"]
    assert len(set(records.values())) == 5
    store = RecordStore.reader(provisioned["state"] / "store")
    assert set(store.record_ids()) == set(records.values())
    store.close()


def test_who_did_what_is_audited_without_personal_data(controller, provisioned):
    sid = controller.call("session.start", {"applicant": applicant(30), "operator": "op1"})["session"]
    controller.call("session.exception", {"session": sid, "position": 1, "reason": "XX"})
    controller.call("session.exception", {"session": sid, "position": 2, "reason": "UP", "operator": "op2"})
    controller.call("session.cancel", {"session": sid, "reason": "applicant left", "operator": "op2"})
    store = RecordStore.reader(provisioned["state"] / "store")
    audit = [a for a in store.audit_log() if a["session"] == sid]
    store.close()
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("op1", "session.start"), ("op1", "session.exception"), ("op2", "session.exception"),
        ("op2", "session.cancel")]
    assert audit[-1]["reason"] == "applicant left"
    text = json.dumps(audit, ensure_ascii=False)
    assert applicant(30)["full_name"] not in text and applicant(30)["id_number"] not in text
