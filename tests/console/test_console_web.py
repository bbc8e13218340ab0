"""The console's web side in process: idle sign-out, the catalogs the page reads, every
word the page asks for present in both languages."""
from __future__ import annotations

import asyncio
import re
from importlib import resources

from station import config
from station.console.accounts import Accounts
from station.console.web import Console, SignIn

STATIC = resources.files("station.console") / "static"


def console(tmp_path) -> Console:
    return Console(config.load("console", None, tmp_path), Accounts(tmp_path / "accounts.json"), tmp_path)


def test_an_idle_operator_is_signed_out_and_told_why(tmp_path):
    web = console(tmp_path)
    limit = web.settings["sign_in"]["idle_sign_out_s"]
    told = []

    class FakePage:
        def send(self, message):
            told.append(message)

        def close(self):
            told.append("closed")

    idle = SignIn("a", {"user": "canbo1"}, last_active=0.0, pages={FakePage()})
    busy = SignIn("b", {"user": "canbo2"}, last_active=limit - 1)
    web.sign_ins = {"a": idle, "b": busy}
    web.expire_idle(limit + 0.5)
    assert list(web.sign_ins) == ["b"]
    assert told == [{"type": "signed_out", "reason": "idle"}, "closed"]


def test_both_languages_have_the_same_words(tmp_path):
    catalogs = console(tmp_path).catalogs
    assert set(catalogs) == {"vi", "en"}
    assert set(catalogs["vi"]) == set(catalogs["en"])
    assert all(isinstance(v, str) and v.strip() for c in catalogs.values() for v in c.values())


def test_every_word_the_page_asks_for_is_in_the_catalogs(tmp_path):
    catalog = console(tmp_path).catalogs["vi"]
    page = (STATIC / "app.js").read_text("utf-8") + (STATIC / "index.html").read_text("utf-8")
    asked = set(re.findall(r'\btr\("([a-z_]+\.[a-z_.]+)"', page)) | set(re.findall(r'data-i18n="([^"]+)"', page))
    assert len(asked) > 40
    assert sorted(asked - set(catalog)) == []
    # Families the page builds from codes: each prefix must exist in the catalog.
    families = set(re.findall(r'tr\(`([a-z_]+)\.\$\{', page))
    assert families and all(any(key.startswith(f"{family}.") for key in catalog) for family in families)


def test_the_catalog_route_serves_merged_json(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        async with TestClient(TestServer(console(tmp_path).app)) as client:
            vi = await client.get("/i18n/vi.json", headers={"Host": "127.0.0.1:8470"})
            missing = await client.get("/i18n/fr.json", headers={"Host": "127.0.0.1:8470"})
            return vi.status, await vi.json(), missing.status, vi.headers.get("Content-Security-Policy", "")
    status, body, missing, csp = asyncio.run(go())
    assert status == 200 and body["ui.next_applicant"] == "Người tiếp theo" and body["hint.move_closer"]
    assert missing == 404 and "default-src 'self'" in csp
