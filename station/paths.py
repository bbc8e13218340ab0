"""Where the station keeps its files: config, state and runtime sockets.

Defaults are the appliance locations; each can be moved by environment variable
(``STATION_ETC``, ``STATION_STATE``, ``STATION_RUN``) or by a CLI flag, so tests and the
demo run unprivileged in a temporary directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    etc: Path
    state: Path
    run: Path

    @classmethod
    def resolve(
        cls,
        etc: str | os.PathLike | None = None,
        state: str | os.PathLike | None = None,
        run: str | os.PathLike | None = None,
    ) -> "Paths":
        """Flags win over environment, environment over the appliance defaults."""
        env = os.environ
        return cls(
            etc=Path(etc or env.get("STATION_ETC") or "/etc/station"),
            state=Path(state or env.get("STATION_STATE") or "/var/lib/station"),
            run=Path(run or env.get("STATION_RUN") or "/run/station"),
        )

    @property
    def keys(self) -> Path:
        """The station's private keys and the central public key (0700)."""
        return self.state / "keys"

    @property
    def store(self) -> Path:
        return self.state / "store"

    def endpoint(self, name: str, suffix: str) -> str:
        """The ``ipc://`` endpoint of socket ``<name>.<suffix>`` under the runtime dir."""
        return f"ipc://{self.run / f'{name}.{suffix}'}"

    def pub(self, name: str) -> str:
        return self.endpoint(name, "pub")

    def frames(self, name: str) -> str:
        return self.endpoint(name, "frames")

    def cmd(self, name: str) -> str:
        return self.endpoint(name, "cmd")
