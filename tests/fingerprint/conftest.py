"""Shared fixtures: emulators that always stop, scanners that always close."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from drivers.fingerprint.device import Scanner
from drivers.fingerprint.emulator import SensorEmulator


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., SensorEmulator]]:
    started: list[SensorEmulator] = []

    def make(**kwargs) -> SensorEmulator:
        emulator = SensorEmulator(**kwargs)
        emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def make_scanner() -> Iterator[Callable[..., Scanner]]:
    opened: list[Scanner] = []

    def make(port: str, open: bool = True, **kwargs) -> Scanner:
        kwargs.setdefault("command_timeout_s", 0.3)
        scanner = Scanner(port, **kwargs)
        opened.append(scanner)
        if open:
            scanner.open()
        return scanner

    yield make
    for scanner in opened:
        scanner.close()
