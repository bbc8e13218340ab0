"""The runtime every station process shares: paths, logging, config, signals, sd_notify,
the event publisher and command server, and one main loop.

A daemon subclasses ``Daemon`` and fills in a few hooks (Klipper-style: read options once,
expose ``status_fields()`` for late joiners):

- ``setup()``: open the device; call ``set_state("ready")`` once it is identified, which
  sends ``READY=1`` the first time;
- ``tick(now)``: periodic work from the main loop (keep it short: commands wait on it);
- ``healthy()``: False stops ``WATCHDOG=1``, so systemd restarts a wedged process;
- ``apply_config(new, old)``: apply a reloaded config live, or raise ``StationError`` to
  reject it (the old config stays);
- ``shutdown()``: release the device.

SIGTERM and SIGINT stop the loop (within a poll period, far inside 2 s); SIGHUP reloads.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Sequence

import zmq

from station import config, locks, logs, peers
from station.bus import HEARTBEAT_S, MAX_REQUEST_BYTES, CommandServer, Publisher, Request
from station.envelope import new_boot_id
from station.errors import ConfigError, StationError
from station.paths import Paths
from station.peers import ZapHandler
from station.sdnotify import Notifier
from station.worker import Worker

EX_CONFIG = 78  # sysexits: configuration error; units use RestartPreventExitStatus=78
POLL_MS = 50


class Daemon:
    kind: str = "station"
    section: str = ""
    #: the largest request the command socket takes (a printer's card sides are megabytes)
    max_request_bytes: int = MAX_REQUEST_BYTES

    def __init__(self, name: str, paths: Paths, overrides: Sequence[str] = ()):
        self.name = name
        self.paths = paths
        self.overrides = list(overrides)
        self.log = logging.getLogger(f"{self.kind}.{name}")
        self.config: dict[str, Any] = self.load_config()
        self.check_config(self.config)  # before the lock and any socket: a bad config touches nothing
        # Before any socket: a second copy started by mistake must not take over the first's
        # socket paths (binding an ipc path replaces it for every new peer).
        self._instance_lock = locks.hold(paths.run / f"{name}.lock",
                                         f"instance {name!r} of {self.kind} in {paths.run}")
        self.boot = new_boot_id()
        self.ctx = zmq.Context()
        self.notifier = Notifier()
        self.state = "starting"
        self.detail = ""
        self._ready_sent = False
        self._stop_requested = False
        self._reload_requested = False
        self._last_watchdog = 0.0
        self._loop_errors = 0
        self.publishers: list[Publisher] = []
        self.zap = ZapHandler(self.ctx)  # before any socket that asks it
        self.events = self.add_publisher(paths.pub(name))
        self.commands = CommandServer(self.ctx, paths.cmd(name), name=f"{self.kind}.{name}",
                                      max_bytes=self.max_request_bytes, zap_domain=peers.COMMANDS)
        self.commands.register("state", self._cmd_state)
        self.commands.register("ping", lambda request: {"pong": True, "boot": self.boot})
        self.commands.register("reload", self._cmd_reload)
        self._readers: dict[Any, Callable[[], None]] = {}
        self._poller = zmq.Poller()
        self.add_reader(self.zap.socket, self.zap.handle_ready)
        self.add_reader(self.commands.socket, self.commands.handle_ready)

    # -- plumbing for subclasses ------------------------------------------------------------
    def load_config(self) -> dict[str, Any]:
        return config.load(self.section or self.kind, self.name, self.paths.etc, self.overrides)

    def add_publisher(self, endpoint: str, hwm: int = 1000, heartbeat_event: str = "heartbeat",
                      watch_subscribers: bool = False) -> Publisher:
        publisher = Publisher(
            self.ctx, endpoint, kind=self.kind, src=self.name, boot=self.boot, hwm=hwm,
            heartbeat_s=self.heartbeat_s(),
            heartbeat_fields=lambda: {"state": self.state}, heartbeat_event=heartbeat_event,
            watch_subscribers=watch_subscribers,
        )
        self.publishers.append(publisher)
        if watch_subscribers:
            self.add_reader(publisher.socket, publisher.handle_subscriptions)
        return publisher

    def check_config(self, config: dict[str, Any]) -> None:
        """What the schema cannot say (a device that must be named); raise ``ConfigError``."""

    def heartbeat_s(self) -> float:
        return float(self.config.get("heartbeat_s", HEARTBEAT_S))

    def add_worker(self, name: str) -> Worker:
        """A worker thread whose finished jobs wake the main loop."""
        worker = Worker(name)
        self.add_reader(worker.wake_fd, worker.drain)
        return worker

    def add_reader(self, socket: Any, callback: Callable[[], None]) -> None:
        self._readers[socket] = callback
        self._poller.register(socket, zmq.POLLIN)

    def serve_waiting_commands(self) -> bool:
        """Serve the commands already waiting, from inside ``tick``: for a loop that blocks
        on its device, so a command that came meanwhile acts on what the device just gave.
        True when there were any."""
        if not self.commands.socket.poll(0):
            return False
        self.commands.handle_ready()
        return True

    def remove_reader(self, socket: Any) -> None:
        self._readers.pop(socket, None)
        self._poller.unregister(socket)

    def set_state(self, state: str, detail: str = "") -> None:
        """Publish a device state change (ready, busy, offline, error) and tell systemd."""
        if (state, detail) == (self.state, self.detail):
            return
        self.state, self.detail = state, detail
        self.events.publish("status", {"state": state, "detail": detail})
        text = f"{state}: {detail}" if detail else state
        if state == "ready" and not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(text)
            self.log.info("ready: %s", detail or "device identified")
        else:
            self.notifier.status(text)

    def snapshot(self) -> dict[str, Any]:
        seq: dict[str, int] = {}
        for publisher in self.publishers:
            seq.update(publisher.snapshot())
        return {
            "kind": self.kind, "name": self.name, "boot": self.boot, "state": self.state,
            "detail": self.detail, "config": self.config, "seq": seq, "status": self.status_fields(),
        }

    # -- hooks ------------------------------------------------------------------------------
    def setup(self) -> None:
        self.set_state("ready")

    def tick(self, now: float) -> None:
        pass

    def healthy(self) -> bool:
        return True

    def poll_timeout_ms(self) -> int:
        """How long the loop may sleep waiting for commands; 0 when ``tick`` paces itself
        (a camera's frame read blocks until the next frame)."""
        return POLL_MS

    def apply_config(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        self.config = new

    def status_fields(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None:
        pass

    # -- main loop --------------------------------------------------------------------------
    def _cmd_state(self, request: Request) -> dict:
        return self.snapshot()

    def _cmd_reload(self, request: Request) -> dict:
        """SIGHUP over the bus, for the console's engineer page: the config applied, or
        rejected with every problem (the running one stays)."""
        problems = self.reload()
        return {"applied": not problems, "problems": problems}

    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    def request_reload(self, *_: Any) -> None:
        self._reload_requested = True

    def reload(self) -> list[str]:
        """Load the config again; apply it if valid, else keep the old and say why (the
        problems returned; none when it applied)."""
        self.notifier.reloading()
        try:
            new = self.load_config()
            if new != self.config:
                old = self.config
                self.apply_config(new, old)
                self.config = new
        except StationError as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [exc.message]
            self.log.error("configuration rejected, keeping the running one:\n  %s", "\n  ".join(problems))
            self.events.publish("config.rejected", {"problems": problems})
        else:
            problems = []
            self.log.info("configuration reloaded")
            self.events.publish("config.applied", {})
        self.notifier.send("READY=1", f"STATUS={self.state}")
        return problems

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        try:
            self.setup()
            while not self._stop_requested:
                try:
                    self._iterate()
                    self._loop_errors = 0
                except (zmq.ContextTerminated, KeyboardInterrupt):
                    raise
                except Exception:
                    # Logged, never fatal; but a loop that keeps failing stops feeding the
                    # watchdog, and systemd restarts the process.
                    self._loop_errors += 1
                    if self._loop_errors == 1 or self._loop_errors % 100 == 0:
                        self.log.exception("main loop failed (%d in a row)", self._loop_errors)
                    time.sleep(POLL_MS / 1000)
        finally:
            self.notifier.stopping()
            for request in self.commands.pending():  # a waiting caller gets an answer, not silence
                request.fail(StationError(f"{self.kind}.{self.name} is stopping", code="stopping", retryable=True))
            try:
                self.shutdown()
            finally:
                for publisher in self.publishers:
                    publisher.close()
                self.commands.close()
                self.zap.close()
                self.ctx.term()
                os.close(self._instance_lock)
                self.log.info("stopped")
        return 0

    def _iterate(self) -> None:
        for socket, _ in self._poller.poll(self.poll_timeout_ms()):
            callback = self._readers.get(socket)  # an earlier callback may have removed it
            if callback is not None:
                callback()
        now = time.monotonic()
        self.tick(now)
        self.commands.expire()
        for publisher in self.publishers:
            publisher.tick(now)
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        self._feed_watchdog(now)

    def _feed_watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None or now - self._last_watchdog < interval:
            return
        if self._loop_errors == 0 and self.healthy():
            self.notifier.watchdog()
            self._last_watchdog = now


def arg_parser(program: str, description: str, *, instance: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program, description=description)
    if instance:
        parser.add_argument("name", help="instance name, e.g. cam0 (names its sockets and config file)")
    parser.add_argument("--etc", help="config directory (default $STATION_ETC or /etc/station)")
    parser.add_argument("--state", help="state directory (default $STATION_STATE or /var/lib/station)")
    parser.add_argument("--run", help="runtime/socket directory (default $STATION_RUN or /run/station)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set source.fps=15 (repeatable)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main_for(cls: type[Daemon], program: str, description: str, argv: Sequence[str] | None = None,
             *, instance: bool = True, default_name: str = "") -> int:
    """Parse the common flags, build the daemon and run it, turning start-up errors into
    one clear message and a sysexits status instead of a traceback."""
    args = arg_parser(program, description, instance=instance).parse_args(argv)
    logs.setup(args.log_level)
    paths = Paths.resolve(args.etc, args.state, args.run)
    name = args.name if instance else default_name
    try:
        daemon = cls(name, paths, args.set)
    except ConfigError as exc:
        print(f"{program} {name}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    except StationError as exc:
        print(f"{program} {name}: {exc.message}", file=sys.stderr)
        return exc.exit_status
    return daemon.run()
