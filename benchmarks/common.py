"""What every benchmark prints the same way: progress lines, milliseconds, the machine."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np


def progress_for(benchmark: str) -> Callable[[str], None]:
    """A function printing ``<benchmark>: text`` on stderr (stdout is the JSON)."""
    def progress(text: str) -> None:
        print(f"{benchmark}: {text}", file=sys.stderr, flush=True)
    return progress


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def machine(load: tuple[float, float, float], allowed_cpus: Iterable[int] | None = None) -> dict[str, Any]:
    """The CPU, the cores this run could use and the load it started under."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    allowed = sorted(allowed_cpus if allowed_cpus is not None else os.sched_getaffinity(0))
    return {"cpu_model": model, "cpus": os.cpu_count(), "allowed_cpus": allowed,
            "load_average_at_start": [round(x, 2) for x in load], "python": platform.python_version()}


def astronaut_token() -> np.ndarray:
    """scikit-image's astronaut, head and shoulders at the camera's token size (480 x 640, BGR)."""
    from skimage import data as sample_images

    rgb = sample_images.astronaut()[0:360, 96:366]
    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (480, 640), interpolation=cv2.INTER_AREA)
