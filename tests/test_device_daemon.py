"""The device foundation every device daemon stands on: the supervisor's lifecycle policy
(pure), and the one completion path, exercised in-process on a daemon whose device is a
stand-in that fails the way real ones do."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from drivers.device_daemon import DeviceDaemon
from drivers.supervisor import BACKOFF_S, Supervisor
from station.bus import CommandClient, Request
from station.errors import CommandError, DeviceError, StationError
from station.paths import Paths

pytestmark = pytest.mark.timeout(60)


# == the supervisor (pure) =================================================================
def test_failed_opens_back_off_doubling_to_a_cap():
    supervisor = Supervisor(logging.getLogger("test"))
    now, delays = 0.0, []
    for _ in range(7):
        assert supervisor.due(now)
        supervisor.start()
        assert not supervisor.due(now)  # one open at a time
        delays.append(supervisor.failed("no device", now))
        now += delays[-1]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0] == list(BACKOFF_S) + [BACKOFF_S[-1]] * 2
    supervisor.start()
    supervisor.opened("device identified", now)
    assert supervisor.attempt == 0 and supervisor.opens == 1


def test_a_device_lost_three_times_in_the_window_is_flapping_and_reopened_slowly(caplog):
    caplog.set_level(logging.INFO)
    supervisor = Supervisor(logging.getLogger("test"), flap_window_s=60, flap_losses=3)
    now = 0.0
    for loss in range(3):
        supervisor.start()
        supervisor.opened("scanner identified", now)
        now += 10
        supervisor.lost("scanner lost", now)
        expected = BACKOFF_S[-1] if loss == 2 else BACKOFF_S[0]
        assert supervisor.next_open == now + expected
    assert supervisor.flapping(now) and supervisor.status(now)["flapping"]
    unstable = [r for r in caplog.records if "unstable" in r.getMessage()]
    assert len(unstable) == 1 and unstable[0].levelno == logging.WARNING
    assert not supervisor.flapping(now + 61)  # the window moved on: steady again
    supervisor.opened("scanner identified", now + 61)
    assert any("steady again" in r.getMessage() for r in caplog.records)


def test_losses_spread_over_time_are_not_flapping():
    supervisor = Supervisor(logging.getLogger("test"), flap_window_s=60, flap_losses=3)
    for now in (0.0, 100.0, 200.0, 300.0):
        supervisor.opened("camera opened", now)
        supervisor.lost("camera lost", now + 1)
        assert not supervisor.flapping(now + 1) and supervisor.next_open == now + 1 + BACKOFF_S[0]


# == the completion path ===================================================================
class StandIn:
    """A device that answers, raises a bug, or goes away, as the test says."""

    def __init__(self) -> None:
        self.closed = False
        self.release = threading.Event()

    def close(self) -> None:
        self.closed = True


class StandInDaemon(DeviceDaemon):
    kind = "fingerprint"  # its config section; the stand-in ignores the port

    def __init__(self, name: str, paths: Paths):
        super().__init__(name, paths, ["port=/dev/null"])
        self.opened: list[StandIn] = []
        self.commands.register("work", self._cmd_work, {"how": {"enum": ["ok", "bug", "finish_bug", "unplug", "hang"]}})
        self.commands.register("bump", self._cmd_bump)

    def describe(self) -> str:
        return "stand-in device"

    def open_device(self) -> StandIn:
        device = StandIn()
        self.opened.append(device)
        return device

    def _cmd_work(self, request: Request) -> None:
        device: StandIn = self.require_device()
        how = request.args["how"]

        def job() -> str:
            if how == "bug":
                raise KeyError("a bug in the device job")
            if how == "unplug":
                raise DeviceError("/dev/stand-in: port vanished")
            if how == "hang":
                device.release.wait(20)
                raise DeviceError("/dev/stand-in: no reply")
            return how

        def finish(result: str) -> tuple[dict, dict]:
            if how == "finish_bug":
                raise ZeroDivisionError("a bug after the device answered")
            return {"done": result}, {"echo": result.encode()}

        self.run_job(request, job, finish, detail=f"working ({how})")

    def _cmd_bump(self, request: Request) -> None:
        """A second request waiting on the device (like the camera's frame request)."""
        self.require_device()
        self.begin(request, "")


@pytest.fixture
def standin(station_env):
    paths = Paths.resolve()
    daemon = StandInDaemon("dev0", paths)
    stop = threading.Event()

    def loop() -> None:
        daemon.setup()
        while not stop.is_set():
            daemon._iterate()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield daemon, paths
    stop.set()
    for device in daemon.opened:
        device.release.set()
    thread.join(5)
    daemon.shutdown()
    for publisher in daemon.publishers:
        publisher.close()
    daemon.commands.close()
    daemon.zap.close()
    daemon.ctx.term()


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_result_comes_back_with_named_payloads(standin, ctx):
    daemon, paths = standin
    wait_for(lambda: daemon.state == "ready")
    client = CommandClient(ctx, paths.cmd("dev0"))
    reply = client.call("work", {"how": "ok"}, timeout_s=5)
    assert reply.result == {"done": "ok"} and reply.names == ["echo"] and reply.payload("echo") == b"ok"
    with pytest.raises(CommandError, match="no payload 'image'"):
        reply.payload("image")
    client.close()


@pytest.mark.parametrize("how", ["bug", "finish_bug"])
def test_a_bug_inside_device_work_answers_internal_at_once(standin, ctx, how):
    daemon, paths = standin
    wait_for(lambda: daemon.state == "ready")
    client = CommandClient(ctx, paths.cmd("dev0"))
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        client.call("work", {"how": how}, timeout_s=20)
    assert caught.value.code == "internal" and "see the daemon's log" in caught.value.message
    assert time.monotonic() - started < 5   # the answer, not the 20 s deadline
    wait_for(lambda: daemon.state == "ready")  # a bug is not a lost device
    assert len(daemon.opened) == 1 and not daemon.in_flight
    client.close()


def test_a_lost_device_fails_every_waiting_request_at_once_and_is_reopened(standin, ctx):
    daemon, paths = standin
    wait_for(lambda: daemon.state == "ready")
    waiting = CommandClient(ctx, paths.cmd("dev0"))
    outcome: dict[str, Any] = {}

    def bump() -> None:
        try:
            waiting.call("bump", timeout_s=20)
        except StationError as exc:
            outcome["error"], outcome["after_s"] = exc, time.monotonic() - started

    started = time.monotonic()
    thread = threading.Thread(target=bump)
    thread.start()
    wait_for(lambda: len(daemon.in_flight) == 1)
    client = CommandClient(ctx, paths.cmd("dev0"))
    with pytest.raises(CommandError) as caught:
        client.call("work", {"how": "unplug"}, timeout_s=20)
    assert caught.value.code == "device_error" and "port vanished" in caught.value.message
    thread.join(10)
    assert outcome["error"].code == "device_error" and "went offline" in outcome["error"].message
    assert outcome["after_s"] < 5
    wait_for(lambda: daemon.opened[0].closed)  # closed on the worker, after what it was doing
    wait_for(lambda: daemon.state == "ready" and len(daemon.opened) == 2)  # reopened after the first step
    assert daemon.supervisor.losses == 1
    client.close()
    waiting.close()


def test_a_request_for_an_offline_device_is_refused_with_the_reason(standin, ctx):
    daemon, paths = standin
    wait_for(lambda: daemon.state == "ready")
    daemon.device = None  # as if lost between two ticks
    daemon.supervisor.next_open = time.monotonic() + 60
    daemon.detail = "stand-in device: unplugged"
    client = CommandClient(ctx, paths.cmd("dev0"))
    with pytest.raises(CommandError) as caught:
        client.call("work", {"how": "ok"}, timeout_s=5)
    assert caught.value.code == "device_error" and "offline (stand-in device: unplugged)" in caught.value.message
    client.close()
