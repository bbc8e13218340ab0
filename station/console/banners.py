"""What needs a person now, from the station's status: pure, so every rule is unit-tested.

Each banner is a code the page translates (``banner.<code>`` in the catalogs) plus the
figures its text shows; the order is the order an officer should act in: a daemon down
first, then a device, then the printer, then the disk, then delivery.
"""
from __future__ import annotations

from typing import Any, Mapping

DEVICE_KINDS = ("camera", "fingerprint", "printer")


def banners(status: Mapping[str, Any], limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``status``: the console's picture of the station (``controller`` online, ``drivers``
    by name with kind/online/state/condition, ``free_mb``, ``uplink``); ``limits``: the
    ``banners`` section of console.yaml."""
    found: list[dict[str, Any]] = []
    if not status.get("controller", {}).get("online"):
        found.append({"code": "controller_offline", "severity": "error"})
    drivers = status.get("drivers", {})
    for name in sorted(drivers, key=lambda n: (DEVICE_KINDS.index(drivers[n]["kind"]), n)):
        driver = drivers[name]
        if not driver.get("online"):
            found.append({"code": f"{driver['kind']}_offline", "severity": "error", "driver": name})
        elif driver.get("state") == "offline":
            found.append({"code": f"{driver['kind']}_unplugged", "severity": "error", "driver": name,
                          "detail": driver.get("detail", "")})
    for name, driver in sorted(drivers.items()):
        condition = driver.get("condition") or {}
        level = str(condition.get("level", "")).lower()
        if driver["kind"] == "printer" and driver.get("online") and level in ("warning", "error"):
            found.append({"code": "printer_attention", "severity": level, "driver": name,
                          "conditions": list(condition.get("conditions", []))})
    free_mb = status.get("free_mb")
    if free_mb is not None and free_mb < limits["disk_free_mb"]:
        found.append({"code": "disk_low", "severity": "warning", "free_mb": free_mb})
    uplink = status.get("uplink", {})
    age = uplink.get("oldest_age_s")
    if age is not None and age > limits["backlog_age_s"]:
        found.append({"code": "backlog_old", "severity": "warning", "age_s": age,
                      "records": uplink.get("backlog", {}).get("records", 0)})
    return found
