"""The emulator toolkit: what every device emulator shares, so each writes only its device.

An emulator speaks its device's protocol from the device side, so the driver that talks
to it is the driver that talks to hardware. Around that protocol every emulator needs the
same few things, here once:

- ``PtyDevice``: the device end of a pseudo-terminal, served in a thread. A stable
  ``link`` (a symlink re-pointed on every replug, like ``/dev/serial/by-id/...``), unplug
  and replug (the pty closes, so the host sees the port vanish), output paced at the line
  rate (10 bits a byte, as on a UART) when a baud is given, and a host that stops reading
  is dropped after ``WRITE_STALL_S`` rather than waited for. A subclass implements
  ``on_bytes(data)`` and answers with ``send(data)``.
- ``FaultSpec``: a fault spec string ``key=value,...`` parsed into a frozen dataclass of
  the emulator's faults, with errors naming the bad item and what is allowed.
- ``ControlChannel`` and ``send_command``: a Unix datagram socket taking one text command
  per datagram, answered ``ok <what changed>`` or ``error <why>; usage: ...``, served in
  its own thread or polled from the emulator's own loop.
- ``wait_for_stop``: the ``main()`` of an emulator prints its device path first (the line
  scripts and tests read) and serves until SIGTERM or SIGINT.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import secrets
import select
import signal
import socket
import termios
import threading
import time
import tty
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

log = logging.getLogger("drivers.emulation")

POLL_S = 0.05
WRITE_STALL_S = 2.0  # a host that reads nothing for this long has gone; drop the reply
CHUNK_BYTES = 64     # pacing granularity, about a UART FIFO's worth
MAX_DATAGRAM = 4096
MAX_SECONDS = 86400

F = TypeVar("F", bound="FaultSpec")


# -- fault specs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultSpec:
    """Base of an emulator's faults: subclass with fields; every field is seconds unless
    named in ``probabilities`` (0..1) or ``counts`` (whole numbers, e.g. a seed or the
    card a jam happens on)."""

    probabilities: ClassVar[tuple[str, ...]] = ()
    counts: ClassVar[tuple[str, ...]] = ("seed",)

    @classmethod
    def parse(cls: type[F], spec: str | None) -> F:
        """Parse ``key=value,...``; raise ValueError naming the bad item and the fix."""
        faults = cls()
        if not spec or not spec.strip() or spec.strip().lower() == "none":
            return faults
        known = {f.name for f in dataclasses.fields(cls)}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"fault spec item {item!r} must be key=value")
            if key not in known:
                raise ValueError(f"fault spec item {item!r}: unknown fault {key!r}; known: {', '.join(sorted(known))}")
            try:
                value: float | int = int(text) if key in cls.counts else float(text)
            except ValueError:
                kind = "a whole number" if key in cls.counts else "a number"
                raise ValueError(f"fault spec item {item!r}: {text!r} is not {kind}") from None
            if key in cls.probabilities and not 0.0 <= value <= 1.0:
                raise ValueError(f"fault spec item {item!r}: a probability must be within 0..1")
            if key in cls.counts and value < 0:
                raise ValueError(f"fault spec item {item!r}: must be 0 or more")
            if key not in cls.probabilities and key not in cls.counts and not 0.0 <= value < MAX_SECONDS:
                raise ValueError(f"fault spec item {item!r}: seconds must be within 0..{MAX_SECONDS}")
            faults = dataclasses.replace(faults, **{key: value})
        return faults

    def __str__(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name):g}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return ",".join(changed) or "none"


def seconds(text: str) -> float:
    """A control command's seconds argument, checked."""
    value = float(text)
    if not 0.0 <= value < MAX_SECONDS:
        raise ValueError(f"seconds must be within 0..{MAX_SECONDS}, not {text}")
    return value


# -- the pseudo-terminal device -------------------------------------------------------------
class Unplugged(Exception):
    """The port went away (or the emulator is stopping) while a reply was being written."""


@dataclass
class PortStats:
    bytes_received: int = 0
    bytes_sent: int = 0
    replies_dropped: int = 0
    unplugs: int = 0


