#!/usr/bin/env python3
"""Benchmark whole enrollments through every process, against the time the devices
themselves need.

The station runs as it does in the field, one OS process each, on ipc sockets: the
fingerprint sensor emulator on a pty paced at 115,200 baud (10 bits a byte),
``station-fingerprintd`` configured to that baud, the camera emulator (``stationctl
emulate camera --fps 30``, an MJPEG stream on a FIFO) read by ``station-camerad`` as its
``video`` source, and ``station-controller``; keys provisioned as ``station demo`` does.
This process plays the officer through the controller's command socket:
``session.start``, ``session.portrait``, for each of the ten policy positions the
applicant's finger put on the glass (the sensor emulator's control channel, as the demo
does) and ``session.finger``, then ``session.finish``. ``total_s`` is the wall time from
sending ``session.start`` to receiving the finish reply.

``device_s`` is what the emulated devices need for that work, from their own counters,
read before and after every step:

- sensor: the line time of every byte the sensor sent and received in the step, at 10
  bits a byte at the configured baud. Bytes sent are the emulator's own counter
  (``EmulatorStats.bytes_sent``); it keeps none of what it receives, so the emulator runs
  here in a small wrapper process (this script, ``--sensor-emulator``) that builds the same
  ``SensorEmulator`` and ``ControlChannel`` as ``stationctl emulate fingerprint``, counts
  the frames its packet handler is given (header 9 + payload + checksum 2 bytes each) and
  answers ``stats`` on its stdin. The emulator paces only what it sends, so the received
  bytes' line time (about 1 ms a finger) is in ``device_s`` but was never actually spent.
  Its image acquisition time is what the emulator takes to synthesise the impression a
  GenImg images (``SyntheticFinger``, 9-25 ms; a real sensor takes far longer): the
  wrapper times each ``next_impression`` (``sensor_imaging_s``). It runs without faults,
  so ``sensor_delays_s`` is 0.
- camera: ``capture.consecutive_frames`` (from the camera daemon's effective config) at
  the emulator's 30 fps, the least time an auto-capture can take. The camera emulator's
  own ``frames_sent`` (its ``status`` command) is reported beside it, for the portrait step
  and as the rate over the whole applicant, to show the camera really ran at 30 fps.

``software_overhead = (total_s - device_s) / device_s``, goal <= 0.05.

Where the overhead goes: each driver publishes a ``capture`` event just before it replies,
so a step's overhead splits into the driver's share (our request to that event, less the
device time) and the controller's (that event to the controller's reply); for a finger,
``driver_after_line_s`` is the part after the sensor's last byte (the wrapper notes when
each reply has left the line): assessing the image and handing the reply over. ``cpu_s`` is
the CPU time each process used during the applicant (``/proc/PID/stat``). Each applicant's
ten fingers are put on the glass once before the clock starts, because the emulator grows
a finger's ridge pattern (about 0.2 s) the first time it sees it: the applicant's hand
exists before the session does. For the same reason the clock starts only once the camera
emulator has sent its first ``Scene.NOISE_PERIOD`` frames: it renders and encodes each of
those once (about a second of CPU over the first 8.5 s) and replays them after, so until
then it takes CPU from the station, which a real camera's own hardware never does.

Every process is started in a fresh ``/tmp/enrb-*`` directory and stopped at the end
(``--keep`` leaves the directory, logs and store). Prints one JSON object on stdout;
progress on stderr; about two minutes for three applicants.

    .venv/bin/python benchmarks/enrollment.py [--applicants 3] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
import zmq  # noqa: E402

from drivers.camera.scene import Scene  # noqa: E402
from drivers.fingerprint import protocol as fp  # noqa: E402
from drivers.emulation import send_command  # noqa: E402
from station import config, keyring  # noqa: E402
from station.bus import CommandClient, Subscriber  # noqa: E402
from station.demo import make_applicant  # noqa: E402
from station.envelope import Message  # noqa: E402
from station.errors import StationError  # noqa: E402
from station.paths import Paths  # noqa: E402
from station.programs import STOP_TIMEOUT_S, Program, program_env, scripts_dir  # noqa: E402
from common import progress_for  # noqa: E402

BIN = scripts_dir()
STATION_ID = "VN-HP-0001"
BAUD = 115200
CAMERA_FPS = 30.0
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
READY_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 120.0
GOAL_OVERHEAD = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STEP_FIGURES = ("wall_s", "device_s", "overhead_s", "driver_overhead_s", "driver_after_line_s",
                "controller_after_s")


progress = progress_for("enrollment")


# -- the sensor emulator, with counters readable while it runs --------------------------------
def sensor_emulator_main(link: Path, control: Path, baud: int) -> int:
    """``stationctl emulate fingerprint --baud B --link L --control C``, plus ``stats`` on stdin.

    Same emulator, same control channel, same print source; the only addition is a count
    of the command frames the emulator receives, which it does not keep itself.
    """
    from drivers.emulation import ControlChannel
    from drivers.fingerprint.emulator import USAGE, SensorEmulator
    from drivers.fingerprint.prints import SyntheticFinger
    from station import logs

    class TimedPrints:
        """The emulator's print source, timing the impressions it synthesises for GenImg."""

        def __init__(self, prints: Any, sensor: "CountingSensor"):
            self.prints, self.sensor = prints, sensor

        def next_impression(self) -> Any:
            started = time.perf_counter_ns()
            try:
                return self.prints.next_impression()
            finally:
                self.sensor.imaging_ns += time.perf_counter_ns() - started

        def __getattr__(self, name: str) -> Any:
            return getattr(self.prints, name)

    class CountingSensor(SensorEmulator):
        frames_received = 0
        bytes_received = 0
        imaging_ns = 0  # spent synthesising impressions (the sensor imaging a finger)
        line_idle_wall_ns = 0  # when the last byte of the last reply had crossed the line

        @property
        def prints(self) -> Any:
            return self._timed_prints

        @prints.setter
        def prints(self, source: Any) -> None:  # the control channel's ``finger`` sets it too
            self._timed_prints = TimedPrints(source, self)

        def _on_packet(self, packet: fp.Packet) -> None:
            self.frames_received += 1
            self.bytes_received += fp.HEADER_SIZE + len(packet.payload) + 2
            super()._on_packet(packet)

        def send(self, data: bytes) -> bool:
            sent = super().send(data)
            self.line_idle_wall_ns = time.time_ns()
            return sent

    logs.setup("WARNING")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    emulator = CountingSensor(prints=SyntheticFinger(0, 2), baud=baud, link=link)
    path = emulator.start()
    channel = ControlChannel(control, emulator.command, USAGE, "fingerprint-emulator").start()

    def stats() -> dict[str, Any]:
        # The line's byte counters live in the shared toolkit's ``port_stats`` (drivers/emulation.py).
        return {**asdict(emulator.stats), **asdict(emulator.port_stats), "frames_received": emulator.frames_received,
                "bytes_received": emulator.bytes_received, "line_idle_wall_ns": emulator.line_idle_wall_ns,
                "imaging_s": emulator.imaging_ns / 1e9,
                "baud": emulator.parameters.baud,
                "paced": emulator.baud is not None, "slow_s": emulator.faults.slow}

    print(path, flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(stats()), flush=True)
    finally:
        channel.stop()
        emulator.stop()
    return 0


