"""Instant issuance with real processes: the controller's print queue, station-printerd and
the printer emulator on a pty. Each injected fault ends in its documented job state, and no
card is reported done unless it was printed."""
from __future__ import annotations

import json
import subprocess

import cv2
import pytest

from station.errors import StationError
from station.store import RecordStore
from tests.station_harness import BIN, Station, applicant

pytestmark = pytest.mark.timeout(180)
# The index fingers are declared exceptions (empty boxes on the back): no scanner needed.
POLICY = {"finger_positions": [2, 7], "portrait_required": True, "exception_photo_required": False}


@pytest.fixture
def issuing(provisioned, ctx):
    stations = []

    def make(faults: str = "", printer_args: tuple[str, ...] = (), controller: dict | None = None) -> Station:
        station = Station(provisioned["env"], provisioned["state"], ctx, camera=True, sensor=False,
                          policy=POLICY, printer=faults, printer_args=printer_args, controller=controller)
        stations.append(station)
        for name in ("cam0", "printer0", "controller"):
            station.start(name)
        station.wait_for(lambda: station.online("cam0", "printer0"), 60)
        return station

    yield make
    for station in stations:
        station.stop()


def enroll(station: Station, number: int) -> dict:
    sid = station.call("controller", "session.start", {"applicant": applicant(number), "operator": "op1"})["session"]
    station.call("controller", "session.portrait", {"session": sid}, timeout_s=60)
    for position in (2, 7):
        station.call("controller", "session.exception", {"session": sid, "position": position, "reason": "XX"})
    return station.call("controller", "session.finish", {"session": sid}, timeout_s=60)


def job_of(station: Station, job_id: str) -> dict:
    jobs = station.call("controller", "print.status")["jobs"]
    return next(j for j in jobs if j["job"] == job_id)


def until_state(station: Station, job_id: str, *states: str, timeout_s: float = 60) -> dict:
    try:
        return station.wait_for(lambda: (job := job_of(station, job_id))["state"] in states and job, timeout_s)
    except AssertionError:
        raise AssertionError(f"print job never {' or '.join(states)}: {job_of(station, job_id)}") from None


def stationctl(provisioned: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "stationctl"), *argv], env=provisioned["env"], capture_output=True, text=True,
                          timeout=30)


def emulator_status(station: Station) -> dict:
    reply = station.printer("status")
    assert reply.startswith("ok "), reply
    return json.loads(reply[3:])


def test_a_finished_enrollment_is_printed_and_its_card_data_destroyed(issuing, provisioned):
    station = issuing()
    finished = enroll(station, 1)
    job = until_state(station, finished["print_job"], "done")
    assert (job["attempt"], job["spoiled"], job["record"]) == (1, [], finished["record"])
    printed = emulator_status(station)["counters"]
    assert (printed["printed"], printed["rejected"]) == (1, 0)
    front = cv2.imread(str(station.cards / "card-0001" / "front.png"))
    back = cv2.imread(str(station.cards / "card-0001" / "back.png"))
    assert front.shape == back.shape == (648, 1016, 3) and front.std() > 20
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(front)
    assert text.split("|")[0] == applicant(1)["id_number"]  # the QR carries this applicant's card data
    station.stop()
    store = RecordStore.reader(provisioned["state"] / "store")
    with pytest.raises(StationError, match="holds no card data") as gone:
        store.print_card(finished["print_job"])
    assert gone.value.code == "not_found"
    store.close()


def test_a_jammed_card_is_rejected_and_the_job_retried_on_a_new_card(issuing):
    station = issuing("jam=1")
    job = until_state(station, enroll(station, 2)["print_job"], "done")
    assert (job["attempt"], job["spoiled"]) == (2, ["printer_jam"])
    status = emulator_status(station)
    assert (status["counters"]["printed"], status["hopper"]) == (1, 1)
    assert (station.cards / "card-0002" / "front.png").exists() and not (station.cards / "card-0001").exists()


def test_an_open_cover_pauses_the_job_until_it_is_closed(issuing):
    station = issuing("cover=1")
    job_id = enroll(station, 3)["print_job"]
    paused = station.wait_for(lambda: (job := job_of(station, job_id))["paused"] and job, 60)
    assert paused["paused"] == "printer_cover_open" and paused["state"] == "feeding"
    assert emulator_status(station)["counters"]["printed"] == 0
    assert station.printer("cover close").startswith("ok")
    job = until_state(station, job_id, "done")
    assert job["attempt"] == 1 and job["spoiled"] == []  # the same card, once a person closed the cover
    assert emulator_status(station)["counters"]["printed"] == 1


