"""A whole station for the console's tests: the fingerprint sensor emulator, the camera on
its emulated source, the controller and the console, really started; and Debian's Chromium
driven by Playwright (``executable_path``: nothing is downloaded)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import yaml
import zmq

from station import keyring
from station.console.accounts import Accounts
from station.console.daemon import accounts_path
from station.paths import Paths
from delivery_harness import free_port
from station_harness import BIN, Station

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OFFICER, OFFICER_PASSWORD = "canbo1", "mat-khau-cua-canbo"
ENGINEER, ENGINEER_PASSWORD = "kythuat", "mat-khau-ky-thuat"
POLICY = {"finger_positions": [1, 2, 7], "portrait_required": True, "exception_photo_required": True,
          "attempts": 2}
ARTIFACTS = Path(os.environ.get("STATION_TEST_ARTIFACTS", "test-artifacts")) / "console"


class ConsoleStation(Station):
    """The test station plus the console, its URL and its accounts."""

    def __init__(self, env: dict, root: Path, ctx: zmq.Context, port: int):
        super().__init__(env, root, ctx, policy=POLICY, camera=True, controller={"store": {"fsync": False}})
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        (self.paths.etc / "console.yaml").write_text(yaml.safe_dump(
            {"listen": {"port": port, "unix_socket": str(self.paths.run / "console.http")},
             "sign_in": {"max_failures": 3, "lockout_s": 60}}))
        accounts = Accounts(accounts_path(self.paths))
        accounts.add(OFFICER, OFFICER_PASSWORD, role="officer", language="vi", display_name="Cán bộ Một")
        accounts.add(ENGINEER, ENGINEER_PASSWORD, role="engineer", language="en", display_name="Kỹ thuật viên")

    def start_console(self) -> subprocess.Popen:
        with open(self.log("console"), "ab") as log:
            self.procs["console"] = subprocess.Popen([str(BIN / "station-console")], env=self.env, stderr=log)
        self.wait_for(self._console_up, 30)
        return self.procs["console"]

    def _console_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def console_station() -> Iterator[ConsoleStation]:
    """One station per test module (starting the devices takes seconds)."""
    root = Path(tempfile.mkdtemp(prefix="console-"))
    run = Path(tempfile.mkdtemp(prefix="st-", dir="/tmp"))
    etc, state = root / "etc", root / "state"
    etc.mkdir()
    state.mkdir()
    saved = {k: os.environ.get(k) for k in ("STATION_ETC", "STATION_STATE", "STATION_RUN")}
    os.environ.update(STATION_ETC=str(etc), STATION_STATE=str(state), STATION_RUN=str(run))
    central_key, central_pub = keyring.write_central_pair(root / "central")
    keyring.provision(state / "keys", "VN-HP-0001", central_pub.read_bytes())
    ctx = zmq.Context()
    station = ConsoleStation(dict(os.environ), state, ctx, free_port())
    try:
        for name in ("fp0", "cam0", "controller"):
            station.start(name)
        station.wait_for(lambda: station.online("fp0", "cam0"), 60)
        station.start_console()
        yield station
    finally:
        station.stop()
        ctx.destroy(linger=0)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in state.glob("*.log"):  # the daemons' logs, beside the screenshots
            shutil.copy(log, ARTIFACTS / log.name)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context (no cookies) per test; a screenshot of the end state is kept."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="vi-VN")
    page = context.new_page()
    page.set_default_timeout(20_000)
    said: list[str] = []
    page.on("console", lambda message: said.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: said.append(f"page error: {error}"))
    page.ws_text = []  # every text frame the console sent this page over its WebSockets

    def watch(socket):
        socket.on("framereceived", lambda payload: page.ws_text.append(payload) if isinstance(payload, str) else None)
    page.on("websocket", watch)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{request.node.name}-browser.log").write_text("\n".join(said) + "\n")
    try:
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"))
    finally:
        context.close()


def shot(page, name: str) -> Path:
    """A screenshot of one step into the test artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, station: ConsoleStation, user: str = OFFICER, password: str = OFFICER_PASSWORD) -> None:
    page.goto(station.url)
    page.fill("#sign-in-user", user)
    page.fill("#sign-in-password", password)
    page.press("#sign-in-password", "Enter")


__all__ = ["ConsoleStation", "OFFICER", "OFFICER_PASSWORD", "ENGINEER", "ENGINEER_PASSWORD", "shot", "sign_in",
           "Paths"]
