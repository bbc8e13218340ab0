"""What needs a person now: the banner rules, from the console's picture of the station."""
from __future__ import annotations

from station.console.banners import banners

LIMITS = {"backlog_age_s": 3600, "disk_free_mb": 1000}


def healthy(**changes):
    status = {
        "controller": {"online": True},
        "drivers": {"cam0": {"kind": "camera", "online": True, "state": "ready"},
                    "fp0": {"kind": "fingerprint", "online": True, "state": "ready"},
                    "printer0": {"kind": "printer", "online": True, "state": "ready",
                                 "condition": {"level": "ready", "conditions": []}}},
        "free_mb": 50_000, "uplink": {"running": True, "oldest_age_s": 10, "backlog": {"records": 1}},
    }
    status.update(changes)
    return status


def codes(status):
    return [b["code"] for b in banners(status, LIMITS)]


def test_a_healthy_station_has_no_banner():
    assert banners(healthy(), LIMITS) == []


def test_an_unplugged_scanner_and_a_silent_camera_daemon_are_told_apart():
    status = healthy()
    status["drivers"]["fp0"].update(state="offline", detail="port /dev/ttyUSB0 gone")
    status["drivers"]["cam0"].update(online=False)
    found = banners(status, LIMITS)
    assert [b["code"] for b in found] == ["camera_offline", "fingerprint_unplugged"]
    assert found[1]["driver"] == "fp0" and found[1]["severity"] == "error"


def test_the_printer_banner_names_its_conditions():
    status = healthy()
    status["drivers"]["printer0"]["condition"] = {"level": "ERROR", "conditions": ["ribbon_ended"]}
    (found,) = banners(status, LIMITS)
    assert found == {"code": "printer_attention", "severity": "error", "driver": "printer0",
                     "conditions": ["ribbon_ended"]}


def test_the_controller_down_comes_first_then_disk_then_backlog():
    status = healthy(controller={"online": False}, free_mb=999,
                     uplink={"running": True, "oldest_age_s": 3601, "backlog": {"records": 7}})
    assert codes(status) == ["controller_offline", "disk_low", "backlog_old"]
    assert banners(status, LIMITS)[2]["records"] == 7


def test_limits_are_not_banners():
    assert codes(healthy(free_mb=1000, uplink={"running": True, "oldest_age_s": 3600})) == []
    assert codes(healthy(free_mb=None, uplink={"running": False})) == []
