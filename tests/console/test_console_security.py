"""Who may use the console: only this station (loopback, our own host names), only a
signed-in operator, only from the console's own origin; and nothing of a record or a
template in what it serves or logs."""
from __future__ import annotations

import asyncio
import socket
import subprocess

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from station import config
from station.console.accounts import Accounts
from station.console.web import Console
from station.errors import ConfigError

from .conftest import OFFICER, OFFICER_PASSWORD


def run(coroutine):
    return asyncio.run(coroutine)


async def signed_in(station, session: aiohttp.ClientSession, user=OFFICER, password=OFFICER_PASSWORD):
    async with session.post(f"{station.url}api/sign-in", json={"user": user, "password": password},
                            headers={"Origin": station.url.rstrip("/")}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "localhost"])
def test_the_config_refuses_any_address_but_loopback(tmp_path, host):
    (tmp_path / "console.yaml").write_text(f"listen:\n  host: '{host}'\n")
    with pytest.raises(ConfigError, match="listen.host"):
        config.load("console", None, tmp_path)


def test_other_hosts_cannot_connect(console_station):
    """The console listens on loopback only: the station's own network address is refused."""
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    outside = [a for a in addresses if ":" not in a and not a.startswith("127.")]
    if not outside:
        pytest.skip("this machine has no address but loopback to try")  # the peer check below still runs
    with pytest.raises(OSError):
        socket.create_connection((outside[0], console_station.port), timeout=2).close()


def test_a_peer_that_is_not_loopback_is_refused_by_the_console_itself(tmp_path):
    """Defence in depth, should the console ever be reached through a forwarded port."""
    console = Console(config.load("console", None, tmp_path), Accounts(tmp_path / "a.json"), tmp_path)

    async def check(peer):
        request = make_mocked_request("GET", "/", headers={"Host": "127.0.0.1:8470"}, app=console.app,
                                      transport=_Transport(peer))
        try:
            return (await console._guard(request, _ok)).status
        except aiohttp.web.HTTPException as refused:
            return refused.status

    assert run(check(("10.1.2.3", 5555))) == 403
    assert run(check(("127.0.0.1", 5555))) == 200


def test_a_foreign_host_name_is_refused(console_station):
    """A page of another site cannot reach the console by pointing its own name at 127.0.0.1."""
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(console_station.url, headers={"Host": f"evil.example:{console_station.port}"}) \
                    as response:
                return response.status
    assert run(go()) == 421


