"""Host-side driver for a ZFM / R30x / AS608 fingerprint sensor on a serial port.

A thin I/O loop over ``protocol.py``: write a command frame, feed what the port returns
to a ``PacketReader``, hand back the ack. The protocol has no sequence numbers or
retransmission of its own, so this layer adds them the Klipper way: every command has a
timeout, a command that timed out or came back corrupt is sent again with the timeout
doubled, at most ``retries`` times, and a definite answer from the sensor (any
confirmation code but "packet receive error") is never retried here: asking again would
not change it. Before each retry the reply stream is resynchronised (see ``_resync``) so a
late reply to the first attempt is never taken for the answer to the second.

Timeouts, in one place (``command_timeout_s`` = T, ``retries`` = R):
- a command: attempt k waits up to T * 2**k for its ack, after a resynchronisation that
  waits up to as long; at most ``total_command_budget_s`` = T * (2 * (2**(R+1) - 1) - 1);
- an image upload: each attempt waits up to T * 2**k between packets and at most that plus
  twice the transfer's line time in all; a corrupt or short transfer is retried whole;
- ``wait_finger``: polls GenImg until its own timeout, plus at most one command's budget.
A port error (unplugged, EIO) closes the port and raises DeviceError at once; ``open()``
again once the port is back.
"""
from __future__ import annotations

import logging
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import serial

from drivers.fingerprint import protocol as fp
from drivers.fingerprint.protocol import Confirmation, Instruction, PacketType
from station.errors import DeviceError, ProtocolError

log = logging.getLogger("fingerprint.device")

_READ_SLICE_S = 0.02  # how often a blocked read wakes to check its deadline
_POLL_INTERVAL_S = 0.1  # between GenImg attempts while waiting for a finger

Progress = Callable[[int, int], None]

# What a vanished port raises: pyserial wraps most errors, but lets termios.error (not an
# OSError) escape from tcflush on a hung-up tty.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class _Timeout(Exception):
    """No complete reply before the attempt's deadline (internal: becomes a retry)."""


@dataclass
class ScannerStats:
    commands: int = 0
    retries: int = 0
    timeouts: int = 0
    corrupt_replies: int = 0
    dropped_bytes: int = 0
    uploads: int = 0


