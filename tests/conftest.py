import os
import signal
import tempfile
from pathlib import Path

import pytest
import zmq


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def rundir():
    """A short runtime dir: ipc socket paths must stay under ~100 bytes."""
    with tempfile.TemporaryDirectory(prefix="st-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def station_env(tmp_path, rundir, monkeypatch):
    """etc/state/run directories for one test, exported the way daemons read them."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    monkeypatch.setenv("STATION_ETC", str(etc))
    monkeypatch.setenv("STATION_STATE", str(state))
    monkeypatch.setenv("STATION_RUN", str(rundir))
    return {"etc": etc, "state": state, "run": rundir, "env": dict(os.environ)}


@pytest.fixture
def provisioned(station_env):
    """A provisioned station (keys in its state dir) and central's test key pair."""
    from station import keyring

    central_key, central_pub = keyring.write_central_pair(station_env["state"].parent / "central")
    keyring.provision(station_env["state"] / "keys", "VN-HP-0001", central_pub.read_bytes())
    return {**station_env, "central_key": central_key, "central_pub": central_pub}


@pytest.fixture
def station(provisioned):
    """A provisioned station whose delivered records may be purged at once (retention 0)."""
    (provisioned["etc"] / "controller.yaml").write_text("store:\n  retention_days: 0\n  fsync: false\n")
    return provisioned


@pytest.fixture
def central(station, tmp_path):
    """Central's collector gateway (not started), allowing ``station``; killed at the end."""
    from delivery_harness import Central
    from station import keyring

    gateway = Central(tmp_path / "central", [station["state"] / "keys" / keyring.STATION_PUB])
    yield gateway
    gateway.stop(signal.SIGKILL)
