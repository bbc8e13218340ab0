"""The console in a real Chromium (Debian's, driven by Playwright) on a whole emulated
station: an officer's enrollment in Vietnamese to a committed record, a reload in the middle,
the scanner's banner, a wrong field, lock-out after failed sign-ins."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from drivers.emulation import send_command
from station_harness import applicant

from delivery_harness import wait_for

from .conftest import ENGINEER, ENGINEER_PASSWORD, OFFICER, shot, sign_in

pytestmark = pytest.mark.timeout(300)


def fill_applicant(page, person: dict) -> None:
    for name, value in person.items():
        selector = f"#field-{name}"
        if page.locator(selector).evaluate("el => el.tagName") == "SELECT":
            page.select_option(selector, value)
        else:
            page.fill(selector, value)


def finger(page, position: int):
    return page.locator(f'#hands button[data-position="{position}"]')


def test_full_enrollment_in_vietnamese_with_a_reload_in_the_middle(console_station, page):
    station = console_station
    sign_in(page, station)
    expect(page.locator("#view-start")).to_be_visible()
    expect(page.locator("#view-start h1")).to_have_text("Người tiếp theo")
    expect(page.locator("label[for=field-full_name]")).to_contain_text("Họ")
    person = applicant(7)
    fill_applicant(page, person)
    shot(page, "01-demographics")
    page.press("#field-place_of_residence", "Enter")  # keyboard only: Enter submits the form

    # Portrait: the live preview with the guide; the camera auto-captures.
    expect(page.locator("#panel-photo")).to_be_visible()
    expect(page.locator("#applicant-name")).to_have_text(person["full_name"])
    wait_for(lambda: page.evaluate("window.station.previewStats.frames") >= 3, 15, "preview frames in the page")
    expect(page.locator("#hint")).not_to_be_empty()
    shot(page, "02-portrait")
    expect(page.locator("#capture-button")).to_be_focused()  # the step's action has the focus
    page.keyboard.press("Enter")
    expect(page.locator("#panel-fingers")).to_be_visible(timeout=30_000)

    # A reload in the middle resumes the same session at the same step.
    session = page.evaluate("window.station.session.session")
    page.reload()
    expect(page.locator("#panel-fingers")).to_be_visible()
    assert page.evaluate("window.station.session.session") == session
    expect(page.locator("#applicant-name")).to_have_text(person["full_name"])

    # Fingers by keyboard: the selected finger is the next one; Enter on the focused button scans.
    for position, quality, outcome in ((1, "good", "captured"), (2, "poor", "forced")):
        expect(finger(page, position)).to_have_attribute("aria-pressed", "true")
        station.place(7, position, quality)
        page.focus("#scan-button")
        page.keyboard.press("Enter")
        expect(finger(page, position)).to_have_attribute("data-state", outcome, timeout=30_000)
        assert page.locator(f'#hands button[data-position="{position}"] .score').inner_text().strip().isdigit()
    # A worn finger never reaches the accept level: its best attempt is kept, and said so.
    expect(finger(page, 2)).to_contain_text("Giữ ảnh tốt nhất")
    shot(page, "03-fingers")

    # The left index is amputated: an exception, then the exception photo.
    finger(page, 7).click()
    page.select_option("#exception-reason", "XX")
    page.click("#exception-button")
    expect(page.locator("#steps li.current")).to_have_attribute("data-step", "exception_photo")
    expect(page.locator("#capture-button")).to_have_text("Chụp ảnh ngón tay ngoại lệ")
    page.click("#capture-button")

    # Review: demographics, the portrait, every finger; finish; "done" with the committed record id.
    expect(page.locator("#panel-review")).to_be_visible(timeout=30_000)
    expect(page.locator("#review-applicant")).to_contain_text(person["id_number"])
    expect(page.locator("#review-fingers")).to_contain_text("Cụt")  # the exception, in Vietnamese
    for photo in ("review-portrait", "review-exception-photo"):
        wait_for(lambda: page.evaluate(f"document.getElementById('{photo}').naturalWidth") > 0, 10, f"{photo} shown")
    shot(page, "04-review")
    page.click("#finish-button")
    expect(page.locator("#view-done")).to_be_visible(timeout=60_000)
    record = page.locator("#done-record").get_attribute("data-record")
    shot(page, "05-done")
    records = station.call("controller", "record.list")["records"]
    assert record in [r["record_id"] for r in records]
    ended = station.call("controller", "session.get", {"session": session})
    assert ended["status"] == "finished" and ended["record"] == record
    # Nothing of a template or a sealed record reached the page, and nothing of the applicant
    # reached the console's log.
    seen = "\n".join(page.ws_text) + page.content()
    assert len(page.ws_text) > 20
    for marker in ("FMR", "Rk1SA", "STNSEAL", "U1ROU0VBTA", "iso19794"):
        assert marker not in seen
    log = station.log("console").read_text("utf-8")
    assert person["id_number"] not in log and person["full_name"] not in log
    # The controller audited the signed-in officer, not whatever a page might claim.
    events = station.call("controller", "events.since", {"since": 0})["events"]
    started = [e for e in events if e["topic"].endswith("session.started") and e["body"]["session"] == session]
    assert started and started[0]["body"]["operator"] == OFFICER


def test_a_wrong_field_shows_the_controllers_message_next_to_it(console_station, page):
    sign_in(page, console_station)
    expect(page.locator("#view-start")).to_be_visible()
    person = applicant(3)
    person["id_number"] = "999" + person["id_number"][3:]  # no such province
    fill_applicant(page, person)
    page.click("#start-button")
    error = page.locator("#error-id_number")
    expect(error).not_to_be_empty()
    expect(error.locator("small")).to_contain_text("no province code")  # the controller's own words
    expect(page.locator("#field-id_number")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#field-id_number")).to_be_focused()
    assert page.locator("#error-full_name").inner_text() == ""
    shot(page, "wrong-field")


def test_an_unplugged_scanner_shows_its_banner_within_3_s(console_station, page):
    sign_in(page, console_station)
    expect(page.locator("#view-start")).to_be_visible()
    banner = page.locator('#banners [data-code="fingerprint_unplugged"]')
    expect(banner).to_have_count(0)
    assert send_command(console_station.control, "unplug 6").startswith("ok")  # plugged back in after 6 s
    expect(banner).to_be_visible(timeout=3_000)
    expect(page.locator('#devices [data-driver="fp0"]')).to_have_attribute("data-state", "offline")
    shot(page, "scanner-unplugged")
    expect(banner).to_have_count(0, timeout=20_000)


def test_failed_sign_ins_lock_the_account(console_station, page):
    station = console_station
    for attempt in range(3):  # max_failures in the test's console.yaml
        sign_in(page, station, ENGINEER, "wrong password")
        if attempt < 2:  # the sign-in page speaks Vietnamese: whose page it is is not known yet
            expect(page.locator("#sign-in-error")).to_have_text("Sai tên đăng nhập hoặc mật khẩu.")
    expect(page.locator("#sign-in-error")).to_contain_text("bị khóa")
    sign_in(page, station, ENGINEER, ENGINEER_PASSWORD)  # the right password no longer helps
    expect(page.locator("#sign-in-error")).to_contain_text("bị khóa")
    expect(page.locator("#view-start")).to_be_hidden()
    shot(page, "locked-out")
    from station.console.accounts import Accounts
    from station.console.daemon import accounts_path
    Accounts(accounts_path(station.paths)).unlock(ENGINEER)
    sign_in(page, station, ENGINEER, ENGINEER_PASSWORD)
    expect(page.locator("#engineer-tab")).to_be_visible()


def test_the_engineer_page_shows_devices_face_figures_and_checks_and_reloads_config(console_station, page):
    sign_in(page, console_station, ENGINEER, ENGINEER_PASSWORD)
    page.click("#engineer-tab")
    expect(page.locator("#view-engineer h1")).to_have_text("Engineering")  # the engineer reads English
    # Each device's snapshot with its effective config; the scanner's serial-line statistics.
    expect(page.locator('#engineer-devices pre[data-driver="fp0"]')).to_contain_text('"link"')
    expect(page.locator('#engineer-devices pre[data-driver="cam0"]')).to_contain_text('"consecutive_frames"')
    # Live face-quality figures, per preview frame.
    expect(page.locator("#face-checks")).to_contain_text("inter_eye_px", timeout=15_000)
    page.click("#config-check")
    expect(page.locator("#config-result")).to_have_text("The configuration is valid.")
    page.select_option("#reload-daemon", "controller")
    page.click("#reload-button")
    expect(page.locator("#config-result")).to_have_text("The new configuration of controller is applied.")
    shot(page, "engineer")
