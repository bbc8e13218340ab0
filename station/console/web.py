"""The console's HTTP side (aiohttp): sign-in, the page, one WebSocket for events and
commands, one binary WebSocket for the camera preview.

Who may connect: the console listens on loopback only (the schema refuses any other
address) and still checks every TCP peer and the ``Host`` header (a page of another site
cannot reach it through DNS rebinding); a WebSocket or a POST must come from the console's
own origin; every API route and socket needs a signed-in operator (an HttpOnly,
SameSite=Strict cookie naming a server-side sign-in that ends after ``idle_sign_out_s``
without activity).

``/ws`` speaks JSON, one object per message:

- page -> console: ``{type: "cmd", id, cmd, args}``; ``{type: "activity"}`` (the officer
  typed or touched: keeps the sign-in alive);
- console -> page: ``{type: "hello", user, station, policy, drivers, status}`` first;
  ``{type: "reply", id, ok, result | error}``; ``{type: "status", ...}`` (devices, backlog,
  disk, banners); ``{type: "event", topic, body}`` (the controller's journal);
  ``{type: "device", kind, driver, event, body}`` (place finger, upload progress, capture);
  ``{type: "signed_out", reason}`` before the console closes an idle sign-in.

Commands a page may send are the controller's session and print commands (the console
adds the signed-in operator to each, so the controller audits who did it) and, for the
``engineer`` role, ``driver.state {driver}``, ``uplink.state``, ``config.check`` and
``daemon.reload {daemon}`` (SIGHUP over the bus: applied, or rejected with its problems).

``/ws/preview`` sends binary messages: a 4-byte big-endian header length, the header JSON
(frame index, the camera frame's size, ``t_acq_ns`` on the camera's monotonic clock and
``t_acq_wall_ns``, the same instant on the wall clock a page can compare with, the camera's
quality report with face box, eyes and hint code) and the JPEG; the page answers ``ack`` for each frame it has drawn. At most
``preview.in_flight`` frames are unacknowledged; a newer frame replaces one not yet sent,
so a slow browser sees fewer frames, never older ones.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import struct
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable

import yaml
from aiohttp import WSMsgType, web

from station import config as station_config
from station import demographics
from station.console.accounts import NAME, Accounts, Lockout, SignInRefused
from station.console.bridge import AsyncCommands, Bridge
from station.bus import Reply
from station.envelope import dump_json
from station.errors import StationError

log = logging.getLogger("station.console.web")

COOKIE = "station_console"
PACKAGE = resources.files("station.console")
SESSION_COMMANDS = {"session.start", "session.portrait", "session.finger", "session.exception",
                    "session.exception_photo", "session.finish", "session.cancel", "session.abort",
                    "print.retry", "print.cancel"}  # the controller audits the operator of each
CAPTURES = {"session.portrait", "session.finger", "session.exception_photo", "session.finish"}
OFFICER_COMMANDS = SESSION_COMMANDS | {"session.get", "session.list", "session.review", "print.status", "status"}
ENGINEER_COMMANDS = OFFICER_COMMANDS | {"driver.state", "uplink.state", "config.check", "daemon.reload", "events.since"}
PAGE_QUEUE = 256  # messages waiting for one slow page; beyond it the page is closed and reconnects
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class SignIn:
    token: str
    account: dict[str, str]
    last_active: float
    pages: set["Page"] = field(default_factory=set)


class Page:
    """One browser tab's event socket: a bounded queue drained by its own writer."""

    def __init__(self, ws: web.WebSocketResponse, sign_in: SignIn):
        self.ws, self.sign_in = ws, sign_in
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(PAGE_QUEUE)
        self.writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, message: dict[str, Any]) -> None:
        try:  # ASCII escapes: text a page sent (a lone surrogate) can always be sent back
            self.queue.put_nowait(json.dumps(message))
        except asyncio.QueueFull:
            log.warning("page of %s is not reading: closed (it reconnects and resynchronises)",
                        self.sign_in.account["user"])
            self.close()

    def close(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def _write(self) -> None:
        while (text := await self.queue.get()) is not None:
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                break
        await self.ws.close()


class Viewer:
    """One preview socket: newest frame wins, at most ``in_flight`` unacknowledged."""

    def __init__(self, ws: web.WebSocketResponse, in_flight: int):
        self.ws, self.in_flight = ws, in_flight
        self.unacked = 0
        self.latest: bytes | None = None
        self.wake = asyncio.Event()
        self.sent = self.replaced = 0

    def offer(self, message: bytes) -> None:
        if self.latest is not None:
            self.replaced += 1
        self.latest = message
        self.wake.set()

    def ack(self) -> None:
        self.unacked = max(0, self.unacked - 1)
        self.wake.set()

    async def run(self) -> None:
        while not self.ws.closed:
            await self.wake.wait()
            self.wake.clear()
            if self.latest is None or self.unacked >= self.in_flight:
                continue
            message, self.latest = self.latest, None
            self.unacked += 1
            self.sent += 1
            await self.ws.send_bytes(message)


class Console:
    """The web application and the pages it serves; ``bridge`` is set once the loop runs."""

    def __init__(self, settings: dict[str, Any], accounts: Accounts, etc: Path):
        self.settings = settings
        self.accounts = accounts
        self.etc = etc
        self.sign_ins: dict[str, SignIn] = {}
        self.viewers: set[Viewer] = set()
        self.unanswerable = 0  # page commands without a usable id
        self.bridge: Bridge | None = None
        self.catalogs = _catalogs()
        self.app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        static = PACKAGE / "static"
        self.app.add_routes([
            web.get("/", self._index),
            web.get("/favicon.ico", _no_icon),
            web.get("/i18n/{language}.json", self._catalog),
            web.post("/api/sign-in", self._sign_in),
            web.post("/api/sign-out", self._sign_out),
            web.get("/api/me", self._me),
            web.get("/api/applicant-fields", self._applicant_fields),
            web.get("/api/sessions/{session}/{photo:portrait|exception-photo}.jpg", self._photo),
            web.get("/ws", self._events_socket),
            web.get("/ws/preview", self._preview_socket),
            web.static("/static", Path(str(static)), follow_symlinks=False),
        ])

    # -- what the bridge pushes -------------------------------------------------------------
    def broadcast(self, message: dict[str, Any]) -> None:
        for sign_in in list(self.sign_ins.values()):
            for page in list(sign_in.pages):
                page.send(message)

    def preview(self, header: dict[str, Any], jpeg: bytes) -> None:
        head = json.dumps(header).encode()
        message = struct.pack(">I", len(head)) + head + jpeg
        for viewer in self.viewers:
            viewer.offer(message)

    # -- sign-in state ----------------------------------------------------------------------
    def expire_idle(self, now: float) -> None:
        limit = float(self.settings["sign_in"]["idle_sign_out_s"])
        for token, sign_in in list(self.sign_ins.items()):
            if now - sign_in.last_active > limit:
                log.info("%s signed out after %.0f s idle", sign_in.account["user"], limit)
                del self.sign_ins[token]
                for page in sign_in.pages:
                    page.send({"type": "signed_out", "reason": "idle"})
                    page.close()

    def _signed_in(self, request: web.Request) -> SignIn:
        sign_in = self.sign_ins.get(request.cookies.get(COOKIE, ""))
        if sign_in is None:
            raise web.HTTPUnauthorized(text="sign in first")
        return sign_in

    # -- middleware: loopback, host, origin, headers ----------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if isinstance(peer, tuple):  # TCP; a Unix socket peer is guarded by the socket's permissions
            if not ipaddress.ip_address(peer[0].split("%")[0]).is_loopback:
                log.warning("refused a connection from %s: the console serves this station only", peer[0])
                raise web.HTTPForbidden(text="the console serves this station only")
            if request.host not in self._hosts():
                raise web.HTTPMisdirectedRequest(text="unknown host name")
        if (request.method == "POST" or request.path.startswith("/ws")) and not self._same_origin(request):
            log.warning("refused %s %s from origin %r", request.method, request.path, request.headers.get("Origin"))
            raise web.HTTPForbidden(text="cross-site requests are refused")
        response = await handler(request)
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    def _hosts(self) -> set[str]:
        listen = self.settings["listen"]
        port = listen["port"]
        names = {"localhost", "127.0.0.1", "[::1]", listen["host"] if ":" not in listen["host"] else f"[{listen['host']}]"}
        return {f"{name}:{port}" for name in names} | ({f"{n}" for n in names} if port == 80 else set())

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is not None and origin == f"{request.scheme}://{request.host}"

    # -- pages and catalogs -----------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=(PACKAGE / "static" / "index.html").read_text("utf-8"), content_type="text/html")

    async def _catalog(self, request: web.Request) -> web.Response:
        catalog = self.catalogs.get(request.match_info["language"])
        if catalog is None:
            raise web.HTTPNotFound(text="no such language")
        return web.json_response(catalog, dumps=lambda v: json.dumps(v, ensure_ascii=False))

    async def _applicant_fields(self, request: web.Request) -> web.Response:
        self._signed_in(request)
        schema = demographics.SCHEMA
        fields = []
        for name, spec in schema["properties"].items():
            spec = {**schema["$defs"]["text"], **spec} if "$ref" in spec else spec
            fields.append({"name": name, "required": name in schema["required"], "enum": spec.get("enum"),
                           "max_length": spec.get("maxLength")})
        return web.json_response({"fields": fields})

    # -- sign-in ----------------------------------------------------------------------------
    async def _sign_in(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            user, password = str(body["user"])[:64], str(body["password"])[:1024]
            user.encode(), password.encode()  # a lone surrogate is no name or password
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text="expected JSON {user, password}") from None
        policy = Lockout(self.settings["sign_in"]["max_failures"], self.settings["sign_in"]["lockout_s"])
        loop = asyncio.get_running_loop()
        try:  # Argon2 takes tens of milliseconds: off the loop that relays the preview
            account = await loop.run_in_executor(None, self.accounts.sign_in, user, password, policy, time.time())
        except SignInRefused as exc:  # a name that cannot be an account may be a password typed in the wrong field
            log.warning("sign-in refused for %s: %s", repr(user) if NAME.match(user) else "a name that is no account",
                        exc.code)
            return web.json_response({"ok": False, "error": {"code": exc.code, "message": exc.message,
                                                             "retry_after_s": round(exc.retry_after_s)}},
                                     status=401 if exc.code == "bad_credentials" else 423)
        token = secrets.token_urlsafe(32)
        self.sign_ins[token] = SignIn(token, account.view(), time.monotonic())
        log.info("%s signed in (%s)", account.name, account.role)
        response = web.json_response({"ok": True, **account.view()})
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    async def _sign_out(self, request: web.Request) -> web.Response:
        sign_in = self.sign_ins.pop(request.cookies.get(COOKIE, ""), None)
        if sign_in is not None:
            log.info("%s signed out", sign_in.account["user"])
            for page in sign_in.pages:
                page.send({"type": "signed_out", "reason": "signed_out"})
                page.close()
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response(self._signed_in(request).account)

    async def _photo(self, request: web.Request) -> web.Response:
        """The session's portrait or exception photo, for the review (never cached: no-store)."""
        self._signed_in(request)
        name = f"{request.match_info['photo']}.jpg"
        try:
            reply = await self._call_controller("session.review", {"session": request.match_info["session"]})
        except StationError as exc:
            raise web.HTTPNotFound(text=exc.message) if exc.code in ("not_found", "no_session", "bad_request") \
                else web.HTTPBadGateway(text=exc.message) from None
        if name not in reply.names:
            raise web.HTTPNotFound(text=f"no {request.match_info['photo']} yet")
        return web.Response(body=bytes(reply.payload(name)), content_type="image/jpeg")

    async def _call_controller(self, cmd: str, args: dict[str, Any]) -> Reply:
        """A command to the controller, within the time its kind may take (a capture waits
        for the applicant)."""
        if self.bridge is None:
            raise StationError("the console is starting", code="stopping", retryable=True)
        timeout = self.settings["capture_timeout_s" if cmd in CAPTURES else "command_timeout_s"]
        return await self.bridge.controller.call(cmd, args, timeout_s=float(timeout))

    # -- the event and command socket -------------------------------------------------------
    async def _events_socket(self, request: web.Request) -> web.WebSocketResponse:
        sign_in = self._signed_in(request)
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=256 * 1024)
        await ws.prepare(request)
        page = Page(ws, sign_in)
        sign_in.pages.add(page)
        page.send({"type": "hello", **sign_in.account, **(self.bridge.describe() if self.bridge else {})})
        tasks: set[asyncio.Task] = set()
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                if sign_in.token not in self.sign_ins:
                    break
                try:
                    body = json.loads(message.data)
                except ValueError:
                    continue
                if not isinstance(body, dict):
                    continue
                sign_in.last_active = time.monotonic()
                if body.get("type") == "cmd":
                    task = asyncio.get_running_loop().create_task(self._command(page, body))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            sign_in.pages.discard(page)
            page.close()
        return ws

    async def _command(self, page: Page, body: dict[str, Any]) -> None:
        corr, cmd = body.get("id"), body.get("cmd")
        if not (isinstance(corr, int) and not isinstance(corr, bool) or isinstance(corr, str) and len(corr) <= 64):
            self.unanswerable += 1  # no id to answer with: counted, dropped
            return
        args = body.get("args") if isinstance(body.get("args"), dict) else {}
        account = page.sign_in.account
        allowed = ENGINEER_COMMANDS if account["role"] == "engineer" else OFFICER_COMMANDS
        try:
            if not isinstance(cmd, str) or cmd not in allowed:
                raise StationError(f"{str(cmd)[:64]!r} is not a command for the {account['role']} role",
                                   code="bad_request")
            try:
                dump_json(args)
            except TypeError as exc:  # a 2**70, a lone surrogate: nothing a daemon could read
                raise StationError(f"{cmd}: arguments cannot be encoded ({exc})", code="bad_request") from None
            result = await self._run(cmd, args, account)
            page.send({"type": "reply", "id": corr, "ok": True, "result": result})
        except StationError as exc:
            page.send({"type": "reply", "id": corr, "ok": False, "error": exc.as_reply()})
        except Exception as exc:  # a bug: the page still gets an answer
            log.exception("console command %s failed", cmd)
            page.send({"type": "reply", "id": corr, "ok": False,
                       "error": {"code": "internal", "message": f"{cmd} failed: {exc!r}", "retryable": False}})

    async def _run(self, cmd: str, args: dict[str, Any], account: dict[str, str]) -> Any:
        bridge = self.bridge
        if bridge is None:
            raise StationError("the console is starting", code="stopping", retryable=True)
        if cmd in SESSION_COMMANDS:
            args = {**args, "operator": account["user"]}  # who is signed in, never what the page says
        if cmd == "driver.state":
            name = args.get("driver")
            if name not in bridge.drivers:
                raise StationError(f"no driver {name!r}; the station has {', '.join(bridge.drivers)}",
                                   code="bad_request")
            return await bridge.driver_state(name)
        if cmd == "uplink.state":
            return (await bridge.uplink.call("state", timeout_s=2.0)).result
        if cmd == "daemon.reload":
            name = args.get("daemon")
            daemons = [self.settings["controller"], self.settings["uplink"], "console", *bridge.drivers]
            if name not in daemons:
                raise StationError(f"no daemon {name!r}; the station has {', '.join(daemons)}", code="bad_request")
            client = AsyncCommands(bridge.actx, bridge.paths.cmd(name), name)
            try:
                return (await client.call("reload", timeout_s=float(self.settings["command_timeout_s"]))).result
            finally:
                client.close()
        if cmd == "config.check":
            problems = await asyncio.get_running_loop().run_in_executor(None, station_config.check, self.etc)
            return {"problems": problems, "valid": not problems}
        return (await self._call_controller(cmd, args)).result

    # -- the preview socket -----------------------------------------------------------------
    async def _preview_socket(self, request: web.Request) -> web.WebSocketResponse:
        self._signed_in(request)
        if len(self.viewers) >= self.settings["preview"]["max_viewers"]:
            raise web.HTTPServiceUnavailable(text="too many preview viewers")
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=4096)
        await ws.prepare(request)
        viewer = Viewer(ws, self.settings["preview"]["in_flight"])
        self.viewers.add(viewer)
        if self.bridge is not None:
            self.bridge.watch_preview(+1)
        sender = asyncio.get_running_loop().create_task(viewer.run())
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT and message.data == "ack":
                    viewer.ack()
        finally:
            self.viewers.discard(viewer)
            if self.bridge is not None:
                self.bridge.watch_preview(-1)
            sender.cancel()
        return ws


async def _no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def _catalogs() -> dict[str, dict[str, str]]:
    """Every ``*.<language>.yaml`` under ``i18n/`` merged per language."""
    catalogs: dict[str, dict[str, str]] = {}
    for entry in (PACKAGE / "i18n").iterdir():
        parts = entry.name.split(".")
        if len(parts) == 3 and parts[2] == "yaml":
            catalogs.setdefault(parts[1], {}).update(yaml.safe_load(entry.read_text("utf-8")) or {})
    return catalogs
