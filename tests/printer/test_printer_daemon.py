"""station-printerd as a real process against ``stationctl emulate printer`` on a pty, over
the bus: identity and supervisor status, a rendered card printed and checked against the
emulator's output, bad print requests, card moves, the sensors read while idle, a printer
error reaching the caller at once, unplug and replug, and the instance lock."""
from __future__ import annotations

import json
import signal
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from drivers.emulation import send_command
from drivers.printer.panels import recombine, separate
from drivers.printer.protocol import CARD_HEIGHT, CARD_WIDTH
from station.bus import CommandClient, Reply, Subscriber
from station.cardface import CardFace, Side
from station.envelope import Message
from station.errors import CommandError
from station.paths import Paths
from tests.printer.cards import make_card

pytestmark = pytest.mark.timeout(120)
BIN = Path(sysconfig.get_path("scripts"))
PACKAGED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "printer.yaml"
NAME = "printer0"
PROBE_INTERVAL_S = 0.5
COLOR_BYTES, BLACK_BYTES = CARD_HEIGHT * CARD_WIDTH * 3, CARD_HEIGHT * CARD_WIDTH


# -- the card ---------------------------------------------------------------------------------
def side_payloads(name: str, side: Side) -> dict[str, bytes]:
    """A side as the print command takes it: rgb8 colour and gray8 black (non-zero = K)."""
    return {f"{name}.color": side.color.tobytes(),
            f"{name}.black": (side.black * 255).astype(np.uint8).tobytes()}


