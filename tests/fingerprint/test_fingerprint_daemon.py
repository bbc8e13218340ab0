"""station-fingerprintd as a real process against the emulator on a pty, over the bus:
captures with quality and template, "no fingerprint", unplug when idle and mid-capture."""
from __future__ import annotations

import json
import signal
import subprocess
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from station.biometrics import assess, compare
from drivers.fingerprint.emulator import SensorEmulator
from drivers.fingerprint.prints import SyntheticFinger
from station.bus import CommandClient, Subscriber
from station.envelope import Message
from station.errors import CommandError
from station.paths import Paths

pytestmark = pytest.mark.timeout(90)
BIN = Path(sysconfig.get_path("scripts"))
HEADER_KEYS = {"v", "src", "boot", "seq", "t_pub_ns"}


class BlankGlass:
    """A print source that images the empty glass (a sensor that says "finger" anyway)."""

    identity = "nothing"

    def next_impression(self) -> np.ndarray:
        return np.full((288, 256), 255, np.uint8)


class Station:
    """One emulator, one daemon process, a command client and an event subscriber."""

    def __init__(self, station_env: dict, ctx, baud: int | None = None, extra_config: str = ""):
        run: Path = station_env["run"]
        self.emulator = SensorEmulator(prints=SyntheticFinger(3, 2), baud=baud, link=run / "fp0.tty")
        self.emulator.start()
        (station_env["etc"] / "fingerprint@fp0.yaml").write_text(
            f"port: {self.emulator.path}\nbaud: {baud or 57600}\ncommand_timeout_s: 0.3\n"
            "retries: 2\nfinger_wait_s: 5\n" + extra_config
        )
        paths = Paths.resolve()
        self.events = Subscriber(ctx, [paths.pub("fp0")], topics=["fingerprint.fp0."])
        self.client = CommandClient(ctx, paths.cmd("fp0"))
        self.received: list[Message] = []
        self.log = open(station_env["state"] / "fingerprintd.log", "w+")
        self.process = subprocess.Popen([str(BIN / "station-fingerprintd"), "fp0"], env=station_env["env"],
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def state(self) -> str:
        return self.client.call("state", timeout_s=2.0).result["state"]

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        state = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                state = self.state()
            except CommandError:
                state = None
            except Exception:  # the daemon's sockets are not bound yet
                state = None
            if state == "ready":
                return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready within {timeout_s} s (state {state}); log:\n{self.daemon_log()}")

    def next_event(self, event: str, timeout_s: float, **fields) -> tuple[Message, float]:
        """The next ``event`` whose header has ``fields``, and when it arrived."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.events.receive(timeout_ms=max(1, int(remaining * 1000)))
            if message is not None:
                self.received.append(message)
            if message is not None and message.event == event and all(
                    message.get(k) == v for k, v in fields.items()):
                return message, time.monotonic()
        raise AssertionError(f"no {event} {fields} within {timeout_s} s; log:\n{self.daemon_log()}")

    def drain_events(self) -> None:
        while self.events.receive(timeout_ms=0) is not None:
            pass

    def daemon_log(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.events.close()
            self.client.close()
            self.emulator.stop()
            self.log.close()


@pytest.fixture
def make_station(station_env, ctx):
    stations: list[Station] = []

    def make(**kwargs) -> Station:
        station = Station(station_env, ctx, **kwargs)
        stations.append(station)
        station.wait_ready()
        return station

    yield make
    for station in stations:
        station.close()


def test_capture_returns_image_quality_and_template(make_station):
    station = make_station()
    station.drain_events()
    reply = station.client.call("capture", {"position": 2}, timeout_s=15)
    result = reply.result
    assert len(reply.payloads) == 2
    image = np.frombuffer(reply.payload("image"), np.uint8).reshape(result["height"], result["width"])
    assert (result["width"], result["height"], result["encoding"]) == (256, 288, "gray8")
    assert np.array_equal(image, station.emulator.image)
    assert result["nfiq2"] >= 40 and result["minutiae"] >= 20
    assert isinstance(result["quality_feedback"], list)
    template = reply.payload("template")
    assert template[:4] == b"FMR\x00" and result["template_format"] == "ISO/IEC 19794-2:2005"
    assert compare(template, assess(image).template) > 100

    event, _ = station.next_event("capture", 5)
    assert set(event.header) - HEADER_KEYS == {"position", "nfiq2", "minutiae", "feedback"}
    assert (event.get("position"), event.get("nfiq2"), event.get("minutiae")) == (2, result["nfiq2"], result["minutiae"])
    assert event.get("feedback") == result["quality_feedback"]  # codes a console translates
    assert event.payloads == []  # never the image or the template


def test_blank_image_is_no_fingerprint_and_retryable(make_station):
    station = make_station()
    station.emulator.place_finger(BlankGlass())
    with pytest.raises(CommandError) as caught:
        station.client.call("capture", {"position": 3}, timeout_s=15)
    assert caught.value.code == "no_fingerprint" and caught.value.retryable
    assert station.state() == "ready"
    station.emulator.place_finger(SyntheticFinger(3, 3))
    assert station.client.call("capture", {"position": 3}, timeout_s=15).result["nfiq2"] > 0


def test_idle_unplug_is_reported_within_two_seconds_and_recovers(make_station):
    station = make_station()
    station.drain_events()
    unplugged = time.monotonic()
    station.emulator.unplug(1.5)
    offline, seen = station.next_event("status", 5, state="offline")
    print(f"\noffline reported {seen - unplugged:.2f} s after the unplug")
    assert seen - unplugged < 2.0, f"offline after {seen - unplugged:.2f} s"
    assert "fp0.tty" in offline.get("detail")
    _, back = station.next_event("status", 10, state="ready")
    assert back - unplugged < 1.5 + 5.0
    reply = station.client.call("capture", {"position": 2}, timeout_s=15)
    assert np.array_equal(np.frombuffer(reply.payload("image"), np.uint8).reshape(288, 256), station.emulator.image)


def test_unplug_during_capture_fails_clearly_then_recovers(make_station):
    station = make_station(baud=115200)  # paced: an image upload takes about 3.4 s
    station.drain_events()
    unplugged = threading.Event()

    def unplug_mid_upload() -> None:
        time.sleep(1.2)
        unplugged.set()
        station.emulator.unplug(1.0)

    threading.Thread(target=unplug_mid_upload, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        station.client.call("capture", {"position": 2}, timeout_s=15)
    failed_after = time.monotonic() - started
    assert unplugged.is_set()
    assert caught.value.code == "device_error" and caught.value.retryable, caught.value.as_reply()
    assert "fp0.tty" in caught.value.message
    assert failed_after < 3.0, f"the capture failed only after {failed_after:.1f} s"
    station.next_event("status", 2, state="offline")
    received = [m.get("received") for m in station.received if m.event == "progress"]
    assert received and 0 < max(received) < 36864, "the upload was cut, not finished"
    station.next_event("status", 10, state="ready")
    reply = station.client.call("capture", {"position": 2}, timeout_s=15)
    assert reply.result["nfiq2"] > 0 and len(reply.payloads) == 2


def test_a_silent_sensor_is_noticed_by_the_idle_probe(make_station):
    station = make_station()  # command_timeout_s 0.3: a probe gives up after 0.3 * 5 s
    station.drain_events()
    silenced = time.monotonic()
    station.emulator.set_faults("slow=2.5")  # the port stays, the answers come too late
    offline, seen = station.next_event("status", 5, state="offline")
    assert seen - silenced < 1.0 + 0.3 * 5 + 0.5, f"offline after {seen - silenced:.2f} s"
    assert "no valid reply to GET_ECHO" in offline.get("detail")
    station.emulator.set_faults("")
    station.next_event("status", 15, state="ready")
    assert station.client.call("capture", {"position": 2}, timeout_s=15).result["nfiq2"] > 0


def test_packet_size_and_baud_upgrade_are_applied_to_the_sensor(make_station):
    station = make_station(baud=57600, extra_config="packet_size: 256\nupgrade_baud: 115200\n")
    params = station.client.call("state").result["status"]["system_parameters"]
    assert (params["packet_size"], params["baud"]) == (256, 115200)
    assert (station.emulator.parameters.packet_size, station.emulator.parameters.baud) == (256, 115200)
    reply = station.client.call("capture", {"position": 2}, timeout_s=20)
    image = np.frombuffer(reply.payload("image"), np.uint8).reshape(288, 256)
    assert np.array_equal(image, station.emulator.image)


def test_sigterm_during_a_capture_stops_cleanly_within_two_seconds(make_station, station_env):
    station = make_station()
    station.emulator.no_finger(30)  # the applicant never puts a finger down
    capture = subprocess.Popen([str(BIN / "stationctl"), "call", "fp0", "capture", '{"position": 2}'],
                               env=station_env["env"], stdout=subprocess.PIPE, text=True)
    station.next_event("place_finger", 5)
    started = time.monotonic()
    station.process.terminate()
    assert station.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0
    out, _ = capture.communicate(timeout=3)  # the waiting operator gets an answer, not silence
    assert json.loads(out)["error"] == {"code": "stopping", "message": "fingerprint.fp0 is stopping",
                                        "retryable": True}


def test_sighup_with_a_new_port_reopens_the_scanner(make_station, station_env):
    station = make_station()
    other = SensorEmulator(prints=SyntheticFinger(9, 4), link=station_env["run"] / "fp1.tty")
    other.start()
    try:
        config = station_env["etc"] / "fingerprint@fp0.yaml"
        config.write_text(config.read_text().replace(str(station.emulator.path), str(other.path)))
        station.drain_events()
        station.process.send_signal(signal.SIGHUP)
        station.next_event("config.applied", 5)
        station.next_event("status", 5, state="ready", detail=f"scanner on {other.path}")
        reply = station.client.call("capture", {"position": 4}, timeout_s=15)
        assert np.array_equal(np.frombuffer(reply.payload("image"), np.uint8).reshape(288, 256), other.image)
    finally:
        other.stop()


def test_stationctl_watch_prints_events_without_payloads(make_station, station_env):
    station = make_station()
    watcher = subprocess.Popen([str(BIN / "stationctl"), "watch", "fp0", "--topic", "fingerprint.fp0.capture",
                                "--count", "1"], env=station_env["env"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # let it subscribe
    station.client.call("capture", {"position": 2}, timeout_s=15)
    out, _ = watcher.communicate(timeout=10)
    line = json.loads(out)
    assert line["topic"] == "fingerprint.fp0.capture" and line["position"] == 2 and "payload_bytes" not in line
