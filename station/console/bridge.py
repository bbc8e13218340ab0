"""The console's side of the station bus, on asyncio: commands to the controller, the
drivers' and controller's events, the camera preview, the uplink's backlog.

Everything here runs on the console's event loop (``zmq.asyncio`` sockets on a shadow of
the daemon's context, so the ZAP handler that checks peers is the daemon's own). What the
pages need is pushed to them through ``Bridge.pages`` (``Pages`` in ``web.py``):

- ``status``: devices, the uplink's backlog, free disk, banners; at once when a device
  changes (a scanner unplugged shows within the driver's own loss detection, well under
  3 s), else every ``status_every_s``;
- ``event``: the controller's journal events (no demographics, no images: the envelope
  contract) and the drivers' progress events (place finger, upload progress, capture);
- preview frames to each viewer, newest first (``preview.py``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import zmq
import zmq.asyncio

from station.bus import FRAME_HWM, Reply, Subscriber, reply_header, reply_outcome, request_header
from station import peers
from station.console import banners
from station.envelope import Message, dump_json
from station.errors import DeadlineExceeded, StationError
from station.paths import Paths

log = logging.getLogger("station.console.bridge")

RETRY_S = 1.0
#: driver events a page shows as they happen (the finger diagram, the printer's card)
DEVICE_EVENTS = {"place_finger", "progress", "capture", "card"}
#: controller journal topics a page follows
CONTROLLER_TOPICS = ("station.enrollment.", "station.print.", "station.drivers.")


class AsyncCommands:
    """A DEALER to one daemon's command socket; many requests in flight, matched by ``corr``."""

    def __init__(self, actx: zmq.asyncio.Context, endpoint: str, name: str):
        self.name = name
        self.socket = actx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.pending: dict[str, asyncio.Future] = {}
        self.stale_replies = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            reply = reply_header(frames[0])
            corr = reply.get("corr") if reply is not None else None
            future = self.pending.pop(corr, None) if isinstance(corr, str) else None
            if future is None or future.done():
                self.stale_replies += 1  # one we gave up on
                continue
            future.set_result((reply, frames[1:]))

    async def call(self, cmd: str, args: dict | None = None, *, timeout_s: float = 5.0) -> Reply:
        header = request_header(cmd, args, timeout_s)
        future = asyncio.get_running_loop().create_future()
        self.pending[header["corr"]] = future
        try:
            await self.socket.send_multipart([dump_json(header)])
            reply, frames = await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no reply from {self.name} to '{cmd}' within {timeout_s:g} s") from None
        finally:
            self.pending.pop(header["corr"], None)
        return reply_outcome(self.name, cmd, reply, frames)

    def close(self) -> None:
        self._reader.cancel()
        self.socket.close(linger=0)


class Pages(Protocol):
    """Where the bridge pushes what the pages show (``web.Pages``)."""

    def broadcast(self, message: dict[str, Any]) -> None: ...

    def preview(self, header: dict[str, Any], jpeg: bytes) -> None: ...


