"""A whole station in processes for tests: the fingerprint sensor emulator on a pty, the
driver daemons, the controller, each really started and really killed."""
from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from drivers.emulation import send_command
from station import demographics
from station.bus import CommandClient
from station.errors import StationError
from station.paths import Paths
from station.programs import Program, scripts_dir, terminate

BIN = scripts_dir()
PROGRAMS = {"fp0": ["station-fingerprintd", "fp0"], "cam0": ["station-camerad", "cam0"],
            "printer0": ["station-printerd", "printer0"], "controller": ["station-controller"]}


def applicant(number: int = 0, **changes: Any) -> dict[str, Any]:
    """A valid Hải Phòng applicant (Vietnamese name with diacritics, structured id number)."""
    rng = random.Random(number)
    sex = "FM"[number % 2]
    year = 1950 + number % 55
    base = {
        "full_name": ["Nguyễn Thị Hương Giang", "Trần Văn Đức", "Lê Thu Hà", "Phạm Quốc Bảo"][number % 4],
        "date_of_birth": f"{year}-0{1 + number % 9}-1{number % 9}", "sex": sex, "nationality": "VNM",
        "id_number": demographics.make_id_number("031", sex, year, rng.randrange(1_000_000)),
        "place_of_origin": "Xã An Lư, Huyện Thủy Nguyên, Hải Phòng",
        "place_of_residence": "Số 12 Lạch Tray, Quận Ngô Quyền, Hải Phòng", "ethnicity": "Kinh",
        "religion": "Không",
    }
    return {**base, **changes}


class Station:
    def __init__(self, env: dict, root: Path, ctx, *, policy: dict | None = None, camera: bool = False,
                 sensor: bool = True, controller: dict | None = None, printer: str | None = None,
                 printer_args: tuple[str, ...] = ()):
        """``printer``: the printer emulator's fault spec ("" for none) to issue cards, with
        ``printer_args`` for its command line (``--print-s 3``); None: no printer."""
        self.env, self.root, self.ctx = env, root, ctx
        self.paths = Paths.resolve()
        # Popens, not Programs: the console tests start the console themselves and add it here.
        self.procs: dict[str, subprocess.Popen] = {}
        link, self.control = root / "fp0.tty", self.paths.run / "sensor.ctl"
        etc = self.paths.etc
        if sensor:
            self.spawn("emulator", [str(BIN / "stationctl"), "emulate", "fingerprint", "--link", str(link),
                                    "--control", str(self.control)], reads_stdout=True).first_line()
            (etc / "fingerprint@fp0.yaml").write_text(yaml.safe_dump({"port": str(link)}))
        if camera:
            (etc / "camera@cam0.yaml").write_text(yaml.safe_dump({"source": {"kind": "emulated"}}))
        (etc / "enrollment.yaml").write_text(yaml.safe_dump(
            policy if policy is not None else {"finger_positions": [1, 2], "portrait_required": False}))
        drivers: dict[str, Any] = {"camera": ["cam0"], "fingerprint": ["fp0"]}
        self.printer_control = self.paths.run / "printer.ctl"
        self.cards = root / "cards"
        if printer is not None:
            link = root / "printer0.tty"
            self.spawn("printer-emulator", [str(BIN / "stationctl"), "emulate", "printer", "--link", str(link),
                                            "--control", str(self.printer_control), "--out", str(self.cards),
                                            "--faults", printer, *printer_args], reads_stdout=True).first_line()
            (etc / "printer@printer0.yaml").write_text(yaml.safe_dump({"port": str(link)}))
            drivers["printer"] = ["printer0"]
            controller = {"printing": {"instant_issuance": True}, **(controller or {})}
        (etc / "controller.yaml").write_text(yaml.safe_dump(
            {"drivers": drivers, "offline_after_s": 2.0, **(controller or {})}))

    def start(self, name: str) -> subprocess.Popen:
        """Start one of ``PROGRAMS`` again, as systemd's Restart= would: its log goes on."""
        argv = PROGRAMS[name]
        return self.spawn(name, [str(BIN / argv[0]), *argv[1:]]).popen

    def spawn(self, name: str, argv: list[str], reads_stdout: bool = False) -> Program:
        """``argv`` as process ``name``, logging to ``log(name)``; in pytest's session, so a ^C
        to pytest ends it too."""
        program = Program(argv, self.env, self.log(name), reads_stdout=reads_stdout, own_session=False).start()
        self.procs[name] = program.popen
        return program

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def call(self, name: str, cmd: str, args=None, timeout_s: float = 30.0):
        client = CommandClient(self.ctx, self.paths.cmd(name), name=name)
        try:
            return client.call(cmd, args, timeout_s=timeout_s).result
        finally:
            client.close()

    def wait_for(self, what: Callable[[], Any], timeout_s: float = 30.0):
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

    def online(self, *drivers: str) -> bool:
        status = self.call("controller", "status", timeout_s=1)["drivers"]
        return all(status[d]["online"] for d in drivers)

    def place(self, seed: int, position: int, quality: str = "good") -> None:
        assert send_command(self.control, f"finger {seed} {position} quality={quality}").startswith("ok")

    def printer(self, command: str) -> str:
        """A command to the printer emulator's control channel (cover, feeder, ribbon, status)."""
        return send_command(self.printer_control, command)

    def stop(self) -> None:
        for proc in self.procs.values():
            terminate(proc, 5.0)