# -- processes ---------------------------------------------------------------------------------
class Child(Program):
    """One station process; ``answers``: a wrapper answering ``ask`` on its stdin and stdout,
    stopped by closing its stdin (SIGTERM only if that fails)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, *, reads_stdout: bool = False,
                 answers: bool = False):
        super().__init__(argv, env, logs / f"{name}.log", reads_stdout=reads_stdout or answers, writes_stdin=answers)
        self._lock = threading.Lock()

    def ask(self, line: str) -> dict[str, Any]:
        """One request line on stdin, one JSON answer line on stdout."""
        with self._lock:
            self.popen.stdin.write(f"{line}\n".encode())
            self.popen.stdin.flush()
            answer = self.popen.stdout.readline()
        if not answer:
            raise StationError(f"{self.name} exited:\n{self.log_tail()}")
        return json.loads(answer)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, sig: int = signal.SIGTERM) -> int | None:
        if self.popen is not None and self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
                self.popen.wait(timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        return super().stop(timeout_s, sig)


class Station:
    def __init__(self, top: Path):
        self.top = top
        self.paths = Paths(etc=top / "etc", state=top / "state", run=top / "run")
        self.logs = top / "logs"
        for directory in (self.paths.etc, self.paths.state, self.paths.run, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        self.env = program_env(self.paths)
        self.children: dict[str, Child] = {}
        self.ctx = zmq.Context()
        self.sensor_control = self.paths.run / "fp0-sensor.ctl"
        self.camera_control = self.paths.run / "cam0-camera.ctl"
        self.final_sensor_stats: dict[str, Any] = {}

    def spawn(self, name: str, argv: list[str], reads_stdout: bool = False, answers: bool = False) -> Child:
        child = Child(name, argv, self.env, self.logs, reads_stdout=reads_stdout, answers=answers)
        child.start()
        self.children[name] = child
        return child

    def start(self) -> None:
        _, central_pub = keyring.write_central_pair(self.top / "central")
        keyring.provision(self.paths.keys, STATION_ID, central_pub.read_bytes())
        sensor = self.spawn("sensor", [sys.executable, __file__, "--sensor-emulator", str(self.top / "fp0.tty"),
                                       "--control", str(self.sensor_control), "--baud", str(BAUD)], answers=True)
        port = sensor.first_line()
        camera = self.spawn("camera", [str(BIN / "stationctl"), "emulate", "camera", "--fps", f"{CAMERA_FPS:g}",
                                       "--link", str(self.top / "cam0.mjpeg"), "--control", str(self.camera_control),
                                       "--log-level", "WARNING"], reads_stdout=True)
        fifo = camera.first_line()
        etc = self.paths.etc
        (etc / "fingerprint@fp0.yaml").write_text(yaml.safe_dump({"port": port, "baud": BAUD}))
        (etc / "camera@cam0.yaml").write_text(yaml.safe_dump({"source": {"kind": "video", "path": fifo}}))
        self.camera_config = config.load("camera", "cam0", etc)
        self.policy = config.load("enrollment", None, etc)
        self.spawn("cam0", [str(BIN / "station-camerad"), "cam0", "--log-level", "WARNING"])
        self.spawn("fp0", [str(BIN / "station-fingerprintd"), "fp0", "--log-level", "WARNING"])
        self.spawn("controller", [str(BIN / "station-controller"), "--log-level", "WARNING"])
        self.wait_ready()

    def check_alive(self) -> None:
        for child in self.children.values():
            if not child.alive:
                raise StationError(f"{child.name} exited with status {child.returncode}:\n{child.log_tail()}")

    def call(self, name: str, cmd: str, args: dict | None = None, timeout_s: float = STEP_TIMEOUT_S) -> dict:
        client = CommandClient(self.ctx, self.paths.cmd(name), name=name)
        try:
            return client.call(cmd, args, timeout_s=timeout_s).result
        finally:
            client.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for name in ("cam0", "fp0", "controller"):
            while True:
                self.check_alive()
                try:
                    if self.call(name, "state", timeout_s=0.5)["state"] == "ready":
                        break
                except StationError:
                    pass
                if time.monotonic() > deadline:
                    raise StationError(f"{name} not ready after {READY_TIMEOUT_S:.0f} s:\n"
                                       f"{self.children[name].log_tail()}")
        while not all(d["online"] for d in self.call("controller", "status")["drivers"].values()):
            if time.monotonic() > deadline:
                raise StationError("the controller does not see every driver online")
            time.sleep(0.1)

    def sensor_stats(self) -> dict[str, Any]:
        return self.children["sensor"].ask("stats")

    def camera_status(self) -> dict[str, Any]:
        reply = send_command(self.camera_control, "status")
        if not reply.startswith("ok "):
            raise StationError(f"camera emulator status: {reply}")
        return json.loads(reply[3:])

    def wait_camera_warm(self) -> None:
        """Until the camera emulator replays frames from its cache (see the docstring)."""
        deadline = time.monotonic() + Scene.NOISE_PERIOD / CAMERA_FPS + READY_TIMEOUT_S
        while self.camera_status()["frames_sent"] < Scene.NOISE_PERIOD:
            if time.monotonic() > deadline:
                raise StationError(f"the camera emulator sent fewer than {Scene.NOISE_PERIOD} frames in "
                                   f"{Scene.NOISE_PERIOD / CAMERA_FPS + READY_TIMEOUT_S:.0f} s")
            time.sleep(0.2)

    def place(self, seed: int, position: int) -> None:
        answer = send_command(self.sensor_control, f"finger {seed} {position} quality=good")
        if not answer.startswith("ok"):
            raise StationError(f"sensor emulator refused the finger: {answer}")

    def cpu(self) -> dict[str, float]:
        return {name: child.cpu_s() for name, child in self.children.items()}

    def stop(self) -> dict[str, int]:
        codes = {}
        if "sensor" in self.children and self.children["sensor"].alive:
            try:
                self.final_sensor_stats = self.sensor_stats()
            except (StationError, OSError, ValueError):
                pass
        for name in ("controller", "fp0", "cam0", "camera", "sensor"):
            if name in self.children:
                codes[name] = self.children[name].stop()
        self.ctx.term()
        return codes


# -- one applicant -----------------------------------------------------------------------------
def line_s(byte_count: int, baud: int) -> float:
    return byte_count * BITS_PER_BYTE / baud


def sensor_delta(before: dict, after: dict) -> dict[str, Any]:
    sent = after["bytes_sent"] - before["bytes_sent"]
    received = after["bytes_received"] - before["bytes_received"]
    baud = after["baud"]
    return {"bytes_sent": sent, "bytes_received": received, "commands": after["commands"] - before["commands"],
            "sent_s": line_s(sent, baud), "received_s": line_s(received, baud),
            "imaging_s": after["imaging_s"] - before["imaging_s"],
            "bad_packets": after["bad_packets_received"] - before["bad_packets_received"],
            "replies_dropped": after["replies_dropped"] - before["replies_dropped"]}


class Officer:
    """Plays one applicant through the controller, reading the devices' counters around
    every step and the drivers' ``capture`` events, which split a step's time between the
    driver (up to its reply) and the controller (after it)."""

    def __init__(self, station: Station):
        self.station = station
        self.events = Subscriber(station.ctx, [station.paths.pub("fp0"), station.paths.pub("cam0")],
                                 topics=["fingerprint.fp0.capture", "camera.cam0.capture"])
        self.sensor = station.sensor_stats()
        self.bookkeeping_s = 0.0  # our own counter reads between steps, inside total_s

    def close(self) -> None:
        self.events.close()

    def _driver_events(self) -> list[Message]:
        found = []
        while (msg := self.events.receive(timeout_ms=0)) is not None:
            found.append(msg)
        return found

    def step(self, cmd: str, args: dict, expect_event: bool = False,
             sensor_step: bool = False) -> tuple[dict, dict[str, Any]]:
        self._driver_events()  # nothing from before this step may be taken for its events
        sent_wall_ns, t0 = time.time_ns(), time.monotonic()
        result = self.station.call("controller", cmd, args)
        wall = time.monotonic() - t0
        replied_wall_ns = sent_wall_ns + int(wall * 1e9)
        t1 = time.monotonic()
        after = self.station.sensor_stats()
        events = self._driver_events()
        if expect_event and not events:
            msg = self.events.receive(timeout_ms=1000)
            events = [msg] if msg is not None else []
        self.bookkeeping_s += time.monotonic() - t1
        sensor = sensor_delta(self.sensor, after)
        self.sensor = after
        info: dict[str, Any] = {"wall_s": wall, "sensor": sensor,
                                "device_s": sensor["sent_s"] + sensor["received_s"] + sensor["imaging_s"]}
        if expect_event and not events:
            info["driver_event_missing"] = True
        if events:
            last = events[-1]
            info["driver_events"] = len(events)
            info["driver_replied_s"] = (last.get("t_pub_ns") - sent_wall_ns) / 1e9
            info["controller_after_s"] = (replied_wall_ns - last.get("t_pub_ns")) / 1e9
            if sensor_step:
                info["driver_after_line_s"] = (last.get("t_pub_ns") - after["line_idle_wall_ns"]) / 1e9
        return result, info


def enroll(station: Station, number: int, rng: random.Random) -> dict[str, Any]:
    applicant = make_applicant(rng, number)
    seed = rng.randrange(1 << 30)
    consecutive = station.camera_config["capture"]["consecutive_frames"]
    positions = station.policy["finger_positions"]
    for position in positions:  # the emulator grows each finger's ridge pattern once: not timed
        station.place(seed, position)
    officer = Officer(station)
    steps: dict[str, dict[str, Any]] = {}
    try:
        cpu_before = station.cpu()
        camera_before = station.camera_status()
        first_sensor = officer.sensor
        started = time.monotonic()
        reply, steps["start"] = officer.step("session.start", {"applicant": applicant, "operator": "bench-officer"})
        session = reply["session"]
        t1 = time.monotonic()
        camera_mid = station.camera_status()
        officer.bookkeeping_s += time.monotonic() - t1
        portrait, steps["portrait"] = officer.step("session.portrait", {"session": session}, expect_event=True)
        t1 = time.monotonic()
        camera_after = station.camera_status()
        officer.bookkeeping_s += time.monotonic() - t1
        steps["portrait"]["device_s"] += consecutive / CAMERA_FPS
        camera = {"min_s": consecutive / CAMERA_FPS, "consecutive_frames": consecutive, "forced": portrait["forced"],
                  "passed": portrait["passed"], "score": portrait["score"],
                  "emulator_frames_sent_in_step": camera_after["frames_sent"] - camera_mid["frames_sent"]}
        attempts, kept = {}, {}
        placing_s = 0.0
        for position in positions:
            t1 = time.monotonic()
            station.place(seed, position)  # the applicant puts the finger on the glass
            placing_s += time.monotonic() - t1
            finger, steps[f"finger_{position}"] = officer.step(
                "session.finger", {"session": session, "position": position}, expect_event=True, sensor_step=True)
            attempts[position] = finger["attempt_nfiq2"]
            kept[position] = finger["nfiq2"]
        done, steps["finish"] = officer.step("session.finish", {"session": session})
        total = time.monotonic() - started
        frames_in_window = station.camera_status()["frames_sent"] - camera_before["frames_sent"]
        cpu_after = station.cpu()
        sensor_all = sensor_delta(first_sensor, officer.sensor)
    finally:
        officer.close()

    device = {"sensor_sent_s": sensor_all["sent_s"], "sensor_received_s": sensor_all["received_s"],
              "sensor_imaging_s": sensor_all["imaging_s"], "sensor_delays_s": 0.0, "camera_s": camera["min_s"]}
    device_s = sum(device.values())
    per_step = {}
    for name, s in steps.items():
        row = {"wall_s": round(s["wall_s"], 3), "device_s": round(s["device_s"], 3),
               "overhead_s": round(s["wall_s"] - s["device_s"], 3)}
        if "driver_replied_s" in s:
            # The driver's share of the overhead: from our request to its capture event
            # (published just before its reply), less the device time; the controller's:
            # from that event to the controller's reply to us.
            row["driver_overhead_s"] = round(s["driver_replied_s"] - s["device_s"], 3)
            row["controller_after_s"] = round(s["controller_after_s"], 3)
        if "driver_after_line_s" in s:
            # Of the driver's share, what came after the sensor's last byte: assessing the
            # image (NFIQ 2, minutiae, template) and handing the reply to the main loop.
            row["driver_after_line_s"] = round(s["driver_after_line_s"], 3)
        if s.get("driver_event_missing"):
            row["driver_event_missing"] = True
        if s["sensor"]["commands"]:
            row["sensor_bytes_sent_received"] = [s["sensor"]["bytes_sent"], s["sensor"]["bytes_received"]]
        per_step[name] = row
    fingers = [per_step[f"finger_{p}"] for p in positions]
    steps_wall = sum(s["wall_s"] for s in steps.values())
    return {
        "applicant": number,
        "record": done["record"],
        "sealed_bytes": done["sealed_bytes"],
        "total_s": round(total, 3),
        "device_s": round(device_s, 3),
        "device_parts_s": {k: round(v, 4) for k, v in device.items()},
        "software_overhead": round((total - device_s) / device_s, 4),
        "overhead_s": round(total - device_s, 3),
        "overhead_parts_s": {
            "fingers_driver": round(sum(f.get("driver_overhead_s", 0.0) for f in fingers), 3),
            "fingers_controller": round(sum(f.get("controller_after_s", 0.0) for f in fingers), 3),
            "portrait": per_step["portrait"]["overhead_s"],
            "start": per_step["start"]["overhead_s"],
            "finish": per_step["finish"]["overhead_s"],
            "between_steps": round(total - steps_wall, 3),
        },
        # part of overhead_parts_s["fingers_driver"]: after the sensor's last byte of each finger
        "fingers_driver_after_line_s": round(sum(f.get("driver_after_line_s", 0.0) for f in fingers), 3),
        "between_steps_parts_s": {"finger_placing": round(placing_s, 3),
                                  "benchmark_bookkeeping": round(officer.bookkeeping_s, 3)},
        "steps": per_step,
        "portrait": camera,
        "sensor": {"bytes_sent": sensor_all["bytes_sent"], "bytes_received": sensor_all["bytes_received"],
                   "commands": sensor_all["commands"], "bad_packets": sensor_all["bad_packets"],
                   "replies_dropped": sensor_all["replies_dropped"]},
        "nfiq2": [kept[p] for p in positions],
        "finger_attempts": sum(len(a) for a in attempts.values()),
        "finger_overhead_s": [f["overhead_s"] for f in fingers],
        "camera_fps_measured": round(frames_in_window / total, 2),
        "cpu_s": {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_after},
    }


def run(applicants: int, keep: bool) -> dict[str, Any]:
    top = Path(tempfile.mkdtemp(prefix="enrb-", dir="/tmp"))  # ipc:// paths must stay short
    station = Station(top)
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    codes: dict[str, int] = {}
    bench_started = time.monotonic()
    try:
        progress(f"starting the station in {top}")
        station.start()
        station.wait_camera_warm()
        progress(f"ready after {time.monotonic() - bench_started:.1f} s; enrolling {applicants} applicant(s)")
        rng = random.Random(7)
        for number in range(1, applicants + 1):
            result = enroll(station, number, rng)
            results.append(result)
            progress(f"applicant {number}: {result['total_s']:.2f} s, device {result['device_s']:.2f} s, "
                     f"overhead {100 * result['software_overhead']:.1f} %")
    except StationError as exc:
        problems.append(f"{exc.code}: {exc.message}")
    except (TimeoutError, OSError) as exc:  # an emulator's control socket or pipe
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        codes = station.stop()
        if not keep:
            shutil.rmtree(top, ignore_errors=True)
    problems += [f"{name} exited with status {code}" for name, code in codes.items() if code not in (0, None)]
    for r in results:
        missing = [name for name, step in r["steps"].items() if step.get("driver_event_missing")]
        if missing:
            problems.append(f"applicant {r['applicant']}: no driver capture event seen for {missing}")
        if r["sensor"]["bad_packets"] or r["sensor"]["replies_dropped"]:
            problems.append(f"applicant {r['applicant']}: the sensor line was not clean: {r['sensor']}")
        if r["portrait"]["forced"]:
            problems.append(f"applicant {r['applicant']}: the portrait was not a clean auto-capture: {r['portrait']}")
    if not results:
        return {"benchmark": "enrollment", "problems": problems, "logs": str(top) if keep else None}
    total = statistics.median(r["total_s"] for r in results)
    device = statistics.median(r["device_s"] for r in results)
    overhead = statistics.median(r["software_overhead"] for r in results)
    last = results[-1]
    return {
        "benchmark": "enrollment",
        "applicants": len(results),
        "total_s": round(total, 3),
        "device_s": round(device, 3),
        "device_parts_s": last["device_parts_s"],
        "software_overhead": round(overhead, 4),
        "goal": GOAL_OVERHEAD,
        "goal_met": overhead <= GOAL_OVERHEAD,
        "each": [{k: r[k] for k in ("total_s", "device_s", "software_overhead", "overhead_s", "overhead_parts_s",
                                   "fingers_driver_after_line_s", "finger_overhead_s", "between_steps_parts_s",
                                   "camera_fps_measured", "cpu_s")} for r in results],
        "steps_median": {name: {k: round(statistics.median(r["steps"][name][k] for r in results), 3)
                                for k in STEP_FIGURES if all(k in r["steps"][name] for r in results)}
                         for name in last["steps"]},
        "last_applicant": {k: last[k] for k in ("portrait", "sensor", "nfiq2", "finger_attempts", "sealed_bytes")},
        "baud": BAUD, "camera_fps": CAMERA_FPS,
        "sensor_emulator_totals": {k: station.final_sensor_stats.get(k) for k in
                                   ("commands", "bytes_sent", "bytes_received", "frames_received")},
        "exit_codes": codes,
        "seconds": round(time.monotonic() - bench_started, 1),
        "problems": problems,
        "logs": str(top) if keep else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--applicants", type=int, default=3, help="applicants to enroll, one after another (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, logs, store)")
    parser.add_argument("--sensor-emulator", type=Path, metavar="LINK", help=argparse.SUPPRESS)
    parser.add_argument("--control", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baud", type=int, default=BAUD, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sensor_emulator:
        return sensor_emulator_main(args.sensor_emulator, args.control, args.baud)
    if args.applicants < 1:
        parser.error("--applicants must be at least 1")
    result = run(args.applicants, args.keep)
    print(json.dumps(result, indent=2))
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
