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