class Bridge:
    def __init__(self, actx: zmq.asyncio.Context, paths: Paths, settings: dict[str, Any], pages: Pages):
        self.actx, self.paths, self.settings, self.pages = actx, paths, settings, pages
        self.controller = AsyncCommands(actx, paths.cmd(settings["controller"]), settings["controller"])
        self.uplink = AsyncCommands(actx, paths.cmd(settings["uplink"]), settings["uplink"])
        self.station_id = ""
        self.policy: dict[str, Any] = {}       # the enrollment policy new sessions start under
        self.driver_names: dict[str, list[str]] = {"camera": [], "fingerprint": [], "printer": []}
        self.drivers: dict[str, dict[str, Any]] = {}
        self.controller_online = False
        self.free_mb: int | None = None
        self.uplink_status: dict[str, Any] = {"running": False}
        self.events_sub: Subscriber | None = None
        self.frames_sub: Subscriber | None = None
        self.viewers = 0
        self.camera: dict[str, Any] = {}  # the auto-capture figures a page counts down with
        self.last_status: dict[str, Any] = {}
        self.frames_relayed = 0
        self._tasks: list[asyncio.Task] = []
        self._status_due = asyncio.Event()

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._configure()), loop.create_task(self._status_loop())]

    async def _configure(self) -> None:
        """Learn the drivers and the policy from the controller (it may start after us)."""
        while True:
            try:
                snap = (await self.controller.call("state", timeout_s=2.0)).result
                break
            except StationError as exc:
                log.debug("controller not answering yet: %s", exc.message)
                await asyncio.sleep(RETRY_S)
        cfg = snap["config"]
        self.policy = cfg.get("enrollment", {})
        self.driver_names = {kind: list(cfg["drivers"].get(kind, [])) for kind in self.driver_names}
        self.drivers = {name: {"kind": kind, "online": False, "state": "unknown", "detail": "", "condition": None}
                        for kind, names in self.driver_names.items() for name in names}
        endpoints = [self.paths.pub(self.settings["controller"])] + [self.paths.pub(n) for n in self.drivers]
        self.events_sub = Subscriber(self.actx, endpoints, on_boot=self._on_boot, zap_domain=peers.PUBLISHERS)
        if self.driver_names["camera"]:
            self.frames_sub = Subscriber(self.actx, [self.paths.frames(self.driver_names["camera"][0])], topics=(),
                                         hwm=FRAME_HWM, zap_domain=peers.PUBLISHERS)
            self._tasks.append(asyncio.get_running_loop().create_task(self._frames_loop()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._events_loop()))
        for name in self.drivers:
            self._tasks.append(asyncio.get_running_loop().create_task(self._adopt(name)))
        log.info("bridging controller %s and drivers %s", self.settings["controller"], ", ".join(self.drivers))

    def describe(self) -> dict[str, Any]:
        """What a page learns when it connects."""
        keep = ("finger_positions", "nfiq2_accept", "attempts", "portrait_required", "exception_photo_required")
        return {"station": self.station_id, "policy": {k: self.policy[k] for k in keep if k in self.policy},
                "drivers": self.driver_names, "camera": self.camera, "status": self.status()}

    # -- events -----------------------------------------------------------------------------
    def _on_boot(self, src: str, old: str, new: str) -> None:
        if src in self.drivers:
            asyncio.get_running_loop().create_task(self._adopt(src))

    async def _adopt(self, name: str) -> None:
        """A driver's own snapshot: its state and detail, the printer's sensors."""
        try:
            snap = await self.driver_state(name)
        except StationError:
            return  # not running: it stays offline until it is heard
        driver = self.drivers[name]
        if driver["kind"] == "camera" and name == self.driver_names["camera"][0]:
            cfg = snap.get("config", {})
            self.camera = {"fps": cfg.get("source", {}).get("fps") or 30,
                           "preview_fps": cfg.get("preview", {}).get("fps", 15),
                           "consecutive_frames": cfg.get("capture", {}).get("consecutive_frames", 1)}
        driver.update(state=snap["state"], detail=snap.get("detail", ""),
                      condition=snap.get("status", {}).get("condition"))
        self._changed()

    async def driver_state(self, name: str) -> dict[str, Any]:
        """A driver's snapshot (state, effective config, counters), asked of the driver itself."""
        client = AsyncCommands(self.actx, self.paths.cmd(name), name)
        try:
            return (await client.call("state", timeout_s=2.0)).result
        finally:
            client.close()

    async def _events_loop(self) -> None:
        sub = self.events_sub
        while True:
            frames = await sub.socket.recv_multipart(copy=False)
            msg = sub.accept(frames)
            if msg is not None:
                self._on_event(msg)

    def _on_event(self, msg: Message) -> None:
        if msg.src == self.settings["controller"] or msg.kind == "station":
            if not self.controller_online:
                self.controller_online = True
                self._changed()
            if msg.topic.startswith(CONTROLLER_TOPICS):
                self.pages.broadcast({"type": "event", "topic": msg.topic, "body": _body(msg)})
            return
        driver = self.drivers.get(msg.src)
        if driver is None:
            return
        if not driver["online"]:  # started after us, or back: adopt its snapshot (state, detail, config)
            driver["online"] = True
            asyncio.get_running_loop().create_task(self._adopt(msg.src))
            self._changed()
        event = msg.event
        if event in ("status", "heartbeat"):
            state = msg.get("state", driver["state"])
            detail = msg.get("detail", "") if event == "status" else driver["detail"]
            if (state, detail) != (driver["state"], driver["detail"]):
                driver.update(state=state, detail=detail)
                self._changed()
        elif event == "condition":
            driver["condition"] = _body(msg)
            self._changed()
        if event in DEVICE_EVENTS:  # a scanner's upload progress comes a few times a second
            self.pages.broadcast({"type": "device", "kind": driver["kind"], "driver": msg.src, "event": event,
                                  "body": _body(msg)})

    def _changed(self) -> None:
        self._status_due.set()

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = {"controller": {"online": self.controller_online}, "drivers": self.drivers,
                  "free_mb": self.free_mb, "uplink": self.uplink_status}
        return {**status, "banners": banners.banners(status, self.settings["banners"])}

    async def _status_loop(self) -> None:
        every = float(self.settings["status_every_s"])
        while True:
            try:
                await asyncio.wait_for(self._status_due.wait(), every)
            except asyncio.TimeoutError:
                await self._poll()
            self._status_due.clear()
            self._check_silence()
            status = self.status()
            if status != self.last_status:
                self.last_status = status
                self.pages.broadcast({"type": "status", **status})

    async def _poll(self) -> None:
        try:
            status = (await self.controller.call("status", timeout_s=1.0)).result
            self.controller_online, self.free_mb = True, status.get("free_mb")
            self.station_id = status.get("station", self.station_id)
        except StationError:
            self.controller_online = False
        try:
            fields = (await self.uplink.call("state", timeout_s=1.0)).result.get("status", {})
            backlog = fields.get("backlog", {})
            self.uplink_status = {"running": True, "link": fields.get("link"), "oldest_age_s": fields.get("oldest_age_s"),
                                  "backlog": {k: backlog.get(k, 0) for k in ("records", "events", "bytes")}}
        except StationError:
            self.uplink_status = {"running": False}

    def _check_silence(self) -> None:
        if self.events_sub is None:
            return
        for src in self.events_sub.offline():
            driver = self.drivers.get(src)
            if driver is not None and driver["online"]:
                log.warning("driver %s is silent: offline", src)
                driver.update(online=False, state="unknown")
            elif src == self.settings["controller"]:
                self.controller_online = False
            self.events_sub.streams.pop(src, None)  # heard again: online again

    # -- preview ----------------------------------------------------------------------------
    def watch_preview(self, delta: int) -> None:
        """Subscribe to the camera's preview only while a page shows it: the camera analyses
        preview frames only for subscribers, and its CPU is the scanner's too."""
        if self.frames_sub is None:
            return
        before, self.viewers = self.viewers, self.viewers + delta
        topic = f"camera.{self.driver_names['camera'][0]}.preview".encode()
        if before == 0 and self.viewers > 0:
            self.frames_sub.socket.setsockopt(zmq.SUBSCRIBE, topic)
        elif before > 0 and self.viewers == 0:
            self.frames_sub.socket.setsockopt(zmq.UNSUBSCRIBE, topic)

    async def _frames_loop(self) -> None:
        sub = self.frames_sub
        while True:
            frames = await sub.socket.recv_multipart(copy=False)
            msg = sub.accept(frames)
            if msg is None or msg.event != "preview" or self.viewers == 0:
                continue
            try:
                jpeg = bytes(_buffer(msg.payload("jpeg")))
            except KeyError:
                continue
            self.frames_relayed += 1
            header = {k: msg.get(k) for k in ("index", "width", "height", "frame_width", "frame_height", "t_acq_ns",
                                              "t_pub_ns", "seq")}
            if isinstance(header["t_acq_ns"], int):  # the camera's clock is monotonic; a page knows wall time
                header["t_acq_wall_ns"] = header["t_acq_ns"] + time.time_ns() - time.monotonic_ns()
            self.pages.preview({**header, "quality": msg.get("quality")}, jpeg)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in (self.events_sub, self.frames_sub):
            if sub is not None:
                sub.close()
        self.controller.close()
        self.uplink.close()


def _buffer(part: Any) -> Any:
    return getattr(part, "buffer", part)


def _body(msg: Message) -> dict[str, Any]:
    """An event's fields without the envelope's bookkeeping."""
    skip = {"v", "src", "boot", "seq", "payloads"}
    return {k: v for k, v in msg.header.items() if k not in skip}