class PtyDevice(ABC):
    """The device side of a pty. ``start()`` returns the port path and serves in a thread."""

    thread_name = "emulator"
    description = "device emulator"  # for the log: "sensor emulator on /dev/pts/3"

    def __init__(self, *, baud: int | None = None, link: Path | str | None = None):
        self.baud = baud
        self.link = Path(link) if link is not None else None
        self.port_stats = PortStats()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._unplug_request: float | None = None
        self._line_clock = 0.0
        self._master: int | None = None
        self._slave: int | None = None
        self._path: str | None = None
        self._plugged = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what a device implements ---------------------------------------------------------
    @abstractmethod
    def on_bytes(self, data: bytes) -> None:
        """Bytes from the host (serving thread); answer with ``send()``."""

    def on_unplug(self) -> None:
        """The port was pulled: forget half-received input."""

    def on_start(self) -> None:
        """Just before serving starts (timers of start-up faults)."""

    def line_baud(self) -> int | None:
        """The line rate output is paced to now (a device may switch speed); None: unpaced."""
        return self.baud

    # -- control --------------------------------------------------------------------------
    def start(self) -> str:
        """Open the pty (and link) and serve; returns the path a host should open."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._open_pty()
        self.on_start()
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._close_pty()

    def __enter__(self) -> "PtyDevice":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """The link when there is one (stable across replugs), else the current /dev/pts/N."""
        if self.link is not None:
            return str(self.link)
        if self._path is None:
            raise RuntimeError("emulator not started")
        return self._path

    @property
    def pts(self) -> str | None:
        return self._path

    @property
    def plugged(self) -> bool:
        return self._plugged.is_set()

    def wait_plugged(self, timeout_s: float) -> bool:
        return self._plugged.wait(timeout_s)

    def unplug(self, seconds: float) -> None:
        """Close the pty now (the host sees the port vanish) and open a fresh one later."""
        with self._lock:
            self._unplug_request = max(0.0, seconds)
            self._plugged.clear()

    def unplug_later(self, after_s: float, replug_s: float) -> None:
        timer = threading.Timer(after_s, self.unplug, args=(replug_s,))
        timer.daemon = True
        timer.start()

    # -- output ---------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Write all of ``data``, paced to the line rate when a baud is set. Returns False
        when the host stopped reading (the reply is dropped); raises ``Unplugged`` when the
        port is pulled or the emulator stops mid-write."""
        view = memoryview(data)
        # A reply goes out back to back, as from a UART: the line clock starts when the line
        # is idle and then only advances by line time, so a late wake-up from one sleep is
        # made up by the next instead of adding up over a 40 kB upload.
        self._line_clock = max(self._line_clock, time.monotonic())
        baud = self.line_baud()
        while view:
            chunk = view[:CHUNK_BYTES] if baud else view
            if baud:
                # A byte is on the host's side only once its last bit has crossed the line.
                self._line_clock += len(chunk) * 10 / baud
                delay = self._line_clock - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            master = self._master
            if master is None or self._cut_off():
                raise Unplugged()
            try:
                written = write_all(master, chunk, lambda fd: not self._cut_off() and wait_writable(fd))
            except OSError:
                raise Unplugged() from None
            self.port_stats.bytes_sent += written
            view = view[written:]
            if written < len(chunk):
                if self._cut_off():
                    raise Unplugged()
                self.port_stats.replies_dropped += 1
                log.warning("%s: host is not reading; dropped %d bytes of a reply", self.description, len(view))
                return False
        return True

    def _cut_off(self) -> bool:
        return self._unplug_request is not None or self._stopping.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait like a device does (a card moving, a slow reply); False if stopping."""
        return not self._stopping.wait(seconds)

    # -- the pty --------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        # Keep our own slave descriptor open: without any opener the master reads EIO, and
        # the host may open and close the port many times during our lifetime.
        self._master, self._slave = master, slave
        self._path = os.ttyname(slave)
        self._line_clock = time.monotonic()
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._path)
            os.replace(tmp, self.link)
        self._plugged.set()
        log.info("%s on %s%s", self.description, self._path, f" (link {self.link})" if self.link else "")

    def _close_pty(self) -> None:
        self._plugged.clear()
        if self.link is not None and self.link.is_symlink():
            self.link.unlink(missing_ok=True)
        master, slave, self._master, self._slave = self._master, self._slave, None, None
        for fd in (master, slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:
                    log.debug("closing pty fd %d: %s", fd, exc)

    def _take_unplug_request(self) -> float | None:
        with self._lock:
            request, self._unplug_request = self._unplug_request, None
            return request

    def _serve(self) -> None:
        while not self._stopping.is_set():
            request = self._take_unplug_request()
            if request is not None:
                log.info("unplugged %s for %.1f s", self._path, request)
                self.port_stats.unplugs += 1
                self._close_pty()
                self.on_unplug()
                if self._stopping.wait(request):
                    return
                self._open_pty()
                continue
            assert self._master is not None
            try:
                ready, _, _ = select.select([self._master], [], [], POLL_S)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # no opener on the slave side (we hold one)
                    time.sleep(POLL_S)
                    continue
                log.error("emulator port %s failed, serving stopped: %s", self._path, exc)
                self._plugged.clear()
                return
            self.port_stats.bytes_received += len(data)
            try:
                self.on_bytes(data)
            except Unplugged:
                continue
            except Exception:  # a handler bug must not kill the device
                log.exception("%s failed handling %d bytes", self.description, len(data))


def wait_writable(fd: int, timeout_s: float = POLL_S) -> bool:
    select.select([], [fd], [], timeout_s)
    return True


def write_all(fd: int, data: bytes | memoryview, wait: Callable[[int], bool],
              stall_s: float = WRITE_STALL_S) -> int:
    """Write ``data`` to a non-blocking ``fd`` whose reader may be slow; returns the bytes
    written, fewer than all when the reader took nothing for ``stall_s`` (it hung) or
    ``wait(fd)``, called while the reader is full, returns False (stop writing). Errors of
    ``os.write`` (a reader gone: ``BrokenPipeError``) are the caller's to interpret."""
    view = memoryview(data)
    total = 0
    stalled_since: float | None = None
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            written = 0
        if written:
            view = view[written:]
            total += written
            stalled_since = None
            continue
        now = time.monotonic()
        stalled_since = stalled_since or now
        if now - stalled_since > stall_s or not wait(fd):
            break
    return total


