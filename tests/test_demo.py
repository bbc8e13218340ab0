"""The whole station end to end, as `make demo` runs it: separate processes, emulated
devices, a real pseudo-terminal between the fingerprint daemon and its sensor; records
sealed on the station, opened and exported with central's key; nothing personal or
biometric left in the clear on the station."""
import json
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nistitl
import pytest
import zmq
from mrz.checker.td1 import TD1CodeChecker

from station.bus import CommandClient
from station.demo import CONSOLE_ACCOUNTS, Demo, make_applicant
from station.demo import main as demo_main
from station.errors import StationError
from station.store import RecordStore

BIN = Path(sysconfig.get_path("scripts"))
# Long enough never to occur by chance in a megabyte of ciphertext.
IMAGE_MAGIC = {"JPEG": b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG 2000": b"\x00\x00\x00\x0cjP  \r\n",
               "WSQ": b"\xff\xa0\xff\xa8\x00", "WSQ comment": b"NIST_COM"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("booth")
    out = subprocess.run([str(BIN / "station"), "demo", "--applicants", "3", "--workdir", str(workdir)],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    return workdir, out, json.loads((workdir / "summary.json").read_text())


@pytest.mark.timeout(300)
def test_demo_enrolls_every_applicant_and_loses_nothing(demo):
    workdir, out, summary = demo
    assert summary["committed"] == 3 and summary["lost"] == 0, summary["problems"]
    assert summary["delivered"] == 3 and summary["confirmed"] == 3 and summary["collector"] == "embedded"
    for result in summary["results"]:  # central acknowledged and later confirmed each, with a receipt
        delivery = result["delivery"]
        assert delivery["delivered"] and delivery["confirmed"]
        assert delivery["receipt"]["record"] == result["record"] and delivery["receipt"]["collector"]
    assert all(code == 0 for code in summary["exit_codes"].values()), summary["exit_codes"]
    store = RecordStore.reader(Path(summary["paths"]["state"]) / "store")
    for result in summary["results"]:
        assert result["record"] and not result["error"]
        assert store.verify(result["record"]) == []
        assert set(result["timings_s"]) >= {"start", "portrait", "finish", "total"}
    first, second, third = summary["results"]
    # applicant 2 put the thumb down for the index: refused as the same finger
    assert any("position 2 refused: same finger as right thumb" in e for e in second["events"])
    # applicant 3: left little amputated (declared, with the exception photo), left index worn
    assert store.get(third["record"]).summary["exceptions"] == {"10": "XX"}
    assert store.get(third["record"]).summary["force_captured"] == [7]
    assert any("exception photo" in e for e in third["events"])
    store.close()
    assert "applicant 3/3" in out.stdout


@pytest.mark.timeout(300)
def test_every_applicants_card_is_printed_and_carries_their_data(demo):
    import cv2

    workdir, out, summary = demo
    assert summary["cards"] == 3 and "3 card(s) printed" in out.stdout
    for result in summary["results"]:
        card = Path(result["card"])
        assert card == workdir / "cards" / result["record"]
        front, back = cv2.imread(str(card / "front.png")), cv2.imread(str(card / "back.png"))
        assert front.shape == back.shape == (648, 1016, 3)
        assert {p.name for p in card.glob("front-*.png")} == {f"front-{c}.png" for c in "ymcko"}
        text, _, _ = cv2.QRCodeDetector().detectAndDecode(front)
        assert text.count("|") == 6 and text.split("|")[0].startswith("031")  # a Hải Phòng id number
    numbers = {cv2.QRCodeDetector().detectAndDecode(cv2.imread(str(Path(r["card"]) / "front.png")))[0].split("|")[0]
               for r in summary["results"]}
    assert len(numbers) == 3  # each applicant's own card


def td1_failures(lines: list[str]) -> set[str]:
    """What the ``mrz`` package's TD1 checker refuses in an MRZ, apart from the date formats it
    cannot read: Doc 9303's fillers for a birth year alone (YY<<<<) or no expiry (<<<<<<),
    whose check digits it still verifies (tests/test_mrz.py)."""
    checker = TD1CodeChecker("\n".join(lines))
    bool(checker)  # runs every check into the report
    failed = {name for name, _ in checker.report.falses}
    if lines[1][2:6] == "<<<<":
        failed.discard("birth date")
    if lines[1][8:14] == "<<<<<<":
        failed.discard("expiry date")
    return failed


@pytest.mark.timeout(300)
def test_every_card_has_a_chip_that_verifies_against_the_test_csca(demo):
    import cv2

    workdir, out, summary = demo
    csca = Path(summary["csca"])
    assert csca.is_file() and csca.parent == Path(summary["paths"]["state"]) / "pki"
    assert summary["chips_verified"] == 3 and "issuing authority" in out.stdout
    for result in summary["results"]:
        chip = Path(result["card"]) / "chip"
        assert result["chip"] == {"path": str(chip), "valid": True, "chain_checked": True}
        assert f"chip       record {result['record'][:12]}…: valid" in out.stdout
        assert {p.name for p in chip.iterdir()} == {"EF.COM", "DG1", "DG2", "DG13", "EF.SOD"}
        assert all(p.stat().st_mode & 0o077 == 0 for p in chip.iterdir())  # personal data: owner only
        # An independent check, as anyone holding the card would make it.
        verify = subprocess.run([str(BIN / "stationctl"), "chip", "verify", str(chip), "--csca", str(csca)],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        # DG1 is the printed card's MRZ (61 5D {5F1F 5A: 90 characters}), and the card's own.
        dg1 = (chip / "DG1").read_bytes()
        assert dg1[:5] == bytes.fromhex("615D5F1F5A") and len(dg1) == 95
        text = dg1[5:].decode("ascii")
        lines = [text[0:30], text[30:60], text[60:90]]
        assert td1_failures(lines) == set(), (lines, TD1CodeChecker("\n".join(lines)).report.falses)
        id_number = cv2.QRCodeDetector().detectAndDecode(cv2.imread(str(Path(result["card"]) / "front.png")))[0]
        assert TD1CodeChecker("\n".join(lines)).fields().optional_data == id_number.split("|")[0]


@pytest.mark.timeout(300)
def test_every_record_is_exported_as_a_standard_transaction(demo):
    _workdir, _out, summary = demo
    assert len(summary["exports"]) == 3
    for result in summary["results"]:
        message = nistitl.Message()
        message.parse(Path(result["export"]).read_bytes())
        fingers = list(message.iter(14))
        faces = list(message.iter(10))
        assert message[0][9].value == result["record"]  # 1.009 TCN is the record id
        if result["applicant"] == 3:
            assert len(fingers) == 10 and len(faces) == 2  # amputation declared, exception photo
        else:
            assert len(fingers) == 10 and len(faces) == 1


@pytest.mark.timeout(300)
def test_nothing_personal_or_biometric_is_left_in_the_clear(demo):
    workdir, out, summary = demo
    state, logs = Path(summary["paths"]["state"]), workdir / "logs"
    names = [line.split(": portrait")[0].split(" ", 2)[2].strip() for line in out.stdout.splitlines()
             if line.strip().startswith("applicant ") and ": portrait" in line]
    assert len(names) == 3
    ids = []
    for export in summary["exports"]:
        message = nistitl.Message()
        message.parse(Path(export).read_bytes())
        ids.append(next(message.iter(2))[801].value)
    assert all(len(i) == 12 for i in ids)
    secrets = [n.encode() for n in names] + [i.encode() for i in ids]
    files = [p for root in (state, logs) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sealed" for p in files) and any(p.name == "store.db" for p in files)
    # The test PKI the demo made as issuing authority is keys and certificates only, keys 0600.
    pki = {p.name: p.stat().st_mode & 0o777 for p in (state / "pki").iterdir()}
    assert pki.keys() == {"csca.key.pem", "csca.cert.pem", "ds.key.pem", "ds.cert.pem"}
    assert pki["csca.key.pem"] == pki["ds.key.pem"] == 0o600
    # The encoder's pcscd keeps no APDU trace: the chips' data (in hex) never reaches its log.
    trace = (workdir / "pcscd" / "pcscd.log").read_text(errors="replace").lower().replace(" ", "")
    assert not [i for i in ids if i.encode().hex() in trace], "pcscd's log traces the personalisation"
    assert (workdir / "pcscd" / "pcscd.log").stat().st_mode & 0o077 == 0
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{path} holds an applicant's name or id number in the clear"
        for kind, magic in IMAGE_MAGIC.items():
            assert magic not in data, f"{path} holds a {kind} image in the clear"


# -- station demo --console -------------------------------------------------------------------
CONSOLE_LINE = re.compile(r"^console: (http://127\.0\.0\.1:(\d+)/)  sign in as (\S+) / (\S+) ")
ENGINEER_LINE = re.compile(r"^ +or as (\S+) / (\S+) ")


def _lines(stream, into: "queue.Queue[str]") -> None:
    for line in stream:
        into.put(line)
    into.put("")  # the demo closed its output


def _sign_in(url: str, origin: str | None, user: str, password: str) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Origin": origin} if origin else {})}
    request = urllib.request.Request(url + "api/sign-in", data=json.dumps({"user": user, "password": password}).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@pytest.mark.timeout(120)
def test_demo_console_keeps_the_station_running_for_an_officer():
    """``station demo --console``: the console on a printed URL with a demo officer's
    sign-in, the demo putting each asked-for finger on the emulated scanner, until SIGINT."""
    workdir = Path(tempfile.mkdtemp(prefix="demo-console-", dir="/tmp"))  # short: the sockets go in workdir/run
    demo = subprocess.Popen([str(BIN / "station"), "demo", "--console", "--no-chip", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(demo.stdout, lines), daemon=True).start()
    seen: list[str] = []

    def wait_for(pattern: re.Pattern, timeout_s: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            assert line, "the demo ended early:\n" + "".join(seen)
            seen.append(line)
            if (match := pattern.search(line)) is not None:
                return match
        raise AssertionError(f"no line matching {pattern.pattern} within {timeout_s:.0f} s:\n" + "".join(seen))

    try:
        url, port, officer, password = wait_for(CONSOLE_LINE).groups()
        engineer, engineer_password = wait_for(ENGINEER_LINE).groups()
        origin = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read()
        status, body = _sign_in(url, origin, officer, password)
        assert status == 200 and body["ok"] and body["role"] == "officer" and body["language"] == "vi", body
        assert body["display_name"] == "Cán bộ demo"
        status, body = _sign_in(url, origin, engineer, engineer_password)
        assert status == 200 and body["role"] == "engineer", body
        assert _sign_in(url, origin, officer, "not-the-password")[0] == 401
        assert _sign_in(url, None, officer, password)[0] == 403  # a POST without the console's origin

        # An officer's enrollment through the controller: the demo puts each asked-for finger
        # (a different one per position) on the scanner; without it the emulator would image
        # one finger for both and the station would refuse the second as a duplicate.
        ctx = zmq.Context()
        control = CommandClient(ctx, f"ipc://{workdir / 'run' / 'controller.cmd'}", name="controller")
        try:
            started = control.call("session.start", {"applicant": make_applicant(random.Random(7), 1),
                                                     "operator": officer}).result
            session = started["session"]
            control.call("session.portrait", {"session": session}, timeout_s=60)
            for position in started["finger_positions"][:2]:
                finger = control.call("session.finger", {"session": session, "position": position},
                                      timeout_s=60).result
                assert finger["position"] == position and finger["attempts"] >= 1
            control.call("session.cancel", {"session": session, "reason": "test"})
        finally:
            control.close()
            ctx.term()
        wait_for(re.compile(r"puts the right index \(position 2\) on the scanner"), 10)

        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0, "".join(seen) + "".join(iter(lines.get, ""))
        summary = json.loads((workdir / "summary.json").read_text())
        assert summary["applicants"] == 0 and summary["lost"] == 0, summary["problems"]
        assert summary["console"]["url"] == url and summary["console"]["fingers_placed"] >= 2
        assert summary["exit_codes"]["console"] == 0 and all(c == 0 for c in summary["exit_codes"].values())
        assert password not in (workdir / "summary.json").read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def test_demo_console_wait_notices_a_daemon_dying(tmp_path):
    demo = Demo(tmp_path, 0, 1, console=True)
    demo.logs.mkdir(parents=True)
    demo.sensor_control = tmp_path / "no-emulator.ctl"
    demo.spawn("console", [sys.executable, "-c", "import sys; sys.exit(3)"]).popen.wait(30)
    demo.console_passwords = {name: "x" * 12 for name, *_ in CONSOLE_ACCOUNTS}
    try:
        with pytest.raises(StationError, match="console exited with status 3"):
            demo.serve_console()
    finally:
        demo.auto_finger.stop()
        demo.stop_all()
        shutil.rmtree(demo.central_paths.run, ignore_errors=True)


def test_demo_applicants_zero_needs_console(capsys):
    with pytest.raises(SystemExit):
        demo_main(["--applicants", "0"])
    assert "0 only with --console" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo_main(["--console-port", "8470"])
