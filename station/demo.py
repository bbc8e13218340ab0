"""``station demo``: the whole station, end to end, on emulated devices, and central.

Every daemon runs as its own OS process on ipc sockets under the work directory, exactly as
under systemd: a fingerprint sensor emulator on a pseudo-terminal, the fingerprint daemon
talking the real packet protocol to it, the camera daemon on its emulated source, the
controller and the uplink; and, playing central, a collector gateway on loopback TCP with
CURVE (embedded storage, or JetStream with ``--collector nats://HOST:PORT``). The demo plays
the officer for N applicants through the control socket, prints each applicant's card on
an emulated card printer (instant issuance: ``DIR/cards/<record>/front.png``, ``back.png``
and the printer's decoded panels), waits until central has acknowledged and confirmed
every record and event, exports each record from central's storage with central's key,
writes ``summary.json`` and exits non-zero if anything was lost.

Each card has a chip: the demo starts a private pcscd whose virtual reader (vpcd) is the
printer's contactless encoder, and the printer emulator puts each card's emulated chip in
its field; the controller personalises, locks and verifies it as on hardware. The demo
plays the issuing authority too: a TEST CSCA and Document Signer (``station/pki.py``) in
``state/pki`` sign every chip. Each printed card's chip files are copied to
``DIR/cards/<record>/chip/`` and checked as anyone holding the card would check them,
with ``stationctl chip verify`` against the test CSCA. ``--no-chip`` prints cards without.

``--console`` also starts the officer's web console (``station-console``) on a loopback
port, makes a demo officer and a demo field engineer account with random passwords, prints
the URL and both sign-ins, enrolls the ``--applicants`` given (none by default) and then
keeps the station running until Ctrl-C or SIGTERM, so a newcomer can enroll someone by
hand. The demo plays the applicant at the scanner: each time the fingerprint daemon asks
for a finger, it puts that position's finger of the session's applicant on the emulated
sensor (and lifts it after the capture). On stop it shuts everything down and still checks
and summarises the automatic applicants.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
import zmq

from drivers.chip.pcscd import Pcscd, PcscdError
from drivers.emulation import send_command
from station import demographics, keyring, pki
from station.bus import CommandClient, Subscriber
from station.enrollment import FINGER_NAMES
from station.errors import StationError
from station.paths import Paths
from station.outbox import Outbox
from station.programs import Program, program_env, scripts_dir
from station.store import RecordStore

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô"]
GIVEN = {"M": ["Văn Nam", "Minh Tuấn", "Quang Huy", "Đức Thắng", "Hữu Dũng", "Văn Hùng"],
         "F": ["Thị Hương", "Thu Trang", "Ngọc Ánh", "Thị Lan", "Thị Mai", "Hương Giang"]}
PLACES = ["Xã An Lư, Huyện Thủy Nguyên, Hải Phòng", "Phường Lạch Tray, Quận Ngô Quyền, Hải Phòng",
          "Xã Tiên Cường, Huyện Tiên Lãng, Hải Phòng", "Phường Đằng Giang, Quận Ngô Quyền, Hải Phòng"]
HAI_PHONG = "031"
STATION_ID = "VN-HP-0001"
READY_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 120.0
PRINT_TIMEOUT_S = 120.0
CHIP_VERIFY_TIMEOUT_S = 60.0
# --console: the demo's operator accounts (name, role, page language, display name)
CONSOLE_ACCOUNTS = (("demo", "officer", "vi", "Cán bộ demo"), ("kythuat", "engineer", "en", "Kỹ thuật viên demo"))
AUTO_FINGER_DELAY_S = 0.8  # the applicant's hand reaching the glass: the page shows "place finger" meanwhile
PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # none read as another
LIFTED_S = 86000  # "no finger" until the scanner asks again (the emulator's limit is a day)


@dataclass
class ApplicantResult:
    number: int
    applicant: dict[str, Any]
    session: str = ""
    record: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    portrait: dict[str, Any] = field(default_factory=dict)
    fingers: int = 0
    events: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the exported ANSI/NIST-ITL transaction
    print_job: str = ""
    card: str = ""  # DIR/cards/<record>: the printed card's sides and panels
    chip: dict[str, Any] = field(default_factory=dict)  # stationctl chip verify's verdict on its chip
    error: str = ""


def short_run_dir(workdir: Path) -> Path:
    """ipc:// paths are limited to about 100 bytes; fall back to /tmp for a deep workdir."""
    run = workdir / "run"
    if len(str(run)) + len("/controller.cmd") < 90:
        run.mkdir(parents=True, exist_ok=True)
        return run
    return Path(tempfile.mkdtemp(prefix="station-run-", dir="/tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(etc: Path, fingerprint_port: str, printer_port: str, chip: dict[str, Any] | None = None) -> None:
    """The demo's field overrides, written where a field engineer would put them; ``chip``
    is the controller's ``printing.chip`` (none: cards without a chip)."""
    (etc / "conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "fingerprint@fp0.yaml").write_text(yaml.safe_dump({"port": fingerprint_port}))
    (etc / "camera@cam0.yaml").write_text(yaml.safe_dump({"source": {"kind": "emulated"}}))
    (etc / "printer@printer0.yaml").write_text(yaml.safe_dump({"port": printer_port}))
    (etc / "conf.d" / "50-controller.instant-issuance.yaml").write_text(yaml.safe_dump(
        {"drivers": {"printer": ["printer0"]}, "printing": {"instant_issuance": True}}, allow_unicode=True))
    if chip is not None:
        (etc / "conf.d" / "50-controller.chip.yaml").write_text(yaml.safe_dump({"printing": {"chip": chip}}))


def make_applicant(rng: random.Random, number: int) -> dict[str, Any]:
    """A Hải Phòng applicant with a structurally valid id number; every fourth one has only
    a birth year on their old papers."""
    sex = rng.choice("FM")
    year = rng.randint(1950, 2008)
    born = str(year) if number % 4 == 0 else f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return {
        "full_name": f"{rng.choice(SURNAMES)} {rng.choice(GIVEN[sex])}",
        "date_of_birth": born,
        "sex": sex,
        "nationality": "VNM",
        "id_number": demographics.make_id_number(HAI_PHONG, sex, year, rng.randrange(1_000_000)),
        "place_of_origin": rng.choice(PLACES),
        "place_of_residence": rng.choice(PLACES),
        "ethnicity": "Kinh",
        "religion": "Không",
    }


class AutoFinger(threading.Thread):
    """The applicant at the scanner while an officer enrolls through the console: when the
    fingerprint daemon asks for a finger (its ``place_finger`` event), put that position's
    finger of the session's applicant on the emulated sensor (a new applicant for each
    session the controller starts); after the capture, lift it, so the next position is
    never imaged from the finger before."""

    def __init__(self, ctx: zmq.Context, paths: Paths, control: Path, seed: int, say: Any, scanner: str = "fp0",
                 controller: str = "controller"):
        super().__init__(name="demo-auto-finger", daemon=True)
        self.ctx, self.control, self.say = ctx, control, say
        self.endpoints = [paths.pub(scanner), paths.pub(controller)]
        self.topics = (f"fingerprint.{scanner}.", "station.enrollment.session.started")
        self.rng = random.Random(seed)
        self.applicant = self.rng.randrange(1 << 30)
        self.placed = 0
        self.error = ""
        self._stopping = threading.Event()
        self._subscribed = threading.Event()

    def start(self) -> None:
        super().start()
        self._subscribed.wait(5.0)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(5.0)

    def send(self, line: str) -> None:
        answer = send_command(self.control, line)
        if not answer.startswith("ok"):
            raise StationError(f"the fingerprint emulator refused {line!r}: {answer}", code="demo")

    def run(self) -> None:
        try:
            sub = Subscriber(self.ctx, self.endpoints, self.topics)
        except Exception as exc:  # noqa: BLE001 - told to the demo's wait loop
            self.error = repr(exc)
            self._subscribed.set()
            return
        try:
            self.send(f"nofinger {LIFTED_S}")  # nothing on the glass until the scanner asks
            self._subscribed.set()
            while not self._stopping.is_set():
                msg = sub.receive(timeout_ms=200)
                if msg is None:
                    continue
                if msg.topic.endswith(".session.started"):
                    self.applicant = self.rng.randrange(1 << 30)  # the next applicant's hands
                elif msg.event == "place_finger":
                    position = msg.get("position")
                    if not isinstance(position, int) or not 1 <= position <= 10:
                        continue
                    self.send(f"nofinger {LIFTED_S}")  # whatever was there is lifted first
                    if self._stopping.wait(AUTO_FINGER_DELAY_S):
                        break
                    self.send(f"finger {self.applicant} {position} quality=good")
                    self.send("nofinger 0")
                    self.placed += 1
                    self.say(f"  scanner    the applicant puts the {FINGER_NAMES[position]} (position {position}) "
                             "on the scanner")
                elif msg.event == "capture":
                    self.send(f"nofinger {LIFTED_S}")
        except (StationError, OSError) as exc:
            self.error = getattr(exc, "message", None) or repr(exc)
        finally:
            sub.close()
            self._subscribed.set()


class Demo:
    def __init__(self, workdir: Path, applicants: int, seed: int, collector: str = "", chip: bool = True,
                 console: bool = False, console_port: int = 0):
        self.workdir = workdir
        self.console = console  # also the web console; then the station runs until Ctrl-C or SIGTERM
        self.console_port = console_port or (_free_port() if console else 0)
        self.console_url = f"http://127.0.0.1:{self.console_port}/" if console else ""
        self.console_passwords: dict[str, str] = {}  # printed, never written to a file
        self.stopping = threading.Event()  # Ctrl-C or SIGTERM
        self.raise_on_signal = True  # a signal interrupts the demo's work; while it only waits, it ends the wait
        self.auto_finger: AutoFinger | None = None
        self.chip = chip  # cards with a chip: a pcscd for the encoder, a test PKI to sign them
        self.pcscd: Pcscd | None = None
        self.test_pki: pki.TestPki | None = None
        self.collector_url = collector  # nats://HOST:PORT: the gateway stores in JetStream there
        self.applicants = applicants
        self.rng = random.Random(seed)
        self.paths = Paths(etc=workdir / "etc", state=workdir / "state", run=short_run_dir(workdir))
        self.logs = workdir / "logs"
        self.processes: list[Program] = []
        self.ctx = zmq.Context()
        self.results: list[ApplicantResult] = []
        self.central_key: Path | None = None  # central's private key; the demo plays central too
        central = workdir / "central"
        self.central_paths = Paths(etc=central / "etc", state=central / "state",
                                   run=Path(tempfile.mkdtemp(prefix="central-run-", dir="/tmp")))
        self.delivery: dict[str, dict[str, Any]] = {}

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- processes --------------------------------------------------------------------------
    def env(self, paths: Paths | None = None) -> dict[str, str]:
        return program_env(paths or self.paths)

    def spawn(self, name: str, argv: list[str], reads_stdout: bool = False, paths: Paths | None = None) -> Program:
        log = self.logs / f"{name}.log"
        log.unlink(missing_ok=True)  # a --workdir used again: each log holds this run only
        process = Program(argv, self.env(paths), log, reads_stdout=reads_stdout).start()
        self.processes.append(process)
        return process

    def start_emulator(self) -> str:
        bindir = scripts_dir()
        link = self.workdir / "dev" / "fp0"
        link.parent.mkdir(parents=True, exist_ok=True)
        self.sensor_control = self.paths.run / "fp0-sensor.ctl"
        emulator = self.spawn("emulator", [str(bindir / "stationctl"), "emulate", "fingerprint", "--link", str(link),
                                           "--control", str(self.sensor_control)], reads_stdout=True)
        return emulator.first_line()

    def start_chip_encoder(self) -> None:
        """The printer's contactless encoder: a private pcscd with a virtual reader. Started
        before the station's daemons, so the controller (its PC/SC client) inherits the
        private socket's name; and the test PKI, as the issuing authority would hand over a
        Document Signer."""
        (self.workdir / "pcscd").mkdir(exist_ok=True)
        try:
            self.pcscd = Pcscd(self.workdir / "pcscd").start()
        except PcscdError as exc:
            raise StationError(f"{exc.message}\n(or run the demo with --no-chip: cards without a chip)",
                               code=exc.code) from None
        os.chmod(self.pcscd.log_path, 0o600)  # the reader's log is the station's business only
        self.say(f"  emulator   chip encoder: pcscd reader {self.pcscd.reader(0)!r} on port {self.pcscd.port(0)}")
        self.test_pki = pki.existing_test(self.paths.state / "pki") or pki.init_test(self.paths.state / "pki")
        self.say(f"  pki        the demo plays the issuing authority too: a TEST CSCA and Document Signer in "
                 f"{self.test_pki.directory} sign every chip (no reader outside this demo trusts them)")

    def chip_settings(self) -> dict[str, Any] | None:
        """The controller's ``printing.chip``: personalise through the virtual reader, sign with
        the test Document Signer, check the read-back chip against the test CSCA."""
        if self.pcscd is None or self.test_pki is None:
            return None
        return {"encoder": "pcsc", "reader": self.pcscd.reader(0),
                "document_signer": {"key": str(self.test_pki.ds_key), "certificate": str(self.test_pki.ds_cert)},
                "csca": str(self.test_pki.csca_cert)}

    def stop_chip_encoder(self) -> None:
        if self.pcscd is not None:
            self.pcscd.stop()

    def start_printer_emulator(self) -> str:
        link = self.workdir / "dev" / "printer0"
        self.printer_out = self.workdir / "printer-out"
        chip = ["--chip-port", str(self.pcscd.port(0))] if self.pcscd is not None else []
        emulator = self.spawn("printer-emulator", [str(scripts_dir() / "stationctl"), "emulate", "printer",
                                                   "--link", str(link), "--out", str(self.printer_out), *chip],
                              reads_stdout=True)
        return emulator.first_line()

    def place_finger(self, applicant_seed: int, position: int, quality: str = "good") -> None:
        """The applicant puts a finger on the glass (the emulator's control channel)."""
        answer = send_command(self.sensor_control, f"finger {applicant_seed} {position} quality={quality}")
        if not answer.startswith("ok"):
            raise StationError(f"fingerprint emulator refused the finger: {answer}")

    def start_daemons(self) -> None:
        bindir = scripts_dir()
        self.spawn("cam0", [str(bindir / "station-camerad"), "cam0"])
        self.spawn("fp0", [str(bindir / "station-fingerprintd"), "fp0"])
        self.spawn("printer0", [str(bindir / "station-printerd"), "printer0"])
        self.spawn("controller", [str(bindir / "station-controller")])
        self.spawn("uplink", [str(bindir / "station-uplink")])
        if self.console:
            self.spawn("console", [str(bindir / "station-console")])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        daemons = [("collector", self.central_paths), ("cam0", None), ("fp0", None), ("printer0", None),
                   ("controller", None), ("uplink", None)] + ([("console", None)] if self.console else [])
        for name, paths in daemons:
            client = CommandClient(self.ctx, (paths or self.paths).cmd(name), name=name)
            try:
                while True:
                    self.check_alive()
                    try:
                        if client.call("state", timeout_s=0.5).result["state"] == "ready":
                            break
                    except StationError:
                        pass
                    if time.monotonic() > deadline:
                        raise StationError(f"{name} not ready after {READY_TIMEOUT_S:.0f} s; see {self.logs}/{name}.log")
            finally:
                client.close()
            self.say(f"  {name:<10} ready")
        # The controller learns driver liveness from their event streams (heartbeats).
        with self.control() as control:
            while True:
                drivers = control.call("status").result["drivers"]
                if all(d["online"] for d in drivers.values()):
                    break
                if time.monotonic() > deadline:
                    raise StationError(f"controller does not see every driver online: {drivers}")
                time.sleep(0.2)

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive:
                raise StationError(f"{process.name} exited with status {process.returncode}:\n"
                                   f"{process.log_tail()}")

    # -- the console --------------------------------------------------------------------------
    def setup_console(self) -> None:
        """The console's config (its loopback port) and the demo's operator accounts, each with
        a random password, as ``stationctl console add-user`` would make them."""
        from station.console.accounts import Accounts
        from station.console.daemon import accounts_path

        (self.paths.etc / "console.yaml").write_text(yaml.safe_dump({"listen": {"port": self.console_port}}))
        accounts = Accounts(accounts_path(self.paths))
        for name, role, language, display_name in CONSOLE_ACCOUNTS:
            password = self.console_passwords[name] = "".join(secrets.choice(PASSWORD_ALPHABET)
                                                               for _ in range(12))
            accounts.add(name, password, role=role, language=language, display_name=display_name,
                         replace_existing=True)

    def serve_console(self) -> None:
        """Print where to sign in, then keep the station running until Ctrl-C or SIGTERM,
        playing the applicant at the scanner; a daemon that dies ends the demo, saying so."""
        self.auto_finger = AutoFinger(self.ctx, self.paths, self.sensor_control, self.rng.randrange(1 << 30), self.say)
        self.auto_finger.start()
        (officer, *_), (engineer, *_) = CONSOLE_ACCOUNTS
        self.say(f"console: {self.console_url}  sign in as {officer} / {self.console_passwords[officer]}  "
                 f"(officer, Vietnamese page)")
        self.say(f"         or as {engineer} / {self.console_passwords[engineer]}  (field engineer, English page)")
        self.say("  scanner    the demo plays the applicant: whenever the scanner asks for a finger (\"Quét ngón "
                 "tay\"), it puts that finger of the session's applicant on the emulated sensor and lifts it after "
                 f"the capture (sensor control channel: {self.sensor_control})")
        self.say(f"  cards      printed to {self.workdir / 'printer-out'}/; logs in {self.logs}/")
        self.say("the station keeps running; Ctrl-C (or SIGTERM) stops it")
        self.raise_on_signal = False
        if self.stopping.is_set():
            return
        while not self.stopping.wait(0.5):
            self.check_alive()
            if not self.auto_finger.is_alive():
                raise StationError(f"the demo stopped playing the applicant at the scanner: {self.auto_finger.error}")
        self.say("stopping the station")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping.set()
        if self.raise_on_signal:
            self.raise_on_signal = False  # once: a second Ctrl-C does not interrupt the clean-up
            raise KeyboardInterrupt

    def _handle_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def provision(self) -> None:
        """What a field engineer does once per station: central's public key (here a test
        pair in the work directory; central keeps its private key) and the station's keys;
        and what central does once per station: allow its key bundle at the collector."""
        self.central_key, central_pub = keyring.write_central_pair(self.workdir / "central")
        keyring.provision(self.paths.keys, STATION_ID, central_pub.read_bytes())
        self.say(f"  keys       station {STATION_ID} provisioned; records sealed to {central_pub}")
        port = _free_port()
        storage = {"backend": "embedded"} if not self.collector_url else \
            {"backend": "jetstream", "nats": [self.collector_url], "replicas": 1}
        self.central_paths.etc.mkdir(parents=True, exist_ok=True)
        (self.central_paths.etc / "collector.yaml").write_text(yaml.safe_dump(
            {"listen": [f"tcp://127.0.0.1:{port}"], "storage": storage}))
        server_key = self.collector_tool("init").split('server_key: "')[1].split('"')[0]
        self.collector_tool("allow", str(self.paths.keys / keyring.STATION_PUB))
        (self.paths.etc / "uplink.yaml").write_text(yaml.safe_dump({
            "collector": {"endpoints": [f"tcp://127.0.0.1:{port}"], "server_key": server_key},
            "confirm": {"after_s": 0, "every_s": 1.0}}))
        where = self.collector_url or "embedded storage"
        self.say(f"  central    collector on tcp://127.0.0.1:{port} ({where}), station {STATION_ID} allowed")

    def collector_tool(self, *args: str) -> str:
        done = subprocess.run([str(scripts_dir() / "station-collector"), *args], capture_output=True, text=True,
                              env=self.env(self.central_paths), timeout=120)
        if done.returncode != 0:
            raise StationError(f"station-collector {args[0]} failed: {done.stderr.strip()}", code="demo")
        return done.stdout

    def start_collector(self) -> None:
        self.spawn("collector", [str(scripts_dir() / "station-collector"), "serve"], paths=self.central_paths)

    def wait_delivered(self) -> None:
        """Until central has acknowledged and confirmed every record and every event."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        outbox = Outbox(self.paths.store, read_only=True)
        try:
            while True:
                self.check_alive()
                backlog = outbox.backlog()
                rows = {r.record_id: r for r in outbox.records()}
                if backlog.records == 0 and backlog.events == 0 and all(r.confirmed_ns for r in rows.values()):
                    break
                if time.monotonic() > deadline:
                    raise StationError(f"central has not confirmed everything after {DELIVERY_TIMEOUT_S:.0f} s: "
                                       f"{backlog.to_dict()}; see {self.logs}/uplink.log", code="not_delivered")
                time.sleep(0.3)
            for record_id, row in rows.items():
                self.delivery[record_id] = {"delivered": row.delivered_ns is not None,
                                            "confirmed": row.confirmed_ns is not None,
                                            "receipt": outbox.receipt(record_id)}
            self.say(f"  central    {len(rows)} record(s) and {backlog.last_seq} event(s) acknowledged and "
                     "confirmed")
        finally:
            outbox.close()

    def export(self, record_id: str) -> str:
        """Central's side: take the record from the collector's storage, open it with central's
        private key and write its ANSI/NIST-ITL transaction, as a central operator would."""
        out = self.workdir / "export" / f"{record_id}.an2"
        out.parent.mkdir(exist_ok=True)
        try:
            self.collector_tool("export", record_id, "--key", str(self.central_key), "--out", str(out))
        except StationError as exc:
            raise StationError(f"export of record {record_id} failed: {exc.message}", code="export_failed") from None
        return str(out)

    def control(self) -> closing[CommandClient]:
        return closing(CommandClient(self.ctx, self.paths.cmd("controller"), name="controller"))

    def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for process in reversed(self.processes):
            codes[process.name] = process.stop()
        return codes

    # -- the officer's work -----------------------------------------------------------------
    def enroll(self, number: int) -> ApplicantResult:
        """One applicant, as an officer would: portrait, then each finger of the policy.

        Every second applicant first puts the wrong finger down (the right thumb again for
        the right index) and the station must refuse it; every third has an amputated left
        little finger (declared exception XX) and a worn left index that never reaches the
        NFIQ 2 accept level (kept as force-captured after the policy's attempts).
        """
        result = ApplicantResult(number, make_applicant(self.rng, number))
        seed = self.rng.randrange(1 << 30)
        amputated = {10} if number % 3 == 0 else set()
        worn = {7} if number % 3 == 0 else set()
        with self.control() as control:
            def step(name: str, cmd: str, args: dict, timeout_s: float = 120.0) -> dict:
                started = time.monotonic()
                try:
                    return control.call(cmd, args, timeout_s=timeout_s).result
                finally:
                    result.timings_s[name] = round(time.monotonic() - started, 3)

            try:
                started = time.monotonic()
                reply = step("start", "session.start", {"applicant": result.applicant, "operator": "demo-officer"})
                result.session = session = reply["session"]
                result.portrait = step("portrait", "session.portrait", {"session": session})
                for position in reply["finger_positions"]:
                    if position in amputated:
                        step(f"finger_{position}", "session.exception",
                             {"session": session, "position": position, "reason": "XX"})
                        result.events.append(f"position {position}: declared amputated (XX)")
                        continue
                    if position == 2 and number % 2 == 0:
                        self.place_finger(seed, 1)  # the thumb again, by mistake
                        try:
                            step("finger_2_wrong", "session.finger", {"session": session, "position": 2})
                            raise StationError("the station accepted the same finger at two positions",
                                               code="duplicate_not_refused")
                        except StationError as exc:
                            if exc.code != "duplicate_finger":
                                raise
                            result.events.append(f"position 2 refused: {exc.message}")
                    self.place_finger(seed, position, "poor" if position in worn else "good")
                    finger = step(f"finger_{position}", "session.finger", {"session": session, "position": position})
                    result.fingers += 1
                    if finger["force_captured"]:
                        blank = finger["attempts"] - len(finger["attempt_nfiq2"])
                        result.events.append(f"position {position}: force-captured after {finger['attempts']} "
                                             f"attempts (NFIQ 2 {finger['attempt_nfiq2']}"
                                             f"{f', {blank} without a print' if blank else ''})")
                if amputated:
                    photo = step("exception_photo", "session.exception_photo", {"session": session})
                    result.events.append(f"exception photo taken (score {photo['score']})")
                review = step("review", "session.get", {"session": session})
                if review["step"] != "review":
                    raise StationError(f"session not ready for review: {review['step']}", code="demo")
                done = step("finish", "session.finish", {"session": session})
                result.record = done["record"]
                result.print_job = done.get("print_job", "")
                result.timings_s["total"] = round(time.monotonic() - started, 3)
            except StationError as exc:
                result.error = f"{exc.code}: {exc.message}"
        return result

    def run(self) -> int:
        for directory in (self.paths.etc, self.paths.state, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        then = f", then the console on {self.console_url}" if self.console else ""
        self.say(f"station demo: {self.applicants} applicant(s){then}, work directory {self.workdir}")
        lost: list[str] = []
        codes: dict[str, int | None] = {}
        handlers = self._handle_signals()
        try:
            self.provision()
            self.start_collector()
            port = self.start_emulator()
            self.say(f"  emulator   fingerprint sensor on {port}")
            if self.chip:
                self.start_chip_encoder()
            printer = self.start_printer_emulator()
            self.say(f"  emulator   card printer on {printer}{' (cards with a chip)' if self.pcscd else ''}")
            write_config(self.paths.etc, port, printer, self.chip_settings())
            if self.console:
                self.setup_console()
            self.start_daemons()
            self.wait_ready()
            for number in range(1, self.applicants + 1):
                result = self.enroll(number)
                self.results.append(result)
                self.report(result)
            if self.results:
                self.wait_printed()
                if self.chip:
                    self.verify_chips()
                self.wait_delivered()
                for result in self.results:
                    if result.record:
                        result.files = [self.export(result.record)]
            if self.console:
                self.serve_console()
        except StationError as exc:
            self.say(f"demo failed: {exc.message}")
            lost.append(exc.message)
        except KeyboardInterrupt:
            self.say("demo interrupted: stopping the station")
            lost.append("the demo was interrupted before it finished")
        finally:
            self.raise_on_signal = False
            if self.auto_finger is not None:
                self.auto_finger.stop()
            codes = self.stop_all()
            self.stop_chip_encoder()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        lost += self.verify(codes)
        self.write_summary(lost, codes)
        ok = not lost
        self.say(f"{'OK' if ok else 'FAILED'}: {sum(1 for r in self.results if r.record)}/{self.applicants} "
                 f"records committed; summary in {self.workdir / 'summary.json'}")
        for problem in lost:
            self.say(f"  problem: {problem}")
        if any(r.files for r in self.results):
            self.say(f"  records exported from central as ANSI/NIST-ITL to {self.workdir / 'export'}/; export one "
                     f"again as central would: STATION_STATE={self.central_paths.state} "
                     f"STATION_ETC={self.central_paths.etc} station-collector export RECORD --key {self.central_key} "
                     "--out FILE.an2")
        return 0 if ok else 1

    def wait_printed(self) -> None:
        """Every committed record's card printed (the controller's print queue), then each
        card's sides and panels put under DIR/cards/<record id>/."""
        waiting = {r.print_job: r for r in self.results if r.print_job}
        deadline = time.monotonic() + PRINT_TIMEOUT_S
        with self.control() as control:
            while True:
                jobs = {j["job"]: j for j in control.call("print.status").result["jobs"] if j["job"] in waiting}
                ended = {k: j for k, j in jobs.items() if j["state"] in ("done", "rejected", "cancelled")}
                if len(ended) == len(waiting):
                    break
                if time.monotonic() > deadline:
                    raise StationError(f"cards not printed within {PRINT_TIMEOUT_S:.0f} s: "
                                       f"{[j for j in jobs.values() if j not in ended.values()]}")
                self.check_alive()
                time.sleep(0.2)
        printed = sorted(self.printer_out.glob("card-*")) if self.printer_out.exists() else []
        done = [waiting[k] for k, j in sorted(ended.items(), key=lambda kv: kv[1]["updated_ns"]) if j["state"] == "done"]
        for r in waiting.values():
            if ended[r.print_job]["state"] != "done":
                r.events.append(f"card not printed: {ended[r.print_job]['reason']}")
        # With no faults every job prints on its first card: the printer's cards, in order.
        for r, card_dir in zip(done, printed[-len(done):] if done else []):
            target = self.workdir / "cards" / r.record
            shutil.copytree(card_dir, target, dirs_exist_ok=True)
            r.card = str(target)
            r.events.append(f"card printed: {target.relative_to(self.workdir)}/front.png, back.png")
            chip = self.printer_out / "chips" / card_dir.name  # written as the card left the encoder
            if chip.is_dir():
                shutil.copytree(chip, target / "chip", dirs_exist_ok=True)
        self.say(f"  {sum(1 for r in self.results if r.card)} card(s) printed to {self.workdir / 'cards'}/")

    def verify_chips(self) -> None:
        """Each printed card's chip checked as anyone holding the card would: ``stationctl chip
        verify`` on its files, against the CSCA (passive authentication)."""
        assert self.test_pki is not None
        for r in self.results:
            if not r.card:
                continue
            path = Path(r.card) / "chip"
            if not path.is_dir():
                self.say(f"  chip       record {r.record[:12]}…: NO CHIP FILES "
                         f"(see {self.logs}/printer-emulator.log)")
                continue
            r.chip = self.chip_verdict(path)
            shown = path.relative_to(self.workdir)
            if r.chip["valid"]:
                chain = "chain to the test CSCA checked" if r.chip["chain_checked"] else "chain NOT checked"
                r.events.append(f"chip verified: {shown} ({chain})")
                self.say(f"  chip       record {r.record[:12]}…: valid ({' '.join(r.chip['files'])}), {chain}: "
                         f"{shown}/")
            else:
                self.say(f"  chip       record {r.record[:12]}…: DOES NOT VERIFY: {r.chip['verdict']} ({shown}/)")

    def chip_verdict(self, path: Path) -> dict[str, Any]:
        """``stationctl chip verify PATH --csca CSCA``'s verdict: valid only when it exits 0."""
        assert self.test_pki is not None
        argv = [str(scripts_dir() / "stationctl"), "chip", "verify", str(path), "--csca",
                str(self.test_pki.csca_cert), "--json"]
        verdict: dict[str, Any] = {"path": str(path), "valid": False, "chain_checked": False, "files": []}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=CHIP_VERIFY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {**verdict, "verdict": f"stationctl chip verify gave no answer in {CHIP_VERIFY_TIMEOUT_S:.0f} s"}
        try:
            report = json.loads(done.stdout)
        except json.JSONDecodeError:  # it could not read the files: the reason is on stderr
            return {**verdict, "verdict": done.stderr.strip() or f"stationctl chip verify exited {done.returncode}"}
        failed = [f"{check['check']}: {check['message']}" for check in report["checks"] if check["status"] == "fail"]
        return {**verdict, "valid": done.returncode == 0 and report["valid"] is True,
                "chain_checked": report["chain_checked"], "files": report["files"],
                "verdict": "; ".join([report["verdict"], *failed])}

    def report(self, r: ApplicantResult) -> None:
        name = r.applicant["full_name"]
        if r.error:
            self.say(f"  applicant {r.number}/{self.applicants} {name}: FAILED {r.error}")
            return
        score = r.portrait.get("score")
        self.say(f"  applicant {r.number}/{self.applicants} {name}: portrait score {score}"
                 f"{' (forced)' if r.portrait.get('forced') else ''}, {r.fingers} fingers, "
                 f"record {r.record[:12]}… committed in {r.timings_s.get('total', 0):.1f} s")
        for event in r.events:
            self.say(f"      {event}")

    def verify(self, codes: dict[str, int | None]) -> list[str]:
        """Check, from the store itself, that every applicant's record is there and intact."""
        problems = [f"applicant {r.number}: {r.error}" for r in self.results if r.error]
        if len(self.results) < self.applicants:
            problems.append(f"only {len(self.results)} of {self.applicants} applicants were enrolled")
        if (self.paths.store / "store.db").exists():
            store = RecordStore.reader(self.paths.store)
            for r in self.results:
                if r.record:
                    if not self.delivery.get(r.record, {}).get("confirmed"):
                        problems.append(f"record {r.record} was not confirmed by central")
                        problems += store.verify(r.record)  # then it must still be here, intact
                    if not r.files or not all(Path(f).is_file() for f in r.files):
                        problems.append(f"record {r.record} was not exported from central")
                    if not r.card or not (Path(r.card) / "front.png").is_file() or \
                            not (Path(r.card) / "back.png").is_file():
                        problems.append(f"record {r.record}: no printed card")
                    elif self.test_pki is not None and not r.chip:
                        problems.append(f"record {r.record}: its card's chip was not written out (see "
                                        f"{self.logs}/printer-emulator.log)")
                    elif r.chip and not r.chip["valid"]:
                        problems.append(f"record {r.record}: its chip does not verify: {r.chip['verdict']} "
                                        f"(stationctl chip verify {r.chip['path']} --csca {self.test_pki.csca_cert})")
            store.close()
        problems += [f"{name} exited with status {code} (see {self.logs}/{name}.log)"
                     for name, code in codes.items() if code not in (0, None)]
        return problems

    def write_summary(self, problems: list[str], codes: dict[str, int | None]) -> None:
        summary = {
            "applicants": self.applicants,
            "committed": sum(1 for r in self.results if r.record),
            "lost": len(problems),
            "problems": problems,
            "station": STATION_ID,
            "delivered": sum(1 for r in self.results if self.delivery.get(r.record, {}).get("delivered")),
            "confirmed": sum(1 for r in self.results if self.delivery.get(r.record, {}).get("confirmed")),
            "collector": self.collector_url or "embedded",
            "paths": {"etc": str(self.paths.etc), "state": str(self.paths.state), "run": str(self.paths.run),
                      "central_etc": str(self.central_paths.etc), "central_state": str(self.central_paths.state),
                      "central_key": str(self.central_key or ""),
                      "logs": {p.name: str(p.log_path) for p in self.processes}},
            "exports": [f for r in self.results for f in r.files],
            "cards": sum(1 for r in self.results if r.card),
            "chips_verified": sum(1 for r in self.results if r.chip.get("valid")),
            "csca": str(self.test_pki.csca_cert) if self.test_pki else None,
            "exit_codes": codes,
            "console": {"url": self.console_url, "accounts": [a[0] for a in CONSOLE_ACCOUNTS],
                        "fingers_placed": self.auto_finger.placed if self.auto_finger else 0} if self.console else None,
            "results": [
                {"applicant": r.number, "session": r.session, "record": r.record, "error": r.error,
                 "portrait": {k: r.portrait.get(k) for k in ("score", "passed", "forced")}, "fingers": r.fingers,
                 "events": r.events, "timings_s": r.timings_s, "export": r.files[0] if r.files else None,
                 "print_job": r.print_job or None, "card": r.card or None,
                 "chip": {k: r.chip[k] for k in ("path", "valid", "chain_checked")} if r.chip else None,
                 "delivery": self.delivery.get(r.record, {"delivered": False, "confirmed": False})}
                for r in self.results
            ],
        }
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="station demo", description=__doc__.splitlines()[0])
    parser.add_argument("--applicants", type=int, help="how many applicants to enroll (default 3; with "
                                                       "--console 0: it only waits for the officer)")
    parser.add_argument("--workdir", type=Path, help="where to put config, state, sockets and logs "
                                                      "(default: a new directory under /tmp)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the demo applicants")
    parser.add_argument("--collector", default="", metavar="nats://HOST:PORT",
                        help="central's collector stores in NATS JetStream at this server (default: embedded)")
    parser.add_argument("--no-chip", action="store_true",
                        help="cards without a chip (no pcscd; the chip needs pcscd, vsmartcard-vpcd and root)")
    parser.add_argument("--console", action="store_true",
                        help="also start the web console, print its URL and a demo officer's sign-in, and keep the "
                             "station running until Ctrl-C (after enrolling --applicants automatically)")
    parser.add_argument("--console-port", type=int, default=0, metavar="PORT",
                        help="the console's loopback port (default: a free one, printed)")
    args = parser.parse_args(argv)
    if args.applicants is None:
        args.applicants = 0 if args.console else 3
    if args.applicants < (0 if args.console else 1):
        parser.error("--applicants must be at least 1 (0 only with --console)")
    if args.console_port and not (args.console and 1 <= args.console_port <= 65535):
        parser.error("--console-port takes a port 1..65535 and needs --console")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="station-demo-", dir="/tmp"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.collector and not args.collector.startswith("nats://"):
        parser.error("--collector takes a nats://HOST:PORT URL")
    return Demo(workdir, args.applicants, args.seed, args.collector, chip=not args.no_chip, console=args.console,
                console_port=args.console_port).run()
