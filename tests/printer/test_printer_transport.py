"""The printer's byte pipes and the driver over them, without hardware: a pseudo-terminal
for a serial port and for a USB printer device file, a TCP server for socket://, and a
small printer thread at the far end that answers with the protocol's own encoders."""
from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import tty
import numpy as np
import pytest

from drivers.printer import protocol as pr
from drivers.printer.device import Printer
from drivers.printer.protocol import (
    CARD_HEIGHT,
    CARD_WIDTH,
    Activity,
    Command,
    CommandReader,
    PrinterError,
)
from drivers.printer.transport import SerialTransport, UsbPrinterTransport, transport_for
from station.errors import DeviceError, ProtocolError

pytestmark = pytest.mark.timeout(60)

SILENT = None  # an answer: the printer says nothing


class FakePrinter:
    """The printer end of a byte pipe (a pty master or a socket), on a thread: each command
    is answered from ``answers`` (label -> reply, SILENT, or a list used in turn), OK by
    default, ERR;1 / ERR;2 for a command the printer would refuse; ``delays_s`` holds a
    reply back. ``received`` lists every command, panels with their data."""

    def __init__(self, fd: int, answers: dict | None = None, delays_s: dict | None = None):
        self.fd = fd
        self.answers = {k: list(v) if isinstance(v, list) else v for k, v in (answers or {}).items()}
        self.delays_s = delays_s or {}
        self.reader = CommandReader()
        self.received: list[Command] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _answer(self, command: Command) -> bytes | None:
        problem = pr.command_problem(command)
        if problem is not None:
            return pr.encode_error(problem[0])
        answer = self.answers.get(command.label, "OK")
        if isinstance(answer, list):
            answer = answer.pop(0) if answer else "OK"
        return None if answer is SILENT else pr.encode_reply(answer)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            for command in self.reader.feed(data):
                self.received.append(command)
                reply = self._answer(command)
                if reply is not None:
                    time.sleep(self.delays_s.get(command.label, 0))
                    os.write(self.fd, reply)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def raw_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def close_quietly(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def driven_printer(kind: str, answers: dict | None = None, delays_s: dict | None = None, **timeouts):
    """A Printer over a ``kind`` of pipe ("serial", "usblp": a pty; "socket": TCP) with a
    FakePrinter at the far end."""
    with contextlib.ExitStack() as stack:
        if kind == "socket":
            server = socket.create_server(("127.0.0.1", 0))
            stack.callback(server.close)
            port = f"socket://127.0.0.1:{server.getsockname()[1]}"
        else:
            master, slave, path = raw_pty()
            stack.callback(close_quietly, master, slave)
            port = path if kind == "serial" else f"usblp:{path}"
        printer = Printer(transport_for(port, write_timeout_s=5.0), **{"query_timeout_s": 1.0, **timeouts})
        printer.open()
        stack.callback(printer.close)
        if kind == "socket":
            connection, _ = server.accept()  # already in the backlog: open() connected
            stack.callback(connection.close)
            far_end = connection.fileno()
        else:
            far_end = master
        fake = FakePrinter(far_end, answers, delays_s)
        stack.callback(fake.stop)
        yield printer, fake


HEALTHY = {"Rtp": "Evolis Primacy", "Rsn": "E0123456", "Rfv": "1.2.3", "Rr": "YMCKO",
           "Rse;o": "CLOSED", "Rse;f": "CARD", "Rcr": "180", "Rlr;p": "OK"}


# --- choosing a pipe -------------------------------------------------------------------


def test_the_port_string_chooses_the_pipe() -> None:
    serial_port = transport_for("/dev/serial/by-id/usb-Evolis_Primacy-if00", baud=115200)
    assert isinstance(serial_port, SerialTransport)
    assert serial_port.description == "/dev/serial/by-id/usb-Evolis_Primacy-if00 at 115200 baud"
    network = transport_for("socket://10.0.0.5:9100")
    assert isinstance(network, SerialTransport) and network.description == "socket://10.0.0.5:9100"
    assert isinstance(transport_for("/dev/ttyUSB0"), SerialTransport)
    usb = transport_for("/dev/usb/lp1")
    assert isinstance(usb, UsbPrinterTransport) and usb.path == "/dev/usb/lp1"
    named = transport_for("usblp:/dev/printer-evolis")
    assert isinstance(named, UsbPrinterTransport) and named.description == "USB printer /dev/printer-evolis"
    with pytest.raises(ValueError, match="socket://host:9100") as info:
        transport_for("COM3")
    assert "usblp:" in str(info.value) and "/dev/serial/by-id/" in str(info.value)


def test_a_serial_port_is_given_the_line_time_of_the_largest_panel() -> None:
    slow = SerialTransport("/dev/ttyUSB0", baud=9600, write_timeout_s=10)
    assert slow.write_timeout_s > 10 + 576_072 * 10 / 9600
    assert SerialTransport("socket://h:1", write_timeout_s=10).write_timeout_s == 10


# --- serial port on a pty --------------------------------------------------------------


def test_serial_transport_writes_reads_and_times_out_on_a_pty() -> None:
    master, slave, path = raw_pty()
    transport = SerialTransport(path)
    try:
        transport.open()
        transport.write(b"\x1bRfv\r")
        assert select.select([master], [], [], 2)[0] and os.read(master, 100) == b"\x1bRfv\r"
        os.write(master, b"1.2.3\r")
        assert transport.read(2.0) == b"1.2.3\r"
        started = time.monotonic()
        assert transport.read(0.15) == b""
        assert time.monotonic() - started >= 0.14  # waited out its timeout
        assert transport.read(0) == b""
    finally:
        transport.close()
        close_quietly(master, slave)


def test_serial_transport_reports_a_vanished_port_and_closes() -> None:
    master, slave, path = raw_pty()
    transport = SerialTransport(path)
    transport.open()
    close_quietly(master, slave)
    with pytest.raises(DeviceError, match=path) as info:
        transport.read(0.5)
    assert "check the cable" in info.value.message
    with pytest.raises(DeviceError, match="not open"):
        transport.write(b"x")


def test_serial_open_failure_names_the_port_and_what_to_check() -> None:
    with pytest.raises(DeviceError) as info:
        SerialTransport("/dev/ttyNOPE9").open()
    assert "/dev/ttyNOPE9" in info.value.message and "ls /dev/serial/by-id/" in info.value.message


# --- network printer -------------------------------------------------------------------


def test_socket_transport_round_trip_and_disconnect() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    transport = transport_for(f"socket://127.0.0.1:{server.getsockname()[1]}")
    try:
        transport.open()
        conn, _ = server.accept()
        transport.write(b"\x1bRsn\r")
        assert conn.recv(100) == b"\x1bRsn\r"
        conn.sendall(b"E0123456\r")
        assert transport.read(2.0) == b"E0123456\r"
        assert transport.read(0.05) == b""
        conn.close()
        with pytest.raises(DeviceError, match="socket://127.0.0.1") as info:
            transport.read(1.0)
        assert "on the network" in info.value.message
    finally:
        transport.close()
        server.close()


def test_socket_transport_refused_connection() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(DeviceError, match=f"socket://127.0.0.1:{port}") as info:
        transport_for(f"socket://127.0.0.1:{port}").open()
    assert "check the printer's address" in info.value.message


# --- USB printer device file -----------------------------------------------------------


def test_usblp_transport_writes_a_whole_panel_and_reads_with_timeouts() -> None:
    master, slave, path = raw_pty()
    transport = transport_for(f"usblp:{path}", write_timeout_s=5.0)
    received = bytearray()

    def drain() -> None:
        while len(received) < 600_000 and select.select([master], [], [], 2)[0]:
            received.extend(os.read(master, 1 << 16))

    try:
        transport.open()
        reader = threading.Thread(target=drain)
        reader.start()
        payload = bytes(range(256)) * (600_000 // 256) + bytes(600_000 % 256)
        transport.write(payload)
        reader.join(5)
        assert bytes(received) == payload
        os.write(master, b"CARD\r")
        assert transport.read(1.0) == b"CARD\r"
        started = time.monotonic()
        assert transport.read(0.1) == b""
        assert time.monotonic() - started >= 0.09
    finally:
        transport.close()
        close_quietly(master, slave)


def test_usblp_write_times_out_when_the_printer_takes_nothing() -> None:
    master, slave, path = raw_pty()  # nobody reads the master: the pty fills up
    transport = UsbPrinterTransport(path, write_timeout_s=0.3)
    try:
        transport.open()
        started = time.monotonic()
        with pytest.raises(DeviceError, match="took no data for 0.3 s") as info:
            transport.write(bytes(4 << 20))
        assert 0.25 <= time.monotonic() - started < 3
        assert "usblp" in info.value.message and path in info.value.message
    finally:
        transport.close()
        close_quietly(master, slave)


def test_usblp_unplugged_and_missing() -> None:
    master, slave, path = raw_pty()
    transport = UsbPrinterTransport(path)
    transport.open()
    close_quietly(master, slave)
    with pytest.raises(DeviceError, match="stopped answering"):
        transport.read(0.5)
    with pytest.raises(DeviceError, match="/dev/usb/lp97") as info:
        UsbPrinterTransport("/dev/usb/lp97").open()
    assert "No such file" in info.value.message and "CUPS" in info.value.message


# --- the driver against a printer thread -----------------------------------------------


def tricky_panel() -> np.ndarray:
    """A k panel whose packed bytes are ESC, CR and ';' over and over."""
    return pr.unpack_panel((b"\x1b\r;\x00" * (pr.panel_bytes(2) // 4)), 2)


@pytest.mark.parametrize("kind", ["serial", "socket", "usblp"])
def test_driver_identifies_and_prints_over_each_pipe(kind: str) -> None:
    with driven_printer(kind, HEALTHY) as (printer, fake):
        identity = printer.identify()
        assert identity.to_dict() == {"model": "Evolis Primacy", "serial": "E0123456",
                                      "firmware": "1.2.3", "ribbon": "YMCKO"}
        printer.setup("ko")
        printer.print_card([("k", 2, tricky_panel())])
    panels = [c for c in fake.received if c.mnemonic == "Db"]
    assert len(panels) == 1 and np.array_equal(pr.unpack_panel(panels[0].data, 2), tricky_panel())
    assert [c.label for c in fake.received][-4:] == ["Ss", "Sr", "Db;k;2", "Se"]
    assert fake.reader.skipped_bytes == 0 and printer.stats.error_replies == 0


def test_two_sided_print_crosses_a_pty_intact() -> None:
    rng = np.random.default_rng(5)
    front = [(letter, levels, rng.integers(0, levels, (CARD_HEIGHT, CARD_WIDTH), dtype=np.uint8))
             for letter, levels in (("y", 32), ("m", 64), ("c", 128), ("k", 2), ("o", 2))]
    back = [("k", 2, rng.integers(0, 2, (CARD_HEIGHT, CARD_WIDTH), dtype=np.uint8))]
    with driven_printer("serial", HEALTHY) as (printer, fake):
        printer.setup("ymcko")
        printer.print_card(front, back)
        assert printer.activity is Activity.IDLE
    sequence = [c.label for c in fake.received]
    assert sequence == ["Pem;2", "Pmi;F", "Pr;ymcko", "Ss", "Sr", "Db;y;32", "Db;m;64", "Db;c;128",
                        "Db;k;2", "Db;o;2", "Sv", "Db;k;2", "Se"]
    sent = [c for c in fake.received if c.mnemonic == "Db"]
    for command, (letter, levels, bitmap) in zip(sent, front + back):
        assert np.array_equal(pr.unpack_panel(command.data, levels), bitmap), letter


def test_a_silent_printer_raises_device_error_after_the_command_timeout() -> None:
    with driven_printer("serial", {**HEALTHY, "Rsn": SILENT}, query_timeout_s=0.2) as (printer, _):
        started = time.monotonic()
        with pytest.raises(DeviceError) as info:
            printer.identify()
        elapsed = time.monotonic() - started
    assert not isinstance(info.value, PrinterError)
    assert elapsed >= 0.2  # one attempt, waited out (timeouts == 1 below: no retry)
    assert "did not answer Rsn within 0.2 s" in info.value.message and "powered on" in info.value.message
    assert printer.stats.timeouts == 1


def test_a_late_reply_is_not_taken_for_the_next_one() -> None:
    with driven_printer("serial", HEALTHY, {"Rfv": 0.4}, query_timeout_s=0.15) as (printer, _):
        with pytest.raises(DeviceError, match="Rfv"):
            printer.command(pr.READ_FIRMWARE)
        time.sleep(0.5)  # "1.2.3" arrives now, answering nobody
        assert printer.command(pr.READ_SERIAL).value == "E0123456"
        assert printer.stats.stale_bytes == len(b"1.2.3\r")


def test_error_replies_raise_printer_errors_and_set_the_status() -> None:
    answers = {**HEALTHY, "Ss": ["ERR;C"], "Se": ["ERR;T"], "Rse;o": ["OPEN", "CLOSED", "CLOSED", "CLOSED"],
               "Rr": "KO", "Rlr;p": ["OK", "OK", "CARD", "OK"]}
    with driven_printer("usblp", answers) as (printer, fake):
        printer.setup("ko")
        panel = [("k", 2, tricky_panel())]
        with pytest.raises(PrinterError) as cover:
            printer.print_card(panel)
        error = cover.value
        assert (error.code, error.needs_person, error.retryable) == ("printer_cover_open", True, True)
        assert printer.activity is Activity.IDLE
        assert printer.status().conditions == {pr.Condition.COVER_OPEN}
        assert printer.status().level is pr.Level.READY  # the cover sensor reads CLOSED now
        with pytest.raises(PrinterError) as jam:
            printer.print_card(panel)
        assert (jam.value.code, jam.value.rejects_card) == ("printer_jam", True)
        status = printer.status()
        assert status.conditions == {pr.Condition.JAM} and status.card_position is pr.CardPosition.INSIDE
        printer.reject()
        assert printer.status().level is pr.Level.READY
        with pytest.raises(PrinterError, match="ERR;1") as unknown:
            printer.command(b"\x1bXyz\r")
        assert unknown.value.code == "printer_command" and not unknown.value.retryable
    assert fake.received[-1] == Command("Xyz")


def test_encoding_moves_set_the_activity() -> None:
    with driven_printer("socket", {**HEALTHY, "Rlr;p": "CONTACTLESS CARD"}) as (printer, fake):
        printer.move_to_contactless()
        status = printer.status()
        assert (status.activity, status.card_position) == (Activity.ENCODING, pr.CardPosition.CONTACTLESS)
        printer.move_to_contact()
        printer.eject()
        assert printer.activity is Activity.IDLE
    assert [c.label for c in fake.received if c.kind is not pr.Kind.QUERY] == ["Sic", "Sis", "Se"]


def test_bytes_commands_are_checked_before_sending() -> None:
    printer = Printer(UsbPrinterTransport("/dev/null"))
    with pytest.raises(ProtocolError, match="not one complete command"):
        printer.command(b"\x1bRfv")  # no CR
