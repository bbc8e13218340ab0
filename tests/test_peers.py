"""Peers are who they say: a process of another user that gets into the runtime directory
can neither command a daemon nor pass for a driver publishing its status."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from station.bus import CommandClient
from station.paths import Paths
from station.peers import COMMANDS, PUBLISHERS, Peer, PeerPolicy, parse_address
from tests.station_harness import BIN

pytestmark = pytest.mark.timeout(90)
NOBODY = 65534


def test_credentials_come_from_the_zap_address():
    assert parse_address(b"localhost:65534:65534:20991") == Peer(65534, 65534, 20991)
    assert parse_address(b"127.0.0.1") is None and parse_address(b"host:a:b:c") is None


def test_policy_station_user_and_root_everywhere_group_members_only_for_commands():
    policy = PeerPolicy(uid=1000, gid=4242)
    assert policy.allows(COMMANDS, Peer(1000, 1, 5)) and policy.allows(PUBLISHERS, Peer(0, 0, 5))
    operator = Peer(123456, 4242, 5)  # no passwd entry: its primary group is all we know
    assert policy.allows(COMMANDS, operator) and not policy.allows(PUBLISHERS, operator)
    stranger = Peer(NOBODY, NOBODY, 5)
    assert not policy.allows(COMMANDS, stranger) and not policy.allows(PUBLISHERS, stranger)
    assert not policy.allows(COMMANDS, None)


def as_user(uid: int, code: str, *args: str, env: dict) -> subprocess.Popen:
    """Run Python code as another user (setpriv, util-linux), with this checkout importable."""
    prefix = [] if uid == os.geteuid() else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return subprocess.Popen([*prefix, sys.executable, "-c", textwrap.dedent(code), *args],
                            env={**env, "PYTHONPATH": os.pathsep.join(sys.path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def open_rundir(provisioned):
    """The situation the check exists for: others can write in the runtime directory."""
    run = Paths.resolve().run
    os.chmod(run, 0o777)
    return provisioned


@pytest.fixture
def controller(open_rundir, ctx):
    proc = subprocess.Popen([str(BIN / "station-controller")], env=open_rundir["env"],
                            stderr=open(open_rundir["state"] / "controller.log", "wb"))
    client = CommandClient(ctx, Paths.resolve().cmd("controller"), name="controller")
    deadline = time.monotonic() + 20
    while True:
        try:
            client.call("ping", timeout_s=0.5)
            break
        except Exception:
            assert time.monotonic() < deadline and proc.poll() is None, "controller did not start"
    os.chmod(Paths.resolve().run / "controller.cmd", 0o666)
    yield client, open_rundir
    client.close()
    proc.terminate()
    proc.wait(5)


COMMAND = """
    import sys
    import zmq
    from station.bus import CommandClient
    from station.errors import DeadlineExceeded
    client = CommandClient(zmq.Context(), sys.argv[1], name="controller")
    try:
        print(client.call("status", timeout_s=3).result["station"])
    except DeadlineExceeded:
        print("no answer")
"""


def test_another_user_cannot_command_the_controller(controller):
    client, env = controller
    endpoint = Paths.resolve().cmd("controller")
    stranger = as_user(NOBODY, COMMAND, endpoint, env=env["env"])
    out, err = stranger.communicate(timeout=30)
    assert out.strip() == "no answer", err
    assert "refused a connection on station.cmd from uid 65534" in (env["state"] / "controller.log").read_text()
    own = as_user(os.geteuid(), COMMAND, endpoint, env=env["env"])  # the same code as the station's user
    assert own.communicate(timeout=30)[0].strip() == "VN-HP-0001"


ROGUE = """
    import sys, time
    import zmq
    from station.bus import Publisher
    publisher = Publisher(zmq.Context(), sys.argv[1], kind="fingerprint", src="fp0", boot="rogue")
    for _ in range(int(float(sys.argv[2]) * 10)):
        publisher.publish("status", {"state": "ready", "detail": "forged"})
        time.sleep(0.1)
"""


def test_a_forged_driver_is_not_believed_but_the_real_user_is(controller):
    client, env = controller
    endpoint = Paths.resolve().pub("fp0")
    rogue = as_user(NOBODY, ROGUE, endpoint, "4", env=env["env"])
    time.sleep(3)
    assert client.call("status").result["drivers"]["fp0"]["online"] is False
    rogue.wait(10)
    assert "refused a connection on station.pub from uid 65534" in (env["state"] / "controller.log").read_text()
    # the same publisher run as the station's own user is believed: the check, not chance,
    # kept the forged one out
    # (the deadline allows a slow start of the publisher's Python and libzmq's reconnect
    # back-off after the refusals on a loaded machine; it publishes for all of it)
    genuine = as_user(os.geteuid(), ROGUE, endpoint, "30", env=env["env"])
    deadline = time.monotonic() + 25
    while not client.call("status").result["drivers"]["fp0"]["online"]:
        assert time.monotonic() < deadline, "the station user's publisher was not heard"
        time.sleep(0.1)
    genuine.terminate()
    genuine.wait(5)
