"""Which filesystem a benchmark writes to: an fsync on tmpfs costs nothing, so a durability
figure measured there would mean nothing."""
from __future__ import annotations

from pathlib import Path


def fs_type(path: Path) -> str:
    """The filesystem under ``path`` (longest matching mount point)."""
    best, kind = "", "?"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            if str(path).startswith(point) and len(point) > len(best):
                best, kind = point, fstype
    return kind
