"""Exclusive, process-lifetime locks: one daemon per instance name, one writer per store.

``flock`` on a file that records the holder's pid: the kernel drops the lock when the
holder dies (even by SIGKILL), so a crash never leaves a stale lock to clean up, and a
second copy learns at once who holds it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from station.errors import StationError

EX_TEMPFAIL = 75  # sysexits: another instance runs; units list it in RestartPreventExitStatus


class AlreadyRunning(StationError):
    code = "busy"
    retryable = True
    exit_status = EX_TEMPFAIL


def hold(path: Path, what: str) -> int:
    """Take the lock or raise ``AlreadyRunning`` naming the holder; returns the fd to keep
    open for as long as the lock is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"{what} is in use by another process (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
