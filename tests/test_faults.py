"""Processes really killed: a driver dies mid-session and comes back; the controller dies
with records committed and comes back with every one of them intact."""
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from drivers.fingerprint.emulator_control import send_command
from station.bus import CommandClient, Subscriber
from station.errors import CommandError, StationError
from station.paths import Paths

BIN = Path(sysconfig.get_path("scripts"))
pytestmark = pytest.mark.timeout(120)


class Station:
    """Emulated sensor, fingerprint daemon and controller (no camera: portrait not required)."""

    def __init__(self, env: dict, root: Path, ctx):
        self.env, self.root, self.ctx = env, root, ctx
        self.paths = Paths.resolve()
        self.procs: dict[str, subprocess.Popen] = {}
        link, self.control = root / "fp0.tty", self.paths.run / "sensor.ctl"
        emulator = subprocess.Popen([str(BIN / "stationctl"), "emulate", "fingerprint", "--link", str(link),
                                     "--control", str(self.control)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        self.procs["emulator"] = emulator
        assert emulator.stdout.readline().strip()
        etc = self.paths.etc
        (etc / "fingerprint@fp0.yaml").write_text(yaml.safe_dump({"port": str(link)}))
        (etc / "enrollment.yaml").write_text(yaml.safe_dump({"finger_positions": [1, 2],
                                                             "portrait_required": False}))
        (etc / "controller.yaml").write_text(yaml.safe_dump({"drivers": {"camera": ["cam0"], "fingerprint": ["fp0"]},
                                                            "offline_after_s": 2.0}))

    def start(self, name: str) -> None:
        argv = {"fp0": [str(BIN / "station-fingerprintd"), "fp0"], "controller": [str(BIN / "station-controller")]}
        self.procs[name] = subprocess.Popen(argv[name], env=self.env, stderr=subprocess.DEVNULL)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def call(self, name: str, cmd: str, args=None, timeout_s: float = 30.0):
        client = CommandClient(self.ctx, self.paths.cmd(name), name=name)
        try:
            return client.call(cmd, args, timeout_s=timeout_s).result
        finally:
            client.close()

    def wait_for(self, what, timeout_s: float = 20.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = what()
                if value:
                    return value
            except StationError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def fp0_online(self) -> bool:
        return self.call("controller", "status", timeout_s=1)["drivers"]["fp0"]["online"]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(5)


@pytest.fixture
def station(station_env, ctx):
    s = Station(station_env["env"], station_env["state"], ctx)
    yield s
    s.stop()


def test_a_killed_driver_goes_offline_and_the_session_continues_after_restart(station, ctx):
    station.start("fp0")
    station.start("controller")
    station.wait_for(station.fp0_online)
    events = Subscriber(ctx, [station.paths.pub("controller")], topics=["station.drivers."])
    time.sleep(0.3)
    sid = station.call("controller", "session.start", {"applicant": {"surname": "X"}, "operator": "op"})["session"]
    send_command(station.control, "finger 5 1")
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
    station.wait_for(station.fp0_online)
    send_command(station.control, "finger 5 2")
    assert station.call("controller", "session.finger", {"session": sid, "position": 2})["position"] == 2
    record = station.call("controller", "session.finish", {"session": sid})["record"]
    assert record
    events.close()


def test_a_killed_controller_loses_no_committed_record(station):
    station.start("fp0")
    station.start("controller")
    station.wait_for(station.fp0_online)
    records = []
    for applicant in range(2):
        sid = station.call("controller", "session.start", {"applicant": {"n": applicant}, "operator": "op"})["session"]
        for position in (1, 2):
            send_command(station.control, f"finger {applicant + 10} {position}")
            station.call("controller", "session.finger", {"session": sid, "position": position})
        records.append(station.call("controller", "session.finish", {"session": sid})["record"])
    # a third applicant is mid-session when the power goes
    sid = station.call("controller", "session.start", {"applicant": {"n": 3}, "operator": "op"})["session"]
    station.kill("controller")

    station.start("controller")
    station.wait_for(lambda: station.call("controller", "status", timeout_s=1))
    status = station.call("controller", "status")
    assert status["store"] == {"committed": 2}
    assert status["sessions"] == []  # the unfinished session is gone, not half-stored
    from station.store import RecordStore
    store = RecordStore(station.paths.state / "store")
    assert store.record_ids() == records
    assert all(store.verify(r) == [] for r in records)