def test_nothing_answers_without_a_signed_in_operator(console_station):
    photos = [f"api/sessions/0123456789abcdef/{name}.jpg" for name in ("portrait", "exception-photo")]

    async def go():
        statuses = {}
        async with aiohttp.ClientSession() as session:
            for path in ("api/me", "api/applicant-fields", *photos):
                async with session.get(f"{console_station.url}{path}") as response:
                    statuses[path] = response.status
            for path in ("ws", "ws/preview"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(f"{console_station.url}{path}",
                                             headers={"Origin": console_station.url.rstrip("/")})
                statuses[path] = refused.value.status
        return statuses
    assert run(go()) == dict.fromkeys(["api/me", "api/applicant-fields", *photos, "ws", "ws/preview"], 401)


def test_a_forged_cookie_and_a_signed_out_cookie_are_refused(console_station):
    async def go():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await signed_in(console_station, session)
            async with session.get(f"{console_station.url}api/me") as response:
                assert response.status == 200
            async with session.post(f"{console_station.url}api/sign-out",
                                    headers={"Origin": console_station.url.rstrip("/")}) as response:
                assert response.status == 200
        async with aiohttp.ClientSession(cookies={"station_console": "forged"}) as session:
            async with session.get(f"{console_station.url}api/me") as response:
                return response.status
    assert run(go()) == 401


def test_cross_site_origins_are_refused(console_station):
    async def go():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await signed_in(console_station, session)
            for origin in ("http://evil.example", f"http://localhost.evil.example:{console_station.port}", None):
                headers = {"Origin": origin} if origin else {}
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(f"{console_station.url}ws", headers=headers)
                assert refused.value.status == 403, origin
            async with session.post(f"{console_station.url}api/sign-in", json={"user": OFFICER, "password": "x"},
                                    headers={"Origin": "http://evil.example"}) as response:
                assert response.status == 403
            ws = await session.ws_connect(f"{console_station.url}ws",
                                          headers={"Origin": console_station.url.rstrip("/")})
            hello = await ws.receive_json(timeout=5)
            await ws.close()
            return hello
    assert run(go())["type"] == "hello"


def test_an_officer_cannot_run_engineer_or_unknown_commands(console_station):
    async def go():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await signed_in(console_station, session)
            ws = await session.ws_connect(f"{console_station.url}ws", headers={"Origin": console_station.url.rstrip("/")})
            replies = {}
            for number, cmd in enumerate(("config.check", "driver.state", "record.get", "state", "session.list")):
                await ws.send_json({"type": "cmd", "id": number, "cmd": cmd, "args": {}})
            while len(replies) < 5:
                message = await ws.receive_json(timeout=10)
                if message["type"] == "reply":
                    replies[message["id"]] = message
            await ws.close()
            return replies
    replies = run(go())
    for number in range(4):
        assert not replies[number]["ok"] and replies[number]["error"]["code"] == "bad_request"
    assert replies[4]["ok"] and "sessions" in replies[4]["result"]


class _Transport:
    def __init__(self, peer):
        self.peer = peer

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def is_closing(self):
        return False


async def _ok(request):
    return aiohttp.web.Response(text="ok")


def test_garbage_on_the_page_socket_gets_answers_or_nothing_and_never_stops_the_console(console_station):
    """Random and malformed page messages: every command with an id is answered (a known one
    by the controller, anything else ``bad_request``), nothing else is answered, and the
    socket and the console stay up."""
    import random

    rng = random.Random(11)
    junk = [None, 1, -1, 2**70, 1.5, "", "x" * 5000, "é\ud800", [], {}, [1, {"a": []}], True]

    def message(n):
        kind = rng.random()
        if kind < 0.5:
            return {"type": "cmd", "id": n, "cmd": rng.choice(["session.get", "session.start", "status", "nope",
                                                              "session.finger", None, 7, "driver.state"]),
                    "args": rng.choice(junk + [{"session": rng.choice(junk)}, {"applicant": rng.choice(junk)}])}
        if kind < 0.7:
            return {"type": rng.choice(["activity", "cmd ", None, 3]), "id": n}
        if kind < 0.85:
            return rng.choice(junk)
        return "{not json" * rng.randint(1, 3)

    async def go():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await signed_in(console_station, session)
            ws = await session.ws_connect(f"{console_station.url}ws", headers={"Origin": console_station.url.rstrip("/")})
            expected = set()
            for n in range(400):
                sent = message(n)
                if isinstance(sent, dict) and sent.get("type") == "cmd":
                    expected.add(n)
                text = sent if isinstance(sent, str) and sent.startswith("{not") else \
                    __import__("json").dumps(sent, ensure_ascii=True)
                await ws.send_str(text)
            answered = {}
            while set(answered) != expected:
                reply = await ws.receive_json(timeout=20)
                if reply["type"] == "reply":
                    assert reply["id"] not in answered
                    answered[reply["id"]] = reply
            await ws.send_json({"type": "cmd", "id": "last", "cmd": "session.list", "args": {}})
            while True:
                reply = await ws.receive_json(timeout=10)
                if reply.get("id") == "last":
                    break
            await ws.close()
            return answered, reply
    answered, last = run(go())
    codes = {r["error"]["code"] for r in answered.values() if not r["ok"]}
    assert codes <= {"bad_request", "unknown_command", "no_session", "invalid_demographics"}, codes
    assert last["ok"] and console_station.procs["console"].poll() is None


@pytest.mark.parametrize("body", ['{"user": "canbo1", "password": "\\ud800"}', '["canbo1"]', "not json", "{}",
                                  '{"user": {"a": 1}, "password": null}'])
def test_a_malformed_sign_in_is_a_bad_request_not_a_crash(console_station, body):
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{console_station.url}api/sign-in", data=body,
                                    headers={"Origin": console_station.url.rstrip("/"),
                                             "Content-Type": "application/json"}) as response:
                return response.status
    assert run(go()) in (400, 401)


def test_the_optional_unix_socket_serves_the_console_to_the_station_group_only(console_station):
    import stat as stat_module

    path = console_station.paths.run / "console.http"
    assert stat_module.S_IMODE(path.stat().st_mode) == 0o660

    async def go():
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
            async with session.get("http://console/") as page, session.get("http://console/api/me") as me:
                return page.status, "app.js" in await page.text(), me.status
    assert run(go()) == (200, True, 401)
