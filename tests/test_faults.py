"""Processes really killed: a driver dies mid-session and comes back; the controller is
SIGKILLed at every step of an enrollment and at random moments during fifty, and never
leaves a half record nor loses one it reported done."""
import random
import threading
import time

import nistitl
import pytest

from drivers.emulation import send_command
from station import keyring, record, sealing
from station.bus import Subscriber
from station.errors import CommandError, StationError
from station.store import RecordStore
from tests.station_harness import Station, applicant

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def make_station(provisioned, ctx):
    made = []

    def make(**kwargs) -> Station:
        station = Station(provisioned["env"], provisioned["state"], ctx, **kwargs)
        made.append(station)
        return station

    yield make
    for station in made:
        station.stop()


def open_record(provisioned, record_id):
    store = RecordStore.reader(provisioned["state"] / "store")
    try:
        blob = store.sealed(record_id)
    finally:
        store.close()
    central = sealing.CentralPrivateKey.from_pem(provisioned["central_key"].read_bytes())
    station = sealing.StationPublicKeys.from_pem((provisioned["state"] / "keys" / keyring.STATION_PUB).read_bytes())
    _header, plaintext = sealing.open_sealed(blob, central, station)
    return record.unpack(plaintext)


def test_a_killed_driver_goes_offline_and_the_session_continues_after_restart(make_station, ctx):
    station = make_station()
    station.start("fp0")
    station.start("controller")
    station.wait_for(lambda: station.online("fp0"))
    events = Subscriber(ctx, [station.paths.pub("controller")], topics=["station.drivers."])
    time.sleep(0.3)
    sid = station.call("controller", "session.start", {"applicant": applicant(1), "operator": "op"})["session"]
    station.place(5, 1)
    assert station.call("controller", "session.finger", {"session": sid, "position": 1})["position"] == 1

    killed = time.monotonic()
    station.kill("fp0")
    msg = events.receive(timeout_ms=5000)
    assert msg is not None and msg.event == "offline" and msg.get("driver") == "fp0"
    assert time.monotonic() - killed < 4.0  # silent for offline_after_s (2 s), then declared offline
    with pytest.raises(CommandError) as offline:
        station.call("controller", "session.finger", {"session": sid, "position": 2})
    assert offline.value.code == "driver_offline" and offline.value.retryable

    station.start("fp0")  # what systemd's Restart=on-failure does
    station.wait_for(lambda: station.online("fp0"))
    station.place(5, 2)
    assert station.call("controller", "session.finger", {"session": sid, "position": 2})["position"] == 2
    assert station.call("controller", "session.finish", {"session": sid})["record"]
    events.close()


@pytest.mark.parametrize("restart", [False, True], ids=["stays-down", "restarted-at-once"])
def test_a_driver_killed_mid_capture_is_answered_at_once_not_at_the_deadline(make_station, restart):
    station = make_station(controller={"capture_timeout_s": 30})
    station.start("fp0")
    station.start("controller")
    station.wait_for(lambda: station.online("fp0"))
    sid = station.call("controller", "session.start", {"applicant": applicant(2), "operator": "op"})["session"]
    assert send_command(station.control, "nofinger 30").startswith("ok")  # nobody puts a finger down
    outcome = {}

    def finger():  # no finger on the glass: the scanner waits for one
        started = time.monotonic()
        try:
            outcome["reply"] = station.call("controller", "session.finger", {"session": sid, "position": 1},
                                            timeout_s=40)
        except StationError as exc:
            outcome["error"] = exc
        outcome["s"] = time.monotonic() - started

    waiting = threading.Thread(target=finger)
    waiting.start()
    time.sleep(1.0)
    station.kill("fp0")
    if restart:  # back before it could be declared offline: a new boot, the old request is lost
        station.start("fp0")
    waiting.join(35)
    assert "error" in outcome, outcome
    assert outcome["error"].code == "driver_offline" and outcome["error"].retryable
    assert outcome["s"] < 10                                   # not the 30 s capture deadline
    if restart:
        station.wait_for(lambda: station.online("fp0"))
        assert send_command(station.control, "nofinger 0").startswith("ok")
        station.place(6, 1)
        assert station.call("controller", "session.finger", {"session": sid, "position": 1})["position"] == 1


def test_sigkill_at_every_step_resumes_the_same_session_through_the_exception_photo(make_station, provisioned):
    """Portrait, fingers with an amputated one, the exception photo, review: the controller
    is SIGKILLed and restarted at each step, and the session goes on where it was."""
    station = make_station(camera=True, policy={"finger_positions": [1, 2, 3]})
    for name in ("fp0", "cam0", "controller"):
        station.start(name)
    station.wait_for(lambda: station.online("fp0", "cam0"), timeout_s=60)

    def restart(expect_step: str) -> None:
        before = station.call("controller", "session.get", {"session": sid})
        assert before["step"] == expect_step
        station.kill("controller")
        station.start("controller")
        station.wait_for(lambda: station.online("fp0", "cam0"), timeout_s=30)
        assert station.call("controller", "session.get", {"session": sid}) == before

    sid = station.call("controller", "session.start", {"applicant": applicant(8), "operator": "op"})["session"]
    restart("portrait")
    station.call("controller", "session.portrait", {"session": sid}, timeout_s=60)
    restart("fingers")
    station.place(21, 1)
    station.call("controller", "session.finger", {"session": sid, "position": 1})
    station.call("controller", "session.exception", {"session": sid, "position": 2, "reason": "XX"})
    restart("fingers")
    station.place(21, 3)
    station.call("controller", "session.finger", {"session": sid, "position": 3})
    restart("exception_photo")
    station.call("controller", "session.exception_photo", {"session": sid}, timeout_s=60)
    restart("review")
    record_id = station.call("controller", "session.finish", {"session": sid}, timeout_s=60)["record"]

    manifest, an2 = open_record(provisioned, record_id)
    assert manifest["exception_photo"]["mode"] == "exception"
    assert [f.get("exception") for f in manifest["fingers"]] == [None, "XX", None]
    msg = nistitl.Message()
    msg.parse(an2)
    assert len(list(msg.iter(10))) == 2  # the portrait and the exception photo
    assert len(list(msg.iter(14))) == 3  # three positions, one an amputation


