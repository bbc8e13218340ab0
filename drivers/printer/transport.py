"""The byte pipes to a card printer, chosen by the ``port`` string of its configuration.

  /dev/ttyUSB0, /dev/serial/by-id/...    a serial port (pyserial), at ``baud``
  socket://host:port                      a network printer's raw TCP port (pyserial URL)
  /dev/usb/lp0, usblp:/path               a USB printer-class device (the kernel's usblp)

Every pipe has the same small interface (``Transport``): ``open()``, ``write(data)`` that
returns once all of it is written, ``read(timeout_s)`` that returns what arrived (at least
one byte) or b"" once the timeout passed, ``close()`` and a ``description`` naming the
port in error messages. Every failure is a DeviceError that names the port and what to
check; the pipe is closed after it, and ``open()`` may be called again.

Timeouts: ``write_timeout_s`` bounds one write on a serial port or socket (plus, on a
serial port, the line time of the largest frame, a 7-bit panel: 50 s at 115,200 baud), and
the time a USB printer may take no data at all; ``read`` waits at most its own
``timeout_s``, waking every ``_READ_SLICE_S`` on a serial port or network socket.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import termios
import time
from typing import Protocol

import serial

from drivers.printer.protocol import BITS_PER_PIXEL, MAX_TEXT, panel_bytes
from station.errors import DeviceError

log = logging.getLogger("printer.transport")

USBLP_PREFIX = "usblp:"
_USBLP_DEVICES = "/dev/usb/lp"
_READ_SLICE_S = 0.02
_READ_SIZE = 4096
_EMPTY_READS_AT_END = 3
_LARGEST_FRAME = panel_bytes(max(BITS_PER_PIXEL)) + MAX_TEXT  # a 7-bit panel and its header

# What a vanished serial port raises: pyserial wraps most errors, but lets termios.error
# (not an OSError) escape from a hung-up tty.
_SERIAL_ERRORS = (serial.SerialException, OSError, termios.error)


class Transport(Protocol):
    description: str

    def open(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def read(self, timeout_s: float) -> bytes: ...

    def close(self) -> None: ...


def transport_for(port: str, *, baud: int = 115200, write_timeout_s: float = 10.0) -> Transport:
    """The (unopened) pipe a ``port`` string names; ValueError for one that names none."""
    if port.startswith(USBLP_PREFIX):
        return UsbPrinterTransport(port[len(USBLP_PREFIX) :], write_timeout_s=write_timeout_s)
    if port.startswith(_USBLP_DEVICES):
        return UsbPrinterTransport(port, write_timeout_s=write_timeout_s)
    if "://" in port or port.startswith("/"):
        return SerialTransport(port, baud=baud, write_timeout_s=write_timeout_s)
    raise ValueError(
        f"printer port {port!r} is not a device path (/dev/ttyUSB0, /dev/serial/by-id/...), "
        f"a network printer (socket://host:9100) or a USB printer (/dev/usb/lp0, usblp:/path)"
    )


class SerialTransport:
    """A serial port by path, or any pyserial URL (``socket://host:port``)."""

    def __init__(self, url: str, *, baud: int = 115200, write_timeout_s: float = 10.0):
        self.url = url
        self.baud = baud
        self.is_network = url.startswith("socket://")
        self.is_url = "://" in url
        # A write returns only once the frame is on the line: give a serial port the
        # largest frame's line time (10 bits a byte) on top; a socket has no line rate.
        line_time_s = 0.0 if self.is_url else _LARGEST_FRAME * 10 / baud
        self.write_timeout_s = write_timeout_s + line_time_s
        self.description = url if self.is_url else f"{url} at {baud} baud"
        self._port: serial.SerialBase | None = None

    def _advice(self) -> str:
        if self.is_network:
            return "check the printer's address and port, that it is powered on and on the network"
        if self.is_url:
            return "check the URL"
        return (
            "check the cable, the port name (ls /dev/serial/by-id/), the baud rate and that "
            "no other program holds the port"
        )

    def open(self) -> None:
        self.close()
        try:
            port = serial.serial_for_url(self.url, do_not_open=True)
            port.baudrate = self.baud
            port.timeout = _READ_SLICE_S
            port.write_timeout = self.write_timeout_s
            if not self.is_url:
                port.exclusive = True
            port.open()
        except (*_SERIAL_ERRORS, ValueError) as exc:
            raise DeviceError(
                f"cannot open card printer {self.description}: {exc}; {self._advice()}"
            ) from exc
        self._port = port

    def _failed(self, what: str, exc: Exception) -> DeviceError:
        self.close()
        return DeviceError(
            f"card printer {self.description} {what}: {exc}; the port was closed, {self._advice()}"
        )

    def _open_port(self) -> serial.SerialBase:
        if self._port is None:
            raise DeviceError(f"card printer {self.description} is not open; call open()")
        return self._port

    def write(self, data: bytes) -> None:
        port = self._open_port()
        try:
            # No flush (tcdrain has no timeout): once write returns, at most the kernel's
            # buffer is still on its way, which the reply timeout covers.
            written = port.write(data)
        except serial.SerialTimeoutException as exc:
            raise self._failed(f"took no data for {self.write_timeout_s:.1f} s", exc) from exc
        except _SERIAL_ERRORS as exc:
            raise self._failed("failed on write", exc) from exc
        if written is not None and written != len(data):
            raise self._failed("failed on write", OSError(f"wrote {written} of {len(data)} bytes"))

    def read(self, timeout_s: float) -> bytes:
        port = self._open_port()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                waiting = port.in_waiting
                if waiting or timeout_s > 0:
                    data = port.read(max(1, waiting))
                    # A socket's in_waiting is 1 while anything is left, not a count.
                    while data and len(data) < _READ_SIZE and port.in_waiting:
                        data += port.read(port.in_waiting)
                    if data:
                        return data
            except _SERIAL_ERRORS as exc:
                raise self._failed("stopped answering", exc) from exc
            if time.monotonic() >= deadline:
                return b""

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except _SERIAL_ERRORS as exc:
                log.debug("closing %s: %s", self.description, exc)


class UsbPrinterTransport:
    """A USB printer-class device file (``/dev/usb/lpN``): non-blocking reads and writes
    under ``select``, so neither a silent printer nor a stalled one blocks past a timeout."""

    _ADVICE = (
        "check the USB cable and the printer's power, that the usblp module is loaded and "
        "that no other program (CUPS) holds the device"
    )

    def __init__(self, path: str, *, write_timeout_s: float = 10.0):
        self.path = path
        self.write_timeout_s = write_timeout_s
        self.description = f"USB printer {path}"
        self._fd: int | None = None

    def open(self) -> None:
        self.close()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            hint = " (another program has it open)" if exc.errno == errno.EBUSY else ""
            raise DeviceError(
                f"cannot open card printer {self.description}: {exc.strerror}{hint}; {self._ADVICE}"
            ) from exc

    def _failed(self, what: str, exc: Exception | str) -> DeviceError:
        self.close()
        return DeviceError(
            f"card printer {self.description} {what}: {exc}; the device was closed, {self._ADVICE}"
        )

    def _open_fd(self) -> int:
        if self._fd is None:
            raise DeviceError(f"card printer {self.description} is not open; call open()")
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._open_fd()
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout_s
        while view:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                    what = f"took no data for {self.write_timeout_s:.1f} s"
                    raise self._failed(what, f"{len(view)} of {len(data)} bytes not written")
                view = view[os.write(fd, view) :]
                deadline = time.monotonic() + self.write_timeout_s  # it took some: not stalled
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._failed("failed on write", exc) from exc

    def read(self, timeout_s: float) -> bytes:
        fd = self._open_fd()
        deadline = time.monotonic() + max(0.0, timeout_s)
        # usblp completes a read with no bytes when the printer sends an empty packet, and
        # select then waits for the next one; a descriptor readable yet empty time after
        # time is at its end (a hung-up line, a regular file).
        for _ in range(_EMPTY_READS_AT_END):
            try:
                if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    return b""
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return b""
            except OSError as exc:
                raise self._failed("stopped answering", exc) from exc
            if data:
                return data
        raise self._failed("stopped answering", "end of file (unplugged?)")

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.debug("closing %s: %s", self.description, exc)
