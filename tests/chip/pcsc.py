"""The pcscd of a test session (``drivers/chip/pcscd.py``) as a pytest fixture.

In a test module::

    from tests.chip.pcsc import pcscd_fixture, wait_card
    pcscd = pcscd_fixture()          # a session fixture named "pcscd"

    def test_x(pcscd):
        chip = ChipEmulator(port=pcscd.port(0))   # the card's side of "Virtual PCD 00 00"
        chip.insert()
        wait_card(pcscd.reader(0), present=True)

Tests must pass ``port=pcscd.port(0)``: the emulator's default 35963 is the system vpcd.
A missing package or a pcscd that does not come up fails the test (not a skip).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.chip import pcscd as stack
from drivers.chip.pcscd import SOCKET_NAME, Pcscd, PcscdError, point_clients_at, private_ipc_dir

__all__ = ["Pcscd", "pcscd_fixture", "wait_card"]


def wait_card(reader: str, *, present: bool, timeout_s: float = stack.CARD_TIMEOUT_S) -> None:
    try:
        stack.wait_card(reader, present=present, timeout_s=timeout_s)
    except PcscdError as exc:
        pytest.fail(exc.message, pytrace=False)


_daemon: Pcscd | None = None  # one per process: libpcsclite reads the socket name only once
_users = 0


def pcscd_fixture(scope: Any = "session", name: str = "pcscd", *,
                  private: bool = True) -> Callable[..., Iterator[Pcscd]]:
    """A pytest fixture (``name``, default session-scoped) yielding a started ``Pcscd``.
    Every module may make its own: they share the process's one daemon (started with the
    first fixture's ``private``), stopped when the last of them ends."""
    if private:
        point_clients_at(private_ipc_dir() / SOCKET_NAME)

    @pytest.fixture(scope=scope, name=name)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
        global _daemon, _users
        if _daemon is None:
            try:
                _daemon = Pcscd(tmp_path_factory.mktemp("pcscd"), private=private).start()
            except PcscdError as exc:
                pytest.fail(exc.message, pytrace=False)
        _users += 1
        try:
            yield _daemon
        finally:
            _users -= 1
            if _users == 0:
                _daemon.stop()
                _daemon = None

    return fixture