def test_a_job_out_of_cards_to_spoil_is_rejected_and_the_operators_retry_reprints(issuing, provisioned):
    station = issuing("jam=1", controller={"printing": {"instant_issuance": True, "max_attempts": 1}})
    job_id = enroll(station, 4)["print_job"]
    job = until_state(station, job_id, "rejected")
    assert job["attempt"] == 1 and job["spoiled"] == ["printer_jam"] and "1 card" in job["reason"]
    assert emulator_status(station)["counters"]["printed"] == 0
    listed = stationctl(provisioned, "print", "status")
    assert listed.returncode == 0 and f"{job_id}" in listed.stdout and "rejected" in listed.stdout
    assert "spoiled: printer_jam" in listed.stdout and applicant(4)["full_name"] not in listed.stdout
    retried = stationctl(provisioned, "print", "retry", job_id)
    assert retried.returncode == 0 and retried.stdout.strip() == f"print job {job_id}: queued"  # data kept for this
    job = until_state(station, job_id, "done")
    assert job["attempt"] == 1 and emulator_status(station)["counters"]["printed"] == 1
    refused = stationctl(provisioned, "print", "cancel", job_id)
    assert refused.returncode == 1 and "cannot cancel: print job" in refused.stderr and "is done" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_printer_daemon_killed_mid_print_never_yields_a_card_reported_done(issuing):
    station = issuing("", printer_args=("--print-s", "3"))  # a print takes 3 s: the kill lands inside it
    job_id = enroll(station, 5)["print_job"]
    station.wait_for(lambda: job_of(station, job_id)["state"] == "printing", 60)
    # The print itself (the mechanism's 3 s, after the panels arrived): a status poll cannot miss it.
    station.wait_for(lambda: emulator_status(station)["mechanism"] == "print", 30)
    station.kill("printer0")
    job = station.wait_for(lambda: (j := job_of(station, job_id))["paused"] and j, 30)
    assert job["state"] == "printing" and job["paused"] in ("driver_offline", "deadline_exceeded", "device_error")
    station.start("printer0")
    job = until_state(station, job_id, "done")
    # The killed print's card is never the one reported done: the job started a new card.
    assert job["attempt"] == 2 and job["spoiled"] == [job["spoiled"][0]] and job["spoiled"][0] in (
        "driver_offline", "deadline_exceeded", "device_error")
    counters = emulator_status(station)["counters"]
    assert counters["fed"] == 2 and (station.cards / "card-0002" / "front.png").exists()


def test_an_empty_feeder_pauses_the_job_until_cards_are_loaded(issuing):
    station = issuing("feeder_empty=0")
    job_id = enroll(station, 6)["print_job"]
    paused = station.wait_for(lambda: (job := job_of(station, job_id))["paused"] and job, 60)
    assert (paused["paused"], paused["state"], paused["spoiled"]) == ("printer_feeder", "feeding", [])
    assert station.printer("feeder 10").startswith("ok")
    job = until_state(station, job_id, "done")
    assert (job["attempt"], job["spoiled"]) == (1, [])  # no card was spoiled: there was none


def test_the_ribbon_ending_mid_print_spoils_that_card_and_waits_for_a_new_ribbon(issuing):
    station = issuing("ribbon_out=1")
    job_id = enroll(station, 7)["print_job"]
    paused = station.wait_for(lambda: (job := job_of(station, job_id))["paused"] and job, 60)
    assert paused["paused"] == "printer_ribbon" and paused["spoiled"] == ["printer_ribbon"]
    station.wait_for(lambda: emulator_status(station)["hopper"] == 1, 30)  # the half-printed card is out
    assert emulator_status(station)["counters"]["printed"] == 0
    assert station.printer("ribbon ymcko 100").startswith("ok")
    job = until_state(station, job_id, "done")
    assert (job["attempt"], job["spoiled"]) == (2, ["printer_ribbon"])
    assert emulator_status(station)["counters"]["printed"] == 1


def test_a_controller_killed_mid_print_starts_a_new_card_after_its_restart(issuing):
    station = issuing("", printer_args=("--print-s", "3"))
    job_id = enroll(station, 8)["print_job"]
    station.wait_for(lambda: job_of(station, job_id)["state"] == "printing", 60)
    # The print itself (the mechanism's 3 s, after the panels arrived): a status poll cannot miss it.
    station.wait_for(lambda: emulator_status(station)["mechanism"] == "print", 30)
    station.kill("controller")
    station.start("controller")
    job = until_state(station, job_id, "done")
    # The print under way when the controller died is never the one reported: its card's
    # fate is unknown to the controller, so the job rejected it and printed a new one.
    assert (job["attempt"], job["spoiled"]) == (2, ["controller_restart"])
    counters = emulator_status(station)["counters"]
    assert counters["fed"] == 2 and (station.cards / "card-0002" / "front.png").exists()
