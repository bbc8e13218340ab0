"""stationctl as a field engineer runs it."""
import json
import subprocess
import sysconfig
from pathlib import Path

import pytest

BIN = Path(sysconfig.get_path("scripts"))
pytestmark = pytest.mark.timeout(60)


def stationctl(*args, env=None):
    return subprocess.run([str(BIN / "stationctl"), *args], capture_output=True, text=True, env=env, timeout=30)


def test_config_check_valid_and_invalid(tmp_path):
    etc = tmp_path / "etc"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "fingerprint@fp0.yaml").write_text("port: /dev/serial/by-id/usb-R307\nbaud: 57600\n")
    ok = stationctl("config", "check", "--etc", str(etc))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout

    (etc / "conf.d" / "50-fingerprint@fp0.yaml").write_text("baud: 57600\nbaudrate: 115200\nretries: 50\n")
    bad = stationctl("config", "check", "--etc", str(etc))
    assert bad.returncode == 1
    assert "50-fingerprint@fp0.yaml:2: unknown key 'baudrate'" in bad.stderr
    assert "50-fingerprint@fp0.yaml:3: retries: 50 is out of range" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_call_a_daemon_that_is_not_running_is_a_structured_error(tmp_path):
    out = stationctl("--run", str(tmp_path), "call", "fp0", "state", "--timeout", "0.3")
    assert out.returncode == 1
    reply = json.loads(out.stdout)
    assert reply["error"]["code"] == "deadline_exceeded" and reply["error"]["retryable"] is True


def test_face_check_reports_each_image(tmp_path):
    import cv2

    from drivers.camera.scene import Scene, SceneParams
    scene = Scene()
    cv2.imwrite(str(tmp_path / "good.png"), scene.render(SceneParams()))
    cv2.imwrite(str(tmp_path / "dark.png"), scene.render(SceneParams(brightness=0.3)))
    good = stationctl("--etc", str(tmp_path), "face", "check", str(tmp_path / "good.png"))
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["passed"] and report["score"] > 70 and report["hint"] is None
    assert report["checks"]["inter_eye_px"]["value"] >= 90
    out = stationctl("--etc", str(tmp_path), "face", "check", str(tmp_path / "dark.png"), str(tmp_path / "missing.png"))
    assert out.returncode == 1
    dark, missing = [json.loads(line) for line in out.stdout.splitlines()]
    assert not dark["passed"] and "dark" in dark["hint"] and not dark["checks"]["exposure"]["passed"]
    assert dark["score"] < report["score"]
    assert "cannot read" in missing["error"]


def test_provision_creates_private_keys_prints_public_ones_and_keeps_them(tmp_path):
    from station import keyring

    _key, central_pub = keyring.write_central_pair(tmp_path / "central")
    state = tmp_path / "state"
    first = stationctl("--state", str(state), "provision", "--station-id", "VN-HP-0042",
                       "--central-key", str(central_pub))
    assert first.returncode == 0, first.stderr
    assert "VN-HP-0042" in first.stdout and "BEGIN PUBLIC KEY" in first.stdout and "PRIVATE" not in first.stdout
    keys = state / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.iterdir())
    before = (keys / keyring.STATION_PUB).read_bytes()
    again = stationctl("--state", str(state), "provision", "--station-id", "VN-HP-0042")
    assert again.returncode == 0 and (keys / keyring.STATION_PUB).read_bytes() == before
    other = stationctl("--state", str(state), "provision", "--station-id", "VN-HP-0043")
    assert other.returncode == 1 and "--rotate" in other.stderr and "Traceback" not in other.stderr
    missing = stationctl("--state", str(tmp_path / "new"), "provision", "--station-id", "VN-HP-0044",
                         "--central-key", str(tmp_path / "nope.pem"))
    assert missing.returncode == 1 and "cannot read the central public key" in missing.stderr


def test_record_tools_and_the_event_journal(provisioned, ctx):
    """A committed record listed, opened with central's key, exported as ANSI/NIST-ITL; the
    journal printed from a sequence number."""
    import nistitl

    from tests.station_harness import Station, applicant

    station = Station(provisioned["env"], provisioned["state"], ctx, sensor=False,  # exceptions need no device
                      policy={"finger_positions": [1, 2], "portrait_required": False, "exception_photo_required": False})
    try:
        station.start("controller")
        station.wait_for(lambda: station.call("controller", "ping", timeout_s=0.5))
        sid = station.call("controller", "session.start", {"applicant": applicant(11), "operator": "op3"})["session"]
        for position in (1, 2):
            station.call("controller", "session.exception", {"session": sid, "position": position, "reason": "XX"})
        record_id = station.call("controller", "session.finish", {"session": sid})["record"]
        env = provisioned["env"]

        listed = stationctl("record", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["record_id"] == record_id and row["summary"]["exceptions"] == {"1": "XX", "2": "XX"}
        assert applicant(11)["full_name"] not in listed.stdout

        opened = stationctl("record", "open", record_id, "--key", str(provisioned["central_key"]), env=env)
        assert opened.returncode == 0, opened.stderr
        summary = json.loads(opened.stdout)
        assert summary["record"] == record_id and summary["station"] == "VN-HP-0001" and summary["operator"] == "op3"

        out = provisioned["state"].parent / "r.an2"
        exported = stationctl("record", "export", record_id, "--key", str(provisioned["central_key"]),
                              "--out", str(out), env=env)
        assert exported.returncode == 0, exported.stderr
        assert out.stat().st_mode & 0o777 == 0o600
        message = nistitl.Message()
        message.parse(out.read_bytes())
        assert message[0][9].value == record_id

        wrong_key = provisioned["state"].parent / "other"
        from station import keyring
        other_key, _pub = keyring.write_central_pair(wrong_key)
        refused = stationctl("record", "open", record_id, "--key", str(other_key), env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr

        events = stationctl("events", "--since", "1", env=env)
        assert events.returncode == 0, events.stderr
        lines = [json.loads(line) for line in events.stdout.splitlines()]
        assert lines[0]["seq"] == 2 and [e["seq"] for e in lines] == list(range(2, 2 + len(lines)))
        assert lines[-1]["topic"] == "station.enrollment.completed" and lines[-1]["body"]["record"] == record_id
    finally:
        station.stop()
