"""The shared daemon runtime, exercised through a real station-controller process:
sd_notify datagrams in order, SIGHUP reload (valid and invalid), SIGTERM within 2 s."""
import os
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from station.bus import CommandClient, Subscriber
from station.errors import DeadlineExceeded
from station.logs import JournalFormatter
from station.paths import Paths
from station.sdnotify import Notifier

pytestmark = pytest.mark.timeout(60)
BIN = Path(sysconfig.get_path("scripts"))


@pytest.fixture
def notify_socket(rundir):
    path = rundir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield path, sock
    sock.close()


def datagrams(sock, until, timeout_s=10.0):
    """Collect notify datagrams until one contains ``until``."""
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            break
        if data == "WATCHDOG=1" and until != "WATCHDOG=1":
            continue  # keep-alives interleave with everything; checked on their own
        got.append(data)
        if until in data:
            return got
    raise AssertionError(f"never got {until!r}; got {got}")


def start_controller(station_env, notify_path, watchdog_usec=None):
    env = dict(station_env["env"], NOTIFY_SOCKET=str(notify_path))
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return subprocess.Popen([str(BIN / "station-controller")], env=env, stderr=subprocess.PIPE)


def test_notify_sequence_reload_and_clean_stop(provisioned, notify_socket, ctx):
    path, sock = notify_socket
    proc = start_controller(provisioned, path, watchdog_usec=400_000)
    try:
        first = datagrams(sock, "READY=1")
        assert any("STATUS=ready" in d for d in first)
        watchdog = datagrams(sock, "WATCHDOG=1")  # every 0.2 s while healthy
        assert watchdog

        paths = Paths.resolve()
        events = Subscriber(ctx, [paths.pub("controller")], topics=["station.controller.config"])
        client = CommandClient(ctx, paths.cmd("controller"), name="controller")
        before = client.call("state").result["config"]
        assert before["command_timeout_s"] == 5
        time.sleep(0.3)  # let the subscription reach the publisher

        # a valid change is applied live
        (provisioned["etc"] / "controller.yaml").write_text("command_timeout_s: 7\n")
        proc.send_signal(signal.SIGHUP)
        reload = datagrams(sock, "READY=1")
        assert "RELOADING=1" in reload[0]
        assert client.call("state").result["config"]["command_timeout_s"] == 7
        msg = events.receive(timeout_ms=3000)
        assert msg.event == "config.applied"

        # an invalid one is rejected, says why, and the running config stays
        (provisioned["etc"] / "controller.yaml").write_text("command_timeout_s: -3\nbogus: 1\n")
        proc.send_signal(signal.SIGHUP)
        reload = datagrams(sock, "READY=1")
        assert "RELOADING=1" in reload[0]
        msg = events.receive(timeout_ms=3000)
        assert msg.event == "config.rejected"
        problems = "\n".join(msg.get("problems"))
        assert "controller.yaml:1" in problems and "command_timeout_s" in problems
        assert "controller.yaml:2" in problems and "bogus" in problems
        assert client.call("state").result["config"]["command_timeout_s"] == 7

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stopping = datagrams(sock, "STOPPING=1")
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
        assert stopping
        events.close()
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    with pytest.raises(DeadlineExceeded):
        client = CommandClient(ctx, Paths.resolve().cmd("controller"))
        client.call("ping", timeout_s=0.3)


def test_invalid_config_at_start_is_one_clear_message(station_env, notify_socket):
    path, _ = notify_socket
    (station_env["etc"] / "controller.yaml").write_text("store:\n  retention_days: many\n")
    proc = start_controller(station_env, path)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 78
    text = err.decode()
    assert "controller.yaml:2" in text and "retention_days" in text
    assert "Traceback" not in text


def test_notifier_is_silent_outside_systemd():
    n = Notifier(environ={})
    assert not n.enabled and n.ready("x") is False and n.watchdog_interval_s is None


def test_notifier_abstract_socket_and_watchdog_pid():
    n = Notifier(environ={"NOTIFY_SOCKET": "@station-test", "WATCHDOG_USEC": "2000000",
                          "WATCHDOG_PID": str(os.getpid())})
    assert n.address == "\0station-test" and n.watchdog_interval_s == 0.5  # a quarter of WatchdogSec
    other = Notifier(environ={"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None


def test_journal_lines_carry_a_priority_prefix_and_no_timestamp():
    import logging
    record = logging.LogRecord("fingerprint.fp0", logging.WARNING, __file__, 1, "port gone\nretrying", None, None)
    lines = JournalFormatter("%(name)s: %(message)s").format(record).splitlines()
    assert lines == ["<4>fingerprint.fp0: port gone", "<4>retrying"]
