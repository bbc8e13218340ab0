"""Shared fixtures: one emulated scene and one analyzer for the whole session.

Building the scene cuts the portrait out of astronaut() with GrabCut (about half a
second), so it is done once; every test renders its own frames from it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drivers.camera.detector import make_detector
from drivers.camera.quality import FaceAnalyzer
from drivers.camera.scene import Scene

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture(scope="session")
def defaults() -> dict:
    return yaml.safe_load((CONFIG_DIR / "camera.yaml").read_text())


@pytest.fixture(scope="session")
def scene() -> Scene:
    return Scene(1280, 720, seed=0)


@pytest.fixture(scope="session")
def analyzer(defaults) -> FaceAnalyzer:
    return FaceAnalyzer(defaults["quality"], make_detector(defaults["detector"]))
