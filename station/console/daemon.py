"""``station-console``: the officer's and field engineer's web UI, as a station daemon.

The daemon runtime (instance lock, config, sd_notify, watchdog, its own ``console.cmd`` and
``console.pub``) runs on the main thread as for every daemon; the web side (aiohttp, and the
``zmq.asyncio`` bridge to the controller, drivers and uplink) runs on an asyncio loop in one
thread of its own. The loop beats once a second; a loop that stops beating stops the
watchdog, and systemd restarts the console (the enrollment sessions live in the
controller, so nothing is lost but the sign-ins).
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Sequence

import zmq.asyncio
from aiohttp import web

from station import config
from station.console.accounts import Accounts
from station.console.bridge import Bridge
from station.console.web import Console
from station.daemon import Daemon, main_for
from station.errors import StationError
from station.paths import Paths

BEAT_S = 1.0
STUCK_S = 5.0
START_TIMEOUT_S = 15.0


def accounts_path(paths: Paths) -> Any:
    return paths.state / "console" / "accounts.json"


class ConsoleDaemon(Daemon):
    kind = "console"
    section = "console"

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        super().__init__(name, paths, overrides)
        self.web = Console(self.config, Accounts(accounts_path(paths)), paths.etc)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.beat = time.monotonic()
        self.url = f"http://{_host(self.config['listen']['host'])}:{self.config['listen']['port']}/"
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._runner: web.AppRunner | None = None

    def load_config(self) -> dict[str, Any]:
        return config.load("console", None, self.paths.etc, self.overrides)

    # -- the web thread ---------------------------------------------------------------------
    def setup(self) -> None:
        self.thread = threading.Thread(target=self._serve, name="console-web", daemon=True)
        self.thread.start()
        if not self._started.wait(START_TIMEOUT_S) or self._start_error is not None:
            why = self._start_error or "it did not start in time"
            raise StationError(f"cannot serve {self.url}: {why}", code="config_invalid")
        self.set_state("ready", self.url)

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # told to the main thread, which exits with it
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        actx = zmq.asyncio.Context.shadow(self.ctx)
        self.web.bridge = Bridge(actx, self.paths, self.config, self.web)
        await self.web.bridge.start()
        self._runner = web.AppRunner(self.web.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        listen = self.config["listen"]
        await web.TCPSite(self._runner, listen["host"], listen["port"], reuse_address=True).start()
        if listen["unix_socket"]:
            await web.UnixSite(self._runner, listen["unix_socket"]).start()
            os.chmod(listen["unix_socket"], 0o660)  # the station group (operators), like the bus's sockets
        asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            self.beat = time.monotonic()
            self.web.expire_idle(self.beat)
            await asyncio.sleep(BEAT_S)

    async def _stop(self) -> None:
        if self.web.bridge is not None:
            await self.web.bridge.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- daemon hooks -----------------------------------------------------------------------
    def healthy(self) -> bool:
        return time.monotonic() - self.beat < STUCK_S

    def tick(self, now: float) -> None:
        if self.thread is not None and not self.thread.is_alive():
            self.log.error("the web thread ended; stopping so that systemd restarts the console")
            self.request_stop()

    def apply_config(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        moved = [k for k in ("listen", "controller", "uplink") if new[k] != old[k]]
        if moved:
            raise StationError(f"changing {', '.join(moved)} needs a restart of the console "
                               "(systemctl restart station-console)", code="config_invalid")
        self.config = new
        self.web.settings = new
        if self.web.bridge is not None:
            self.web.bridge.settings = new

    def status_fields(self) -> dict[str, Any]:
        bridge = self.web.bridge
        return {"url": self.url, "signed_in": sorted(s.account["user"] for s in list(self.web.sign_ins.values())),
                "pages": sum(len(s.pages) for s in list(self.web.sign_ins.values())),
                "preview_viewers": len(self.web.viewers),
                "preview_sent": sum(v.sent for v in list(self.web.viewers)),
                "preview_replaced": sum(v.replaced for v in list(self.web.viewers)),  # newest won
                "frames_relayed": bridge.frames_relayed if bridge else 0}

    def shutdown(self) -> None:
        if self.loop is not None and self.thread is not None and self.thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5.0)
            except Exception as exc:  # stopping anyway; say why it was not clean
                self.log.warning("console web side did not stop cleanly: %r", exc)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5.0)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(ConsoleDaemon, "station-console", "Station console: the officer's web UI on loopback", argv,
                    instance=False, default_name="console")