class Scanner:
    """One sensor on one serial port. Not thread-safe: one owner drives it."""

    def __init__(
        self,
        port: str,
        baud: int = 57600,
        address: int = fp.DEFAULT_ADDRESS,
        password: int = 0,
        command_timeout_s: float = 1.0,
        retries: int = 3,
    ):
        fp.baud_multiple(baud)  # refuse an impossible baud before touching the port
        if command_timeout_s <= 0 or retries < 0:
            raise ValueError("command_timeout_s must be > 0 and retries >= 0")
        self.port = port
        self.baud = baud
        self.address = address
        self.password = password
        self.command_timeout_s = command_timeout_s
        self.retries = retries
        self.system_parameters: fp.SystemParameters | None = None
        self.stats = ScannerStats()
        self._serial: serial.Serial | None = None
        self._reader = fp.PacketReader(address=address)
        self._pending: list[fp.Packet] = []  # arrived together with an ack, not yet used

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> fp.SystemParameters:
        """Open the port exclusively and identify the sensor (VfyPwd, ReadSysPara)."""
        self.close()
        try:
            self._serial = serial.Serial(
                self.port,
                self.baud,
                timeout=_READ_SLICE_S,
                write_timeout=self.command_timeout_s,
                exclusive=True,
            )
            self._serial.reset_input_buffer()
        except (*_PORT_ERRORS, ValueError) as exc:
            self._serial = None
            raise DeviceError(
                f"cannot open fingerprint scanner port {self.port}: {exc}; "
                "check the cable and that no other program holds the port"
            ) from exc
        self._reader = fp.PacketReader(address=self.address)
        try:
            self.command(Instruction.VFY_PWD, password=self.password)
            ack = self.command(Instruction.READ_SYS_PARA)
            self.system_parameters = fp.SystemParameters.from_ack(ack)
        except DeviceError:
            self.close()
            raise
        except ProtocolError as exc:
            self.close()
            raise DeviceError(
                f"no ZFM/R30x fingerprint sensor answered on {self.port} at {self.baud} baud: "
                f"{exc}; check the port, the baud rate and the sensor's power"
            ) from exc
        log.info(
            "fingerprint sensor on %s: library %d, packet size %d, %d baud",
            self.port,
            self.system_parameters.library_size,
            self.system_parameters.packet_size,
            self.system_parameters.baud,
        )
        return self.system_parameters

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except _PORT_ERRORS as exc:
                log.debug("closing %s: %s", self.port, exc)

    def __enter__(self) -> "Scanner":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- commands ------------------------------------------------------------------------

    def command(self, instruction: Instruction, **params: int) -> fp.Ack:
        """Send a command and return its OK ack; SensorError for any other confirmation."""
        return self.transact(instruction, **params).raise_for_confirmation(instruction, self.port)

    def transact(self, instruction: Instruction, *, retries: int | None = None, **params: int) -> fp.Ack:
        """Send a command and return its ack whatever its confirmation code, retrying only
        when the reply timed out or arrived corrupt (``retries`` times, default the
        scanner's)."""
        retries = self.retries if retries is None else retries
        payload = fp.encode_command(instruction, **params)
        last: Exception | None = None
        for attempt in range(retries + 1):
            timeout_s = self._attempt_timeout(attempt)
            try:
                if attempt:
                    self.stats.retries += 1
                    log.info("%s: retrying %s (attempt %d): %s", self.port, instruction.name, attempt + 1, last)
                    self._resync(timeout_s)
                self._send(payload)
                ack = self._await_ack(instruction, timeout_s)
                if ack.confirmation == Confirmation.PACKET_RECEIVE_ERROR:
                    # The sensor saying it got garbage is a link error, not an answer.
                    raise ProtocolError(f"{self.port}: the sensor received a corrupt {instruction.name}")
                return ack
            except (_Timeout, ProtocolError) as exc:
                last = exc
        raise ProtocolError(
            f"{self.port}: no valid reply to {instruction.name} after {retries + 1} attempts "
            f"(up to {self.command_budget_s(retries):.1f} s): {last}",
        )

    @property
    def total_command_budget_s(self) -> float:
        """The longest a command can take: each attempt after the first is preceded by a
        resynchronisation with the same timeout."""
        return self.command_budget_s(self.retries)

    def command_budget_s(self, retries: int) -> float:
        return self.command_timeout_s * (2 * (2 ** (retries + 1) - 1) - 1)

    def echo(self, retries: int | None = None) -> float:
        """Liveness: GetEcho round trip in seconds; raises when the sensor does not answer.
        A liveness probe passes few ``retries`` so that a silent sensor shows in seconds."""
        started = time.monotonic()
        ack = self.transact(Instruction.GET_ECHO, retries=retries)
        if ack.confirmation != fp.MODULE_OK:
            raise DeviceError(f"{self.port}: GetEcho answered 0x{ack.confirmation:02X}, not 0x55")
        return time.monotonic() - started

    def take_image(self) -> bool:
        """One GenImg: True when an image is in the sensor's buffer, False for no finger."""
        ack = self.transact(Instruction.GEN_IMG)
        if ack.confirmation == Confirmation.NO_FINGER:
            return False
        ack.raise_for_confirmation(Instruction.GEN_IMG, self.port)
        return True

    def wait_finger(
        self, timeout_s: float, cancel: threading.Event | Callable[[], bool] | None = None
    ) -> bool:
        """Poll GenImg until a finger is imaged (True), or timeout / cancel (False).

        ``cancel`` is an Event or any callable returning True to stop (e.g. ``event.is_set``).
        """
        cancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        deadline = time.monotonic() + timeout_s
        while True:
            if cancelled is not None and cancelled():
                return False
            if self.take_image():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause = min(_POLL_INTERVAL_S, remaining)
            if isinstance(cancel, threading.Event):
                cancel.wait(pause)
            else:
                time.sleep(pause)

    def upload_image(self, progress: Progress | None = None) -> np.ndarray:
        """UpImage: the sensor's image buffer as 288 x 256 uint8. A transfer that is short,
        long, or has a corrupt packet is retried whole and never returned."""
        packet_size = self._parameters().packet_size
        packets = -(-fp.IMAGE_BYTES // packet_size)
        line_time_s = (fp.IMAGE_BYTES + packets * 11 + 12) * 10 / self.baud
        payload = fp.encode_command(Instruction.UP_IMAGE)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            gap_s = self._attempt_timeout(attempt)
            try:
                if attempt:
                    self.stats.retries += 1
                    log.info("%s: retrying image upload (attempt %d): %s", self.port, attempt + 1, last)
                    self._resync(gap_s + line_time_s)
                self._send(payload)
                self._await_ack(Instruction.UP_IMAGE, gap_s).raise_for_confirmation(
                    Instruction.UP_IMAGE, self.port
                )
                data = self._receive_data(packet_size, gap_s, gap_s + 2 * line_time_s, progress)
                self.stats.uploads += 1
                return fp.unpack_image(data)
            except (_Timeout, ProtocolError) as exc:
                last = exc
        raise ProtocolError(
            f"{self.port}: image upload failed after {self.retries + 1} attempts: {last}; "
            "check the cable and the baud rate"
        )

    def set_baud(self, baud: int) -> None:
        """Switch the sensor to ``baud`` (SetSysPara) and reopen the port at that rate."""
        multiple = fp.baud_multiple(baud)
        self.command(
            Instruction.SET_SYS_PARA, parameter=fp.SystemParameter.BAUD_MULTIPLE, value=multiple
        )
        self.close()
        self.baud = baud
        self.open()

    # --- I/O -----------------------------------------------------------------------------

    def _parameters(self) -> fp.SystemParameters:
        if self.system_parameters is None:
            raise DeviceError(f"{self.port}: scanner not open; call open() first")
        return self.system_parameters

    def _attempt_timeout(self, attempt: int) -> float:
        return self.command_timeout_s * (2**attempt)

    def _port(self) -> serial.Serial:
        if self._serial is None:
            raise DeviceError(f"{self.port}: scanner not open (closed or unplugged); call open()")
        return self._serial

    def _port_failed(self, what: str, exc: Exception) -> DeviceError:
        self.close()
        return DeviceError(
            f"fingerprint scanner on {self.port} {what}: {exc}; the port was closed, "
            "check the cable and open() again"
        )

    def _send(self, payload: bytes) -> None:
        port = self._port()
        frame = fp.encode_packet(PacketType.COMMAND, payload, self.address)
        self.stats.commands += 1
        try:
            # Anything still in the input is a reply nobody waits for any more.
            port.reset_input_buffer()
            self._reader.reset()
            self._pending = []
            port.write(frame)
        except _PORT_ERRORS as exc:
            raise self._port_failed("failed on write", exc) from exc

    def _read_packets(self, deadline: float, strict: bool = True) -> list[fp.Packet]:
        """Packets that arrived by ``deadline`` (at least one), else _Timeout; when
        ``strict``, a corrupt frame seen on the way raises ProtocolError (caller retries)."""
        port = self._port()
        while True:
            try:
                data = port.read(max(1, port.in_waiting))
            except _PORT_ERRORS as exc:
                raise self._port_failed("stopped answering", exc) from exc
            if data:
                bad, dropped = self._reader.bad_packets, self._reader.dropped_bytes
                packets = self._reader.feed(data)
                self.stats.dropped_bytes += self._reader.dropped_bytes - dropped
                if strict and self._reader.bad_packets != bad:
                    self.stats.corrupt_replies += 1
                    raise ProtocolError(f"{self.port}: corrupt packet (bad checksum) from the sensor")
                if packets:
                    return packets
            if time.monotonic() >= deadline:
                self.stats.timeouts += 1
                raise _Timeout(f"no reply within the deadline ({self._reader.pending} bytes pending)")

    def _await_ack(self, instruction: Instruction, timeout_s: float) -> fp.Ack:
        deadline = time.monotonic() + timeout_s
        while True:
            packets = self._read_packets(deadline)
            for index, packet in enumerate(packets):
                if packet.pid != PacketType.ACK:
                    continue  # the tail of a stale data transfer
                ack = fp.decode_ack(instruction, packet.payload)
                self._pushback(packets[index + 1 :])
                return ack

    def _pushback(self, packets: list[fp.Packet]) -> None:
        """Keep packets that arrived with an ack (the head of an upload) for the next read."""
        self._pending = packets

    def _receive_data(
        self, packet_size: int, gap_s: float, total_s: float, progress: Progress | None
    ) -> bytes:
        assembler = fp.DataAssembler(packet_size, fp.IMAGE_BYTES)
        started = time.monotonic()
        packets, self._pending = self._pending, []
        while True:
            for packet in packets:
                if packet.pid == PacketType.ACK:
                    raise ProtocolError(f"{self.port}: ack inside an image transfer")
                done = assembler.add(packet)
                if progress is not None:
                    progress(assembler.received_bytes, fp.IMAGE_BYTES)
                if done:
                    return assembler.data
            now = time.monotonic()
            if now - started > total_s:
                raise _Timeout(f"transfer took over {total_s:.1f} s ({assembler.received_bytes} bytes)")
            try:
                packets = self._read_packets(min(now + gap_s, started + total_s))
            except _Timeout:
                raise _Timeout(
                    f"transfer stalled after {assembler.received_bytes} of {fp.IMAGE_BYTES} bytes"
                ) from None

    def _resync(self, timeout_s: float) -> None:
        """Put a barrier in the reply stream before a retry.

        After a timeout or a corrupt reply, late answers to earlier commands (a slow GenImg,
        the rest of an image) may still be on their way and, lacking sequence numbers, would
        be read as the answer to the retry: a stale "OK" to GenImg would make an old image
        pass for a new one. The sensor answers in order, so we send ReadSysPara, whose ack is
        the only 17-data-byte ack in the protocol, and discard everything before it.
        """
        payload = fp.encode_command(Instruction.READ_SYS_PARA)
        self._send(payload)
        deadline = time.monotonic() + timeout_s
        while True:
            for packet in self._read_packets(deadline, strict=False):
                if packet.pid == PacketType.ACK and len(packet.payload) == 17 and packet.payload[0] == 0:
                    self._pending = []
                    self._reader.reset()
                    return
