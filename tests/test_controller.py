"""The controller on its own: sessions, policy errors, and drivers that are not there."""
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from station.bus import CommandClient
from station.errors import CommandError
from station.paths import Paths

BIN = Path(sysconfig.get_path("scripts"))
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def controller(station_env, ctx):
    proc = subprocess.Popen([str(BIN / "station-controller")], env=station_env["env"], stderr=subprocess.PIPE)
    client = CommandClient(ctx, Paths.resolve().cmd("controller"), name="controller")
    deadline = time.monotonic() + 20
    while True:
        try:
            client.call("ping", timeout_s=0.5)
            break
        except CommandError:
            raise
        except Exception:
            assert time.monotonic() < deadline, "controller did not start"
    yield client
    proc.terminate()
    assert proc.wait(timeout=5) == 0
    client.close()


def test_session_errors_are_structured_and_actionable(controller):
    status = controller.call("status").result
    assert status["drivers"] == {"cam0": {"kind": "camera", "online": False, "state": "unknown"},
                                 "fp0": {"kind": "fingerprint", "online": False, "state": "unknown"}}
    with pytest.raises(CommandError) as bad:
        controller.call("session.start", {"applicant": "nobody"})
    assert bad.value.code == "bad_request"

    session = controller.call("session.start", {"applicant": {"surname": "ERIKSSON"}, "operator": "op1"}).result
    sid = session["session"]
    assert session["finger_positions"] == list(range(1, 11))

    with pytest.raises(CommandError) as offline:
        controller.call("session.finger", {"session": sid, "position": 2})
    assert offline.value.code == "driver_offline" and offline.value.retryable
    assert "fp0 is offline" in offline.value.message

    with pytest.raises(CommandError) as position:
        controller.call("session.finger", {"session": sid, "position": 11})
    assert position.value.code == "bad_request"

    with pytest.raises(CommandError) as reason:
        controller.call("session.exception", {"session": sid, "position": 3, "reason": "ZZ"})
    assert "XX" in reason.value.message and "UP" in reason.value.message
    assert controller.call("session.exception", {"session": sid, "position": 3, "reason": "UP"}).result["reason"] == "UP"

    with pytest.raises(CommandError) as incomplete:
        controller.call("session.finish", {"session": sid})
    assert incomplete.value.code == "incomplete" and "[1, 2, 4, 5, 6, 7, 8, 9, 10]" in incomplete.value.message

    assert controller.call("session.cancel", {"session": sid}).result == {"cancelled": sid}
    with pytest.raises(CommandError) as gone:
        controller.call("session.finish", {"session": sid})
    assert gone.value.code == "session_error"