# -- the control channel --------------------------------------------------------------------
class ControlChannel:
    """A Unix datagram socket at ``path``; each datagram is one command for ``handler``.

    ``handler(line)`` returns what changed (the reply is ``ok <that>``) or raises
    ``ValueError`` with the reason (``error <reason>; usage: <usage>``). Serve it in its
    own thread with ``start()``, or poll ``fileno()`` and call ``service()`` from the
    emulator's own loop (a camera writing frames between commands).
    """

    def __init__(self, path: Path | str, handler: Callable[[str], str], usage: str, name: str = "emulator"):
        self.path = Path(path)
        self.handler = handler
        self.usage = usage
        self.name = name
        self.commands = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        self._socket.setblocking(False)

    def fileno(self) -> int:
        return self._socket.fileno()

    def start(self) -> "ControlChannel":
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-control", daemon=True)
        self._thread.start()
        log.info("%s: control channel on %s", self.name, self.path)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._socket.close()
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._socket], [], [], POLL_S * 2)
            if ready:
                self.service()

    def service(self) -> None:
        """Answer every command waiting on the socket (non-blocking)."""
        while True:
            try:
                data, sender = self._socket.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("%s: control receive failed: %s", self.name, exc)
                return
            reply = self.answer(data.decode("utf-8", errors="replace"))
            if sender:
                try:
                    self._socket.sendto(reply.encode(), sender)
                except OSError as exc:  # the sender left without waiting for its answer
                    log.debug("control reply to %r not sent: %s", sender, exc)

    def answer(self, line: str) -> str:
        reply = answer(self.handler, line, self.usage, self.name)
        if reply.startswith("ok "):
            self.commands += 1
        else:
            self.refused += 1
        return reply


def answer(handler: Callable[[str], str], line: str, usage: str, name: str = "emulator") -> str:
    """``ok <what changed>`` or ``error <why>; usage: ...`` for one control command."""
    try:
        reply = "ok " + handler(line)
        log.info("%s control: %s", name, reply[:200])
    except ValueError as exc:
        reply = f"error {line.strip()!r}: {exc}; usage: {usage}"
        log.warning("%s control: %s", name, reply)
    except Exception as exc:  # a bug in a command must not end the channel
        reply = f"error {line.strip()!r} failed: {exc}"
        log.exception("%s: control command %r failed", name, line.strip())
    return reply


def send_command(path: Path | str, line: str, timeout_s: float = 2.0) -> str:
    """Send one command to an emulator's control channel; return its ``ok``/``error`` reply.

    e.g. ``python -c 'from drivers.emulation import send_command as s; print(s("/tmp/fp.ctl", "nofinger 3"))'``
    or, without a reply, ``socat - UNIX-SENDTO:/tmp/fp.ctl <<< "nofinger 3"``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        # An abstract address (Linux): a reply address without a file to clean up.
        client.bind(f"\0station-emulator-control-{os.getpid()}-{secrets.token_hex(4)}")
        client.settimeout(timeout_s)
        client.sendto(line.encode(), str(path))
        try:
            return client.recv(65536).decode()
        except socket.timeout:
            raise TimeoutError(f"no reply from the emulator control channel {path} within {timeout_s:g} s") from None


def words(line: str) -> tuple[str, list[str]]:
    """A control command's verb (lower case) and arguments; ValueError when empty."""
    parts = line.split()
    if not parts:
        raise ValueError("empty command")
    return parts[0].lower(), parts[1:]


# -- main ------------------------------------------------------------------------------------
def wait_for_stop(first_line: str, *, poll_s: float = 0.5) -> None:
    """Print the emulator's device path (the contract scripts read), then block until
    SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(first_line, flush=True)
    while not stop.wait(poll_s):
        pass


def stats_dict(*parts: Any) -> dict[str, Any]:
    """Counters of several dataclasses as one mapping (for a ``status`` command)."""
    out: dict[str, Any] = {}
    for part in parts:
        out.update(dataclasses.asdict(part))
    return out