# -- the processes ----------------------------------------------------------------------------
class Emulator:
    """``stationctl emulate printer`` with its link, control socket and printed-card folder."""

    def __init__(self, rundir: Path, out: Path, log: Path):
        self.link, self.control_path, self.out = rundir / "lp.tty", rundir / "lp.ctl", out
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [str(BIN / "stationctl"), "emulate", "printer", "--link", str(self.link),
             "--control", str(self.control_path), "--out", str(out), "--faults", ""],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout.readline().strip() == str(self.link)

    def control(self, command: str) -> str:
        reply = send_command(self.control_path, command)
        assert reply.startswith("ok "), reply
        return reply[3:]

    def status(self) -> dict[str, Any]:
        return json.loads(self.control("status"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Printerd:
    """One station-printerd process, a command client and an event subscriber."""

    def __init__(self, station_env: dict, ctx, port: Path):
        (station_env["etc"] / f"printer@{NAME}.yaml").write_text(
            yaml.safe_dump({"port": str(port), "probe_interval_s": PROBE_INTERVAL_S}))
        self.env = station_env["env"]
        paths = Paths.resolve()
        # Subscribed before the daemon binds: nothing it publishes from the start is missed.
        self.events = Subscriber(ctx, [paths.pub(NAME)], topics=[f"printer.{NAME}."])
        self.client = CommandClient(ctx, paths.cmd(NAME), name=NAME)
        self.log_path = station_env["state"] / "printerd.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "station-printerd"), NAME], env=self.env, stderr=log)

    def call(self, cmd: str, args: dict | None = None, *, timeout_s: float = 30.0,
             payloads: dict[str, bytes] | None = None) -> Reply:
        return self.client.call(cmd, args, timeout_s=timeout_s, payloads=payloads)

    def state(self) -> dict[str, Any]:
        return self.call("state", timeout_s=3.0).result

    def wait_ready(self, timeout_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        snapshot: dict[str, Any] = {}
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                snapshot = self.state()
            except CommandError:  # its sockets are not bound yet
                snapshot = {}
            if snapshot.get("state") == "ready":
                return snapshot
            time.sleep(0.1)
        raise AssertionError(f"printerd not ready within {timeout_s} s (last {snapshot.get('state')}, "
                             f"exit {self.proc.poll()}); log:\n{self.daemon_log()}")

    def next_event(self, event: str, timeout_s: float, **fields: Any) -> tuple[Message, float]:
        """The next ``event`` whose header has ``fields``, and when it arrived."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.events.receive(timeout_ms=max(1, int(remaining * 1000)))
            if message is None:
                continue
            seen.append((message.event, {k: message.get(k) for k in ("state", "level", "conditions")}))
            if message.event == event and all(message.get(k) == v for k, v in fields.items()):
                return message, time.monotonic()
        raise AssertionError(f"no {event} {fields} within {timeout_s} s; seen {seen[-10:]}; "
                             f"log:\n{self.daemon_log()}")

    def wait_probed(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The sensors' picture once the first idle probe has read it (then events are news)."""
        deadline = time.monotonic() + timeout_s
        while not (condition := self.state()["status"]["condition"]):
            assert time.monotonic() < deadline, "no idle probe read the sensors"
            time.sleep(0.1)
        self.drain_events()
        return condition

    def drain_events(self) -> None:
        while self.events.receive(timeout_ms=0) is not None:
            pass

    def daemon_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(5) == 0
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        self.client.close()
        self.events.close()


@pytest.fixture
def emulator(rundir, tmp_path):
    emu = Emulator(rundir, tmp_path / "cards", tmp_path / "emulator.log")
    yield emu
    emu.stop()


@pytest.fixture
def printerd(station_env, ctx, emulator):
    daemon = Printerd(station_env, ctx, emulator.link)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def failure(daemon: Printerd, cmd: str, args: dict | None = None, **kwargs: Any) -> tuple[CommandError, float]:
    """The error ``cmd`` fails with, and how long the caller waited for it."""
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        daemon.call(cmd, args, **kwargs)
    return caught.value, time.monotonic() - started


# -- the tests --------------------------------------------------------------------------------
def test_ready_with_the_printers_identity_and_the_supervisors_status(printerd, emulator):
    snapshot = printerd.state()
    printer = emulator.status()
    status = snapshot["status"]
    assert (snapshot["kind"], snapshot["name"], snapshot["state"]) == ("printer", NAME, "ready")
    assert snapshot["detail"] == f"card printer on {emulator.link}"
    assert status["identity"] == {"model": printer["model"], "serial": printer["serial"],
                                  "firmware": printer["firmware"], "ribbon": printer["ribbon"]["type"]}
    assert status["identity"]["ribbon"] == "ymcko" and "emulated" in status["identity"]["model"]
    assert status["device"] == {"opens": 1, "losses": 0, "flapping": False, "failing": None}
    assert status["port"] == str(emulator.link)
    assert status["cards"] == {"fed": 0, "printed": 0, "rejected": 0, "ejected": 0}
    assert printer["ribbon"]["expected"] == "ymcko"  # the daemon's setup told the printer its ribbon
    condition = printerd.wait_probed()
    assert condition["level"] == "ready" and condition["conditions"] == []
    assert condition["ribbon_remaining"] == printer["ribbon"]["remaining"]


def test_print_sends_the_separated_panels_the_emulator_prints_them(printerd, emulator):
    front, back = CardFace.from_config().render(make_card())
    reply = printerd.call("print", payloads={**side_payloads("front", front), **side_payloads("back", back)},
                          timeout_s=60)
    assert reply.result["panels"] == {"front": "ymcko", "back": "ymcko"}
    assert reply.result["status"]["card_position"] == "none"  # printed and ejected
    printed = emulator.out / "card-0001"
    assert sorted(p.name for p in printed.iterdir()) == sorted(
        [f"{side}-{letter}.png" for side in ("front", "back") for letter in "ymcko"] + ["front.png", "back.png"])
    keep_clear = yaml.safe_load(PACKAGED_CONFIG.read_text())["overlay_keep_clear"]
    expected = recombine(separate(front, "ymcko", 32, [tuple(r) for r in keep_clear["front"]]))
    looks = np.asarray(Image.open(printed / "front.png").convert("RGB"))
    assert looks.shape == (CARD_HEIGHT, CARD_WIDTH, 3)
    assert np.array_equal(looks, expected)
    back_overlay = np.asarray(Image.open(printed / "back-o.png"))
    x, y, width, height = keep_clear["back"][0]
    assert not back_overlay[y:y + height, x:x + width].any() and back_overlay.all(axis=1).any()
    assert emulator.status()["counters"]["printed"] == 1
    assert printerd.state()["status"]["cards"]["printed"] == 1


def test_a_bad_print_request_is_refused_naming_what_is_wrong(printerd, emulator):
    front = CardFace.from_config().render(make_card())[0]
    payloads = side_payloads("front", front)

    missing, _ = failure(printerd, "print", payloads={"front.color": payloads["front.color"]})
    assert missing.code == "bad_request" and "front.black" in missing.message, missing.message

    small = {"front.color": payloads["front.color"][:-3], "front.black": payloads["front.black"]}
    wrong_size, _ = failure(printerd, "print", payloads=small)
    assert wrong_size.code == "bad_request"
    assert f"{CARD_WIDTH} x {CARD_HEIGHT}" in wrong_size.message
    assert f"{COLOR_BYTES} bytes" in wrong_size.message and f"{BLACK_BYTES} bytes" in wrong_size.message
    assert str(COLOR_BYTES - 3) in wrong_size.message, wrong_size.message

    no_front, _ = failure(printerd, "print", payloads=side_payloads("back", front))
    assert no_front.code == "bad_request" and "front.color" in no_front.message

    assert printerd.state()["state"] == "ready"
    assert emulator.status()["counters"] == {"fed": 0, "printed": 0, "rejected": 0, "ejected": 0}


def test_feed_parks_a_card_at_the_contactless_station_and_reject_drops_it(printerd, emulator):
    fed = printerd.call("feed", {"to": "contactless"}).result
    assert fed["status"]["card_position"] == "contactless"
    assert emulator.status()["card_position"] == "contactless"
    hopper = emulator.status()["hopper"]

    rejected = printerd.call("reject").result
    assert rejected["status"]["card_position"] == "none"
    after = emulator.status()
    assert after["hopper"] == hopper + 1 and after["card"] is None
    assert printerd.state()["status"]["cards"] == {"fed": 1, "printed": 0, "rejected": 1, "ejected": 0}


def test_the_idle_sensors_report_the_cover_within_two_seconds(printerd, emulator):
    printerd.wait_probed()
    opened = time.monotonic()
    emulator.control("cover open")
    event, seen = printerd.next_event("condition", 5, level="error")
    print(f"\ncover open reported {seen - opened:.2f} s after it opened")
    assert seen - opened < 2.0, f"cover reported after {seen - opened:.2f} s"
    assert "cover_open" in event.get("conditions")
    assert printerd.state()["status"]["condition"]["conditions"] == event.get("conditions")

    emulator.control("cover close")
    low = emulator.status()["ribbon"]["remaining"] <= yaml.safe_load(PACKAGED_CONFIG.read_text())["ribbon_low"]
    event, _ = printerd.next_event("condition", 5)
    assert event.get("level") == ("warning" if low else "ready")
    assert "cover_open" not in event.get("conditions")


def test_a_printer_error_reaches_the_caller_at_once_and_the_daemon_stays_ready(printerd, emulator):
    printerd.wait_probed()  # events flow to the test's subscriber (it joined while the daemon started)
    emulator.control("jam")
    started = time.monotonic()
    error, waited = failure(printerd, "feed", {"to": "contactless"}, timeout_s=30)
    assert error.code == "printer_jam", error.as_reply()
    assert error.retryable and "ERR;T" in error.message
    print(f"\nthe jam reached the caller after {waited:.2f} s")
    assert waited < 3.0, f"the jam reached the caller only after {waited:.1f} s"
    snapshot = printerd.state()
    assert snapshot["state"] == "ready" and snapshot["status"]["device"]["losses"] == 0

    event, seen = printerd.next_event("condition", 5, level="error")  # read again at once after the error
    assert seen - started < 1.0, f"the jam's condition came {seen - started:.1f} s after the failed feed"
    assert "jam" in event.get("conditions")
    printerd.call("reject")  # the stuck card goes to the hopper; the printer works again
    assert emulator.status()["hopper"] == 1
    assert printerd.call("feed", {"to": "contactless"}).result["status"]["card_position"] == "contactless"


def test_an_unplugged_printer_is_offline_within_two_seconds_and_reidentified(printerd, emulator):
    identity = printerd.state()["status"]["identity"]
    printerd.drain_events()
    unplugged = time.monotonic()
    emulator.control("unplug 2")
    offline, seen = printerd.next_event("status", 5, state="offline")
    print(f"\noffline reported {seen - unplugged:.2f} s after the unplug")
    assert seen - unplugged < 2.0, f"offline reported after {seen - unplugged:.2f} s"
    assert str(emulator.link) in offline.get("detail")
    failed, waited = failure(printerd, "feed", timeout_s=10)
    assert failed.code == "device_error" and "offline" in failed.message and waited < 1.0
    assert str(emulator.link) in printerd.state()["status"]["device"]["failing"]

    _, back = printerd.next_event("status", 15, state="ready")
    assert back - unplugged >= 2.0
    status = printerd.state()["status"]
    assert status["device"] == {"opens": 2, "losses": 1, "flapping": False, "failing": None}
    assert status["identity"] == identity
    assert emulator.status()["emulator"]["unplugs"] == 1
    assert printerd.call("feed", {"to": "contactless"}).result["status"]["card_position"] == "contactless"


def test_a_second_printerd_exits_75_and_leaves_the_first_alone(printerd, station_env):
    boot = printerd.call("ping").result["boot"]
    run = Paths.resolve().run
    sockets = {p: p.stat().st_ino for p in run.glob(f"{NAME}.*")}
    assert sockets, f"no sockets of {NAME} in {run}"
    second = subprocess.run([str(BIN / "station-printerd"), NAME], env=station_env["env"],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 75, second.stderr
    assert f"in use by another process (pid {printerd.proc.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert {p: p.stat().st_ino for p in run.glob(f"{NAME}.*")} == sockets
    assert printerd.call("ping").result["boot"] == boot
    assert printerd.state()["state"] == "ready"
    assert printerd.call("feed", {"to": "contactless"}).result["status"]["card_position"] == "contactless"