def enroll_through_crashes(station, number, done, lock):
    """One applicant driven to a record, whatever the controller does meanwhile: each step
    is asked of the session's own stored state (``session.get``), as a console would after
    a reload. A request sent to a controller that then dies is lost with it, so the
    deadlines are short: a capture of an unpaced emulated sensor takes well under 1 s."""
    sid = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if sid is None:
                sid = station.call("controller", "session.start", {"applicant": applicant(number), "operator": "op"},
                                   timeout_s=3)["session"]
            view = station.call("controller", "session.get", {"session": sid}, timeout_s=2)
            if view["status"] == "finished":  # committed, but the answer was lost in a crash
                with lock:
                    done[number] = view["record"]
                return
            if view["step"] == "review":
                result = station.call("controller", "session.finish", {"session": sid}, timeout_s=6)
                with lock:
                    done[number] = result["record"]
                return
            position = view["next_finger"]
            station.place(1000 + number, position)
            station.call("controller", "session.finger", {"session": sid, "position": position}, timeout_s=4)
        except StationError as exc:
            if getattr(exc, "code", "") == "invalid_demographics":
                raise
            time.sleep(0.2)  # the controller is down or restarting; ask again
    raise AssertionError(f"applicant {number} not enrolled in time (session {sid})")


def test_random_sigkills_during_fifty_enrollments_lose_nothing_reported_done(make_station, provisioned):
    station = make_station(policy={"finger_positions": [1, 2], "portrait_required": False})
    station.start("fp0")
    station.start("controller")
    station.wait_for(lambda: station.online("fp0"))
    done: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    kills = []

    def killer():
        """Once the controller serves again, kill it at a random moment within 5 s."""
        rng = random.Random(7)
        while not stop.is_set():
            station.wait_for(lambda: stop.is_set() or station.call("controller", "ping", timeout_s=0.5), 60)
            if stop.wait(rng.uniform(0.5, 5.0)):
                return
            station.kill("controller")
            kills.append(time.monotonic())
            station.start("controller")

    chaos = threading.Thread(target=killer, daemon=True)
    chaos.start()
    try:
        for number in range(50):
            enroll_through_crashes(station, number, done, lock)
    finally:
        stop.set()
        chaos.join()
    assert len(kills) >= 10, f"only {len(kills)} kills: the test did not test much"
    station.wait_for(lambda: station.call("controller", "status", timeout_s=1))
    status = station.call("controller", "status")
    reported = set(done.values())
    assert len(reported) == 50  # every applicant got exactly one record id
    store = RecordStore.reader(provisioned["state"] / "store")
    stored = set(store.record_ids())
    assert stored == reported, f"lost {reported - stored}, unexpected {stored - reported}"
    assert all(store.verify(r) == [] for r in stored)
    on_disk = {p.name.removesuffix(".sealed") for p in store.records_dir.iterdir()}
    assert on_disk == stored  # no half record: no sealed file without its row
    store.close()
    assert status["store"]["records"] == 50
    for record_id in sorted(reported)[:5]:
        manifest, _an2 = open_record(provisioned, record_id)
        assert manifest["record"] == record_id and len(manifest["fingers"]) == 2
    print(f"\n50 enrollments, {len(kills)} controller SIGKILLs, 50 records, none lost")


def test_an_aborted_capture_stops_the_scanner_and_the_session_goes_on(make_station, ctx):
    """The applicant stepped away mid-capture: the officer aborts, the scanner stops waiting
    (rather than capturing whatever comes later), and the next capture works."""
    from drivers.emulation import send_command

    station = make_station()
    station.start("fp0")
    station.start("controller")
    station.wait_for(lambda: station.online("fp0"))
    sid = station.call("controller", "session.start", {"applicant": applicant(9), "operator": "op"})["session"]
    assert send_command(station.control, "nofinger 5").startswith("ok")
    lifted = time.monotonic()
    outcome = {}

    def capture():
        started = time.monotonic()
        try:
            station.call("controller", "session.finger", {"session": sid, "position": 1}, timeout_s=30)
        except CommandError as exc:
            outcome["code"], outcome["seconds"] = exc.code, time.monotonic() - started

    waiting = threading.Thread(target=capture)
    waiting.start()
    station.wait_for(lambda: station.call("fp0", "state", timeout_s=1)["state"] == "busy")
    assert station.call("controller", "session.abort", {"session": sid}) == {"aborted": True}
    waiting.join(10)
    assert outcome["code"] == "cancelled"  # not no_finger, nor a capture once the spell ended
    station.wait_for(lambda: station.call("fp0", "state", timeout_s=1)["state"] == "ready")
    assert station.call("controller", "session.abort", {"session": sid}) == {"aborted": False}
    time.sleep(max(0.0, lifted + 5.5 - time.monotonic()))  # the applicant comes back
    station.place(9, 1)
    assert station.call("controller", "session.finger", {"session": sid, "position": 1})["position"] == 1
