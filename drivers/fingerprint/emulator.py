"""A ZFM / R30x fingerprint sensor on a pseudo-terminal, for tests, demos and benchmarks.

It speaks the device side of ``protocol.py`` (the same module the driver uses), so any
host-side client that opens a serial port, ours or pyfingerprint or adafruit's, can talk to
it. Images come from ``prints.SyntheticFinger`` unless another print source is given.

Line rate: with ``baud`` set, outgoing bytes are paced at 10 bits a byte (8N1) so an image
upload takes as long as on a real UART; without it the pty runs as fast as it can.

Fault injection, from a spec string (``--faults`` or ``SensorEmulator(faults=...)``), comma
separated ``key=value``; probabilities apply to each outgoing packet independently:

    noise=P      1..8 random bytes are written before the packet (line noise between frames)
    drop=P       one byte of the packet is lost
    badsum=P     the packet's checksum is wrong
    slow=S       every reply starts S seconds late
    nofinger=S   GenImg answers "no finger" for the first S seconds of service
    unplug=S     S seconds after start the port disappears (pty closed, link removed) ...
    replug=S     ... and a fresh pty (new /dev/pts/N, link re-pointed) appears S s later
                 (default 1.0)
    seed=N       seed of the fault dice, for reproducible tests (default 0)

e.g. ``noise=0.01,drop=0.001,badsum=0.02,slow=0.5,nofinger=2.0,unplug=30``. At run time the
same faults are set with ``set_faults()``, ``no_finger()`` and ``unplug()``.

At run time from outside the process, ``--control PATH`` opens a Unix datagram socket
taking text commands (``finger <applicant_seed> <position> [quality=good|poor]``,
``nofinger <seconds>``, ``faults <spec>``, ``unplug <seconds>``); see emulator_control.py.

Unsupported or malformed commands get an ack with a confirmation code (0xFC unsupported
command, 0x01 packet receive error), as a sensor would, never silence.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import logging
import os
import random
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from drivers.fingerprint import protocol as fp
from drivers.fingerprint.protocol import Confirmation, Instruction, PacketType
from station.errors import ProtocolError

log = logging.getLogger("fingerprint.emulator")

_POLL_S = 0.05
_WRITE_STALL_S = 2.0  # a host that reads nothing for this long has gone; drop the reply
_CHUNK_BYTES = 64  # pacing granularity, about a UART FIFO's worth
_INSTRUCTIONS = frozenset(int(i) for i in Instruction)


class PrintSource(Protocol):
    """Where impressions come from: one new 288 x 256 uint8 image per GenImg."""

    @property
    def identity(self) -> str: ...

    def next_impression(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Faults:
    noise: float = 0.0
    drop: float = 0.0
    badsum: float = 0.0
    slow: float = 0.0
    nofinger: float = 0.0
    unplug: float = 0.0
    replug: float = 1.0
    seed: int = 0

    @classmethod
    def parse(cls, spec: str | None) -> "Faults":
        """Parse ``key=value,...``; raise ValueError naming the bad item and the fix."""
        faults = cls()
        if not spec or not spec.strip():
            return faults
        known = {f.name for f in fields(cls)}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"fault spec item {item!r} must be key=value")
            if key not in known:
                raise ValueError(
                    f"fault spec item {item!r}: unknown fault {key!r}; known: {', '.join(sorted(known))}"
                )
            try:
                value: float | int = int(text) if key == "seed" else float(text)
            except ValueError:
                raise ValueError(f"fault spec item {item!r}: {text!r} is not a number") from None
            if key in ("noise", "drop", "badsum") and not 0.0 <= value <= 1.0:
                raise ValueError(f"fault spec item {item!r}: a probability must be within 0..1")
            if key not in ("noise", "drop", "badsum", "seed") and not 0.0 <= value < 86400:
                raise ValueError(f"fault spec item {item!r}: seconds must be within 0..86400")
            faults = replace(faults, **{key: value})
        return faults

    @property
    def corrupting(self) -> bool:
        return bool(self.noise or self.drop or self.badsum)


class _Unplugged(Exception):
    """The port went away while a reply was being written."""


@dataclass
class EmulatorStats:
    commands: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    bad_packets_received: int = 0
    replies_dropped: int = 0
    faults_injected: int = 0
    unplugs: int = 0


class SensorEmulator:
    """The sensor side of a pty. ``start()`` returns the port path and serves in a thread."""

    def __init__(
        self,
        *,
        prints: PrintSource | None = None,
        baud: int | None = None,
        faults: Faults | str | None = None,
        link: Path | str | None = None,
        address: int = fp.DEFAULT_ADDRESS,
        password: int = 0,
        packet_size: int = 128,
        library_size: int = 300,
    ):
        if prints is None:
            from drivers.fingerprint.prints import SyntheticFinger

            prints = SyntheticFinger(0, 2)
        self.prints: PrintSource = prints
        self.pace = baud is not None
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self.link = Path(link) if link is not None else None
        self.password = password
        self.parameters = fp.SystemParameters(
            library_size=library_size,
            address=address,
            packet_size_code=fp.packet_size_code(packet_size),
            baud_multiple=fp.baud_multiple(baud if baud is not None else 57600),
        )
        self.stats = EmulatorStats()
        self.image: np.ndarray | None = None  # the image buffer, as UpImage sends it
        self.image_source: str | None = None
        self._char_buffers: dict[int, bytes] = {}
        self._library: dict[int, bytes] = {}
        self._download: tuple[Instruction, int, fp.DataAssembler] | None = None
        self._dice = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._unplug_request: float | None = None
        self._no_finger_until = 0.0
        self._line_clock = 0.0
        self._master: int | None = None
        self._slave: int | None = None
        self._path: str | None = None
        self._plugged = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0

    # --- control -------------------------------------------------------------------------

    def start(self) -> str:
        """Open the pty (and link) and serve; returns the path a host should open."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._started_at = time.monotonic()
        if self.faults.nofinger:
            self._no_finger_until = self._started_at + self.faults.nofinger
        self._open_pty()
        self._thread = threading.Thread(target=self._serve, name="fingerprint-emulator", daemon=True)
        self._thread.start()
        if self.faults.unplug:
            timer = threading.Timer(self.faults.unplug, self.unplug, args=(self.faults.replug,))
            timer.daemon = True
            timer.start()
        return self.path

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._close_pty()

    def __enter__(self) -> "SensorEmulator":
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

    def no_finger(self, seconds: float) -> None:
        """GenImg answers "no finger" for the next ``seconds``."""
        self._no_finger_until = time.monotonic() + seconds

    def set_faults(self, faults: Faults | str) -> None:
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self._dice = random.Random(self.faults.seed)

    def place_finger(self, prints: PrintSource) -> None:
        """The next GenImg images this finger."""
        self.prints = prints

    # --- pty -----------------------------------------------------------------------------

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
        log.info("sensor emulator on %s%s", self._path, f" (link {self.link})" if self.link else "")

    def _close_pty(self) -> None:
        self._plugged.clear()
        if self.link is not None and self.link.is_symlink():
            self.link.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:
                    log.debug("closing pty fd %d: %s", fd, exc)
        self._master = self._slave = None

    def _take_unplug_request(self) -> float | None:
        with self._lock:
            request, self._unplug_request = self._unplug_request, None
            return request

    def _do_unplug(self, seconds: float) -> None:
        log.info("unplugged %s for %.1f s", self._path, seconds)
        self.stats.unplugs += 1
        self._close_pty()
        self._download = None
        if self._stopping.wait(seconds):
            return
        self._open_pty()

    # --- serving -------------------------------------------------------------------------

    def _serve(self) -> None:
        reader = fp.PacketReader(address=self.parameters.address)
        while not self._stopping.is_set():
            request = self._take_unplug_request()
            if request is not None:
                self._do_unplug(request)
                reader = fp.PacketReader(address=self.parameters.address)
                continue
            assert self._master is not None
            try:
                ready, _, _ = select.select([self._master], [], [], _POLL_S)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # no opener on the slave side (we hold one)
                    time.sleep(_POLL_S)
                    continue
                log.error("emulator port %s failed, serving stopped: %s", self._path, exc)
                self._plugged.clear()
                return
            bad_before = reader.bad_packets
            for packet in reader.feed(data):
                try:
                    self._on_packet(packet)
                except _Unplugged:
                    break
                except Exception:  # a handler bug must not kill the sensor
                    log.exception("emulator failed handling a packet")
            if reader.bad_packets > bad_before:
                self.stats.bad_packets_received += reader.bad_packets - bad_before
                # A real sensor reports a corrupt command packet as "packet receive error".
                try:
                    self._reply(Instruction.GEN_IMG, Confirmation.PACKET_RECEIVE_ERROR)
                except _Unplugged:
                    pass

    def _on_packet(self, packet: fp.Packet) -> None:
        if packet.pid in (PacketType.DATA, PacketType.END_DATA):
            self._on_data(packet)
            return
        if packet.pid != PacketType.COMMAND:
            return
        self.stats.commands += 1
        try:
            command = fp.decode_command(packet.payload)
        except ProtocolError as exc:
            log.info("refused command: %s", exc)
            known = bool(packet.payload) and packet.payload[0] in _INSTRUCTIONS
            code = Confirmation.PACKET_RECEIVE_ERROR if known else Confirmation.UNSUPPORTED_COMMAND
            self._write_packets([fp.encode_packet(PacketType.ACK, bytes([code]), self.parameters.address)])
            return
        handler = self._handlers().get(command.instruction)
        if handler is None:
            self._reply(command.instruction, Confirmation.UNSUPPORTED_COMMAND)
            return
        handler(command)

    def _on_data(self, packet: fp.Packet) -> None:
        if self._download is None:
            return
        instruction, buffer_id, assembler = self._download
        try:
            done = assembler.add(packet)
        except ProtocolError as exc:
            log.info("download aborted: %s", exc)
            self._download = None
            return
        if not done:
            return
        self._download = None
        if instruction == Instruction.DOWN_IMAGE:
            self.image = fp.unpack_image(assembler.data)
            self.image_source = "downloaded"
        else:
            self._char_buffers[buffer_id] = assembler.data

    # --- commands ------------------------------------------------------------------------

    def _handlers(self) -> dict[Instruction, Callable[[fp.Command], None]]:
        return {
            Instruction.VFY_PWD: self._vfy_pwd,
            Instruction.READ_SYS_PARA: lambda c: self._reply(
                c.instruction, Confirmation.OK, **self.parameters.ack_fields()
            ),
            Instruction.SET_SYS_PARA: self._set_sys_para,
            Instruction.GEN_IMG: self._gen_img,
            Instruction.IMG2TZ: self._img2tz,
            Instruction.UP_IMAGE: self._up_image,
            Instruction.DOWN_IMAGE: self._down,
            Instruction.UP_CHAR: self._up_char,
            Instruction.DOWN_CHAR: self._down,
            Instruction.REG_MODEL: self._reg_model,
            Instruction.MATCH: self._match,
            Instruction.SEARCH: self._search,
            Instruction.HI_SPEED_SEARCH: self._search,
            Instruction.STORE: self._store,
            Instruction.LOAD_CHAR: self._load_char,
            Instruction.DELETE_CHAR: self._delete_char,
            Instruction.EMPTY: self._empty,
            Instruction.TEMPLATE_NUM: lambda c: self._reply(
                c.instruction, Confirmation.OK, count=len(self._library)
            ),
            Instruction.READ_INDEX_TABLE: self._read_index_table,
            Instruction.GET_ECHO: lambda c: self._reply(c.instruction, fp.MODULE_OK),
            Instruction.SOFT_RESET: self._soft_reset,
            Instruction.GET_RANDOM_CODE: lambda c: self._reply(
                c.instruction, Confirmation.OK, random=random.getrandbits(32)
            ),
            Instruction.AURA_LED: self._aura_led,
        }

    def _vfy_pwd(self, c: fp.Command) -> None:
        ok = c.params["password"] == self.password
        self._reply(c.instruction, Confirmation.OK if ok else Confirmation.WRONG_PASSWORD)

    def _set_sys_para(self, c: fp.Command) -> None:
        parameter, value = c.params["parameter"], c.params["value"]
        valid = {
            fp.SystemParameter.BAUD_MULTIPLE: ("baud_multiple", range(1, 13)),
            fp.SystemParameter.SECURITY_LEVEL: ("security_level", range(1, 6)),
            fp.SystemParameter.PACKET_SIZE_CODE: ("packet_size_code", range(0, 4)),
        }
        if parameter not in valid:
            self._reply(c.instruction, Confirmation.INVALID_REGISTER)
            return
        name, allowed = valid[parameter]
        if value not in allowed:
            self._reply(c.instruction, Confirmation.REGISTER_CONFIG_ERROR)
            return
        # The ack still goes out at the old baud; the new setting applies afterwards.
        self._reply(c.instruction, Confirmation.OK)
        self.parameters = replace(self.parameters, **{name: value})
        log.info("system parameter %s set to %d", name, value)

    def _gen_img(self, c: fp.Command) -> None:
        if time.monotonic() < self._no_finger_until:
            self._reply(c.instruction, Confirmation.NO_FINGER)
            return
        self.image = fp.quantize_image(self.prints.next_impression())
        self.image_source = self.prints.identity
        self._reply(c.instruction, Confirmation.OK)

    def _characteristics(self) -> bytes:
        """A stand-in char file: the finger's identity, so Match and Search can be honest."""
        identity = (self.image_source or "").encode()
        return hashlib.shake_256(identity).digest(fp.CHARACTERISTICS_BYTES)

    def _img2tz(self, c: fp.Command) -> None:
        if self.image is None:
            self._reply(c.instruction, Confirmation.NO_VALID_IMAGE)
            return
        self._char_buffers[c.params["buffer_id"]] = self._characteristics()
        self._reply(c.instruction, Confirmation.OK)

    def _up_image(self, c: fp.Command) -> None:
        if self.image is None:
            self._reply(c.instruction, Confirmation.UPLOAD_IMAGE_FAIL)
            return
        self._upload(c.instruction, fp.pack_image(self.image))

    def _up_char(self, c: fp.Command) -> None:
        data = self._char_buffers.get(c.params["buffer_id"])
        if data is None:
            self._reply(c.instruction, Confirmation.UPLOAD_FEATURE_FAIL)
            return
        self._upload(c.instruction, data)

    def _upload(self, instruction: Instruction, data: bytes) -> None:
        address = self.parameters.address
        frames = [fp.encode_packet(PacketType.ACK, fp.encode_ack(instruction, Confirmation.OK), address)]
        frames += fp.split_data(data, self.parameters.packet_size, address)
        self._write_packets(frames)

    def _down(self, c: fp.Command) -> None:
        expected = fp.IMAGE_BYTES if c.instruction == Instruction.DOWN_IMAGE else fp.CHARACTERISTICS_BYTES
        assembler = fp.DataAssembler(self.parameters.packet_size, expected)
        self._download = (c.instruction, c.params.get("buffer_id", 0), assembler)
        self._reply(c.instruction, Confirmation.OK)

    def _reg_model(self, c: fp.Command) -> None:
        first, second = self._char_buffers.get(1), self._char_buffers.get(2)
        if first is None or first != second:
            self._reply(c.instruction, Confirmation.MERGE_FAIL)
            return
        self._reply(c.instruction, Confirmation.OK)

    def _match(self, c: fp.Command) -> None:
        first, second = self._char_buffers.get(1), self._char_buffers.get(2)
        if first is not None and first == second:
            self._reply(c.instruction, Confirmation.OK, score=200)
        else:
            self._reply(c.instruction, Confirmation.NO_MATCH)

    def _search(self, c: fp.Command) -> None:
        probe = self._char_buffers.get(c.params["buffer_id"])
        first, count = c.params["start_page"], c.params["page_count"]
        for page in sorted(self._library):
            if first <= page < first + count and self._library[page] == probe:
                self._reply(c.instruction, Confirmation.OK, page_id=page, score=200)
                return
        self._reply(c.instruction, Confirmation.NOT_FOUND)

    def _store(self, c: fp.Command) -> None:
        page, data = c.params["page_id"], self._char_buffers.get(c.params["buffer_id"])
        if page >= self.parameters.library_size:
            self._reply(c.instruction, Confirmation.BAD_LOCATION)
        elif data is None:
            self._reply(c.instruction, Confirmation.TEMPLATE_EMPTY)
        else:
            self._library[page] = data
            self._reply(c.instruction, Confirmation.OK)

    def _load_char(self, c: fp.Command) -> None:
        page = c.params["page_id"]
        if page >= self.parameters.library_size:
            self._reply(c.instruction, Confirmation.BAD_LOCATION)
        elif page not in self._library:
            self._reply(c.instruction, Confirmation.READ_TEMPLATE_ERROR)
        else:
            self._char_buffers[c.params["buffer_id"]] = self._library[page]
            self._reply(c.instruction, Confirmation.OK)

    def _delete_char(self, c: fp.Command) -> None:
        first, count = c.params["page_id"], c.params["count"]
        if first + count > self.parameters.library_size:
            self._reply(c.instruction, Confirmation.BAD_LOCATION)
            return
        for page in range(first, first + count):
            self._library.pop(page, None)
        self._reply(c.instruction, Confirmation.OK)

    def _empty(self, c: fp.Command) -> None:
        self._library.clear()
        self._reply(c.instruction, Confirmation.OK)

    def _read_index_table(self, c: fp.Command) -> None:
        table = bytearray(32)
        base = c.params["index_page"] * 256
        for page in self._library:
            if base <= page < base + 256:
                table[(page - base) // 8] |= 1 << ((page - base) % 8)
        self._reply(c.instruction, Confirmation.OK, index_table=bytes(table))

    def _soft_reset(self, c: fp.Command) -> None:
        self._char_buffers.clear()
        self.image = None
        self._download = None
        self._reply(c.instruction, Confirmation.OK)

    def _aura_led(self, c: fp.Command) -> None:
        if not 1 <= c.params["control"] <= 6:
            self._reply(c.instruction, Confirmation.REGISTER_CONFIG_ERROR)
            return
        self._reply(c.instruction, Confirmation.OK)

    # --- output --------------------------------------------------------------------------

    def _reply(self, instruction: Instruction, confirmation: int, **values: fp.Value) -> None:
        payload = fp.encode_ack(instruction, confirmation, **values)
        self._write_packets([fp.encode_packet(PacketType.ACK, payload, self.parameters.address)])

    def _write_packets(self, frames: list[bytes]) -> None:
        faults = self.faults
        if faults.slow and self._stopping.wait(faults.slow):
            return
        if faults.corrupting:
            frames = [self._corrupt(frame) for frame in frames]
        self.stats.packets_sent += len(frames)
        self._write(b"".join(frames))

    def _corrupt(self, frame: bytes) -> bytes:
        faults, dice = self.faults, self._dice
        out = bytearray(frame)
        if dice.random() < faults.badsum:
            out[-1] ^= dice.randrange(1, 256)
            self.stats.faults_injected += 1
        if dice.random() < faults.drop:
            del out[dice.randrange(len(out))]
            self.stats.faults_injected += 1
        if dice.random() < faults.noise:
            out[:0] = bytes(dice.randrange(256) for _ in range(dice.randint(1, 8)))
            self.stats.faults_injected += 1
        return bytes(out)

    def _write(self, data: bytes) -> None:
        """Write all of ``data``, paced to the line rate when asked; give up on a host that
        stopped reading, and abandon the reply when the port is unplugged or we stop."""
        view = memoryview(data)
        stalled_since: float | None = None
        # A reply goes out back to back, as from a UART: the line clock starts when the line
        # is idle and then only advances by line time, so a late wake-up from one sleep is
        # made up by the next instead of adding up over a 40 kB upload.
        self._line_clock = max(self._line_clock, time.monotonic())
        while view:
            if self._unplug_request is not None or self._stopping.is_set():
                raise _Unplugged()
            chunk = view[:_CHUNK_BYTES] if self.pace else view
            if self.pace:
                # A byte is on the host's side only once its last bit has crossed the line.
                now = time.monotonic()
                self._line_clock += len(chunk) * 10 / self.parameters.baud
                delay = self._line_clock - now
                if delay > 0:
                    time.sleep(delay)
            assert self._master is not None
            try:
                written = os.write(self._master, chunk)
            except BlockingIOError:
                written = 0
            if written:
                view = view[written:]
                self.stats.bytes_sent += written
                stalled_since = None
                continue
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > _WRITE_STALL_S:
                self.stats.replies_dropped += 1
                log.warning("host is not reading; dropped %d bytes of a reply", len(view))
                return
            select.select([], [self._master], [], _POLL_S)


def main(argv: list[str] | None = None) -> int:
    """``stationctl emulate fingerprint``: print the port path first, then serve until
    SIGTERM or SIGINT. The first stdout line is the contract scripts and tests read."""
    parser = argparse.ArgumentParser(prog="stationctl emulate fingerprint", description=__doc__.split("\n")[0])
    parser.add_argument("--baud", type=int, default=None, help="emulate this line rate (default: unpaced, reports 57600)")
    parser.add_argument("--faults", default="", help="fault spec, e.g. noise=0.01,badsum=0.02,unplug=30")
    parser.add_argument("--link", type=Path, default=None, help="maintain a symlink here to the current pty")
    parser.add_argument("--applicant-seed", type=int, default=0, help="whose finger is on the sensor")
    parser.add_argument("--finger-position", type=int, default=2, help="ANSI/NIST finger position 1..10")
    parser.add_argument("--quality", default="good", choices=("good", "poor"),
                        help="how the finger is placed: poor gives NFIQ 2 under 40")
    parser.add_argument("--control", type=Path, default=None,
                        help="Unix datagram socket taking commands: finger <seed> <position> "
                             "[quality=good|poor], nofinger <s>, faults <spec>, unplug <s>")
    parser.add_argument("--packet-size", type=int, default=128, choices=fp.PACKET_SIZES)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        faults = Faults.parse(args.faults)
        if args.baud is not None:
            fp.baud_multiple(args.baud)
    except ValueError as exc:
        parser.error(str(exc))

    from drivers.fingerprint.emulator_control import ControlChannel
    from drivers.fingerprint.prints import SyntheticFinger
    from station import logs

    logs.setup(args.log_level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    emulator = SensorEmulator(
        prints=SyntheticFinger(args.applicant_seed, args.finger_position, args.quality),
        baud=args.baud,
        faults=faults,
        link=args.link,
        packet_size=args.packet_size,
    )
    path = emulator.start()
    try:
        control = ControlChannel(emulator, args.control).start() if args.control else None
    except OSError as exc:
        emulator.stop()
        parser.error(f"--control {args.control}: cannot bind the control socket: {exc}")
    print(path, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        if control is not None:
            control.stop()
        emulator.stop()
        log.info("stopped: %s", emulator.stats)
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the control channel and the
    # prints must see the same Faults and SensorEmulator classes as everything else.
    from drivers.fingerprint.emulator import main as _main

    sys.exit(_main())
