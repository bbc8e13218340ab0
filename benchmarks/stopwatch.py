"""Time spent inside named functions, for a benchmark's breakdown of where a figure goes."""
from __future__ import annotations

import functools
import time
from typing import Any, Callable


class Stopwatch:
    """Time spent inside wrapped functions, per name, since the last ``reset``."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def reset(self) -> None:
        self.spent = {}

    def wrap(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - started
        return timed
