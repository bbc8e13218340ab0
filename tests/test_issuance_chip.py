"""Instant issuance with the chip, in processes: the controller's print queue personalises
each card's chip through a real pcscd (vpcd reader, the emulated chip the printer emulator
inserts at its contactless station), reads it back through BAC and verifies it before the
card is printed. Each chip fault ends in a rejected card and a new one, never a printed card
with a bad chip."""
from __future__ import annotations

import json
import subprocess

import pytest

from station import chip_verify, lds, pki
from station.chip import aa_public_key
from tests.chip.pcsc import pcscd_fixture
from tests.station_harness import BIN, Station, applicant
from tests.test_issuance import POLICY, enroll as enroll_applicant

pytestmark = pytest.mark.timeout(240)
pcscd = pcscd_fixture()


@pytest.fixture
def issuing(provisioned, ctx, pcscd, tmp_path):
    authority = pki.init_test(tmp_path / "pki")
    stations = []

    def make(chip_faults: str = "", faults_card: int | None = None,
             active_authentication: bool = False) -> tuple[Station, pki.TestPki]:
        chip = {"encoder": "pcsc", "reader": pcscd.reader(0), "card_wait_s": 5, "csca": str(authority.csca_cert),
                "document_signer": {"key": str(authority.ds_key), "certificate": str(authority.ds_cert)},
                "active_authentication": active_authentication}
        args = ["--chip-port", str(pcscd.port(0))]
        if chip_faults:
            args += ["--chip-faults", chip_faults]
        if faults_card is not None:
            args += ["--chip-faults-card", str(faults_card)]
        station = Station(provisioned["env"], provisioned["state"], ctx, camera=True, sensor=False, policy=POLICY,
                          printer="", printer_args=tuple(args),
                          controller={"printing": {"instant_issuance": True, "chip": chip}})
        stations.append(station)
        for name in ("cam0", "printer0", "controller"):
            station.start(name)
        station.wait_for(lambda: station.online("cam0", "printer0"), 60)
        return station, authority

    yield make
    for station in stations:
        station.stop()


def enroll(station: Station, number: int) -> str:
    """One applicant through to finish (tests/test_issuance.py's); their card's print job."""
    return enroll_applicant(station, number)["print_job"]


def finished(station: Station, job_id: str) -> dict:
    def ended() -> dict | None:
        job = next(j for j in station.call("controller", "print.status")["jobs"] if j["job"] == job_id)
        return job if job["state"] in ("done", "rejected") else None
    return station.wait_for(ended, 120)


def encode_events(station: Station, job_id: str) -> list[dict]:
    events = station.call("controller", "events.since", {"since": 0, "limit": 500})["events"]
    return [e for e in events if e["topic"].startswith("station.print.encode") and e["body"]["job"] == job_id]


def printer_counters(station: Station) -> dict:
    return json.loads(station.printer("status")[3:])["counters"]


def test_a_card_is_printed_only_after_its_chip_read_back_through_bac_verifies(issuing):
    station, authority = issuing()
    job = finished(station, enroll(station, 21))
    assert (job["state"], job["attempt"], job["spoiled"]) == ("done", 1, [])
    (encoded,) = [e["body"] for e in encode_events(station, job["job"]) if e["topic"] == "station.print.encode"]
    assert encoded["chip"] == "verified" and encoded["chain_checked"] is True
    assert encoded["files"] == sorted(["EF.COM", "DG1", "DG2", "DG13", "EF.SOD"])
    chip = station.cards / "chips" / "card-0001"
    result = chip_verify.verify_directory(chip, pki.load_certificate(authority.csca_cert))
    assert result.valid and result.chain_checked, result.report()
    assert lds.dg1_mrz((chip / "DG1").read_bytes())[0].endswith(applicant(21)["id_number"] + "<<<")
    verified = subprocess.run([str(BIN / "stationctl"), "chip", "verify", str(chip), "--csca",
                               str(authority.csca_cert)], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_with_active_authentication_the_chip_gets_its_key_in_dg15_and_proves_it(issuing):
    station, authority = issuing(active_authentication=True)
    job = finished(station, enroll(station, 24))
    assert (job["state"], job["attempt"], job["spoiled"]) == ("done", 1, [])
    (encoded,) = [e["body"] for e in encode_events(station, job["job"]) if e["topic"] == "station.print.encode"]
    assert encoded["chip"] == "verified" and encoded["active_authentication"] is True
    assert encoded["files"] == sorted(["EF.COM", "DG1", "DG2", "DG13", "DG14", "DG15", "EF.SOD"])
    chip = station.cards / "chips" / "card-0001"
    assert aa_public_key((chip / "DG15").read_bytes()).curve.name == "secp256r1"
    result = chip_verify.verify_directory(chip, pki.load_certificate(authority.csca_cert))
    assert result.valid and result.chain_checked, result.report()


@pytest.mark.parametrize("fault", ["fail_write=3", "tear_write=2", "wrong_mrz=1"],
                         ids=["a write that fails", "chip removed mid-write", "wrong MRZ on read-back"])
def test_a_chip_fault_rejects_that_card_and_the_next_card_is_printed_with_a_good_chip(issuing, fault):
    station, authority = issuing(fault, faults_card=1)
    job = finished(station, enroll(station, 22))
    assert (job["state"], job["attempt"], job["spoiled"]) == ("done", 2, ["encoding_failed"])
    failed = [e["body"] for e in encode_events(station, job["job"]) if e["topic"] == "station.print.encode_failed"]
    assert [f["error"] for f in failed] == ["encoding_failed"]
    counters = printer_counters(station)
    assert (counters["fed"], counters["rejected"], counters["printed"]) == (2, 1, 1)
    assert not (station.cards / "card-0001").exists()  # the card with the bad chip was never printed
    result = chip_verify.verify_directory(station.cards / "chips" / "card-0002",
                                          pki.load_certificate(authority.csca_cert))
    assert result.valid, result.report()


def test_a_chip_that_fails_on_every_card_rejects_the_job_and_prints_nothing(issuing):
    station, _ = issuing("fail_write=1")
    job = finished(station, enroll(station, 23))
    assert job["state"] == "rejected" and job["spoiled"] == ["encoding_failed"] * 3
    # the last spoiled card goes to the hopper right after the job ended
    counters = station.wait_for(lambda: (c := printer_counters(station))["rejected"] == 3 and c, 30)
    assert counters["printed"] == 0
