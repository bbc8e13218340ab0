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
(``drivers.emulation.ControlChannel``) taking one text command per datagram:

    finger <applicant_seed> <position> [quality=good|poor]
                            from now on GenImg images this finger (ANSI/NIST position
                            1..10); ``poor`` gives dry, light, partial placements that
                            NFIQ 2 scores under 40
    nofinger <seconds>      GenImg answers "no finger" for that long (finger lifted)
    faults <spec>           replace the line faults (``faults none`` clears them)
    unplug <seconds>        close the pty now, plug a fresh one in after that long

The pty, pacing, unplugging and the control channel are the toolkit's
(``drivers/emulation.py``); this module is the sensor.

Unsupported or malformed commands get an ack with a confirmation code (0xFC unsupported
command, 0x01 packet receive error), as a sensor would, never silence.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from drivers.emulation import ControlChannel, FaultSpec, PtyDevice, Unplugged, seconds, wait_for_stop, words
from drivers.fingerprint import protocol as fp
from drivers.fingerprint.protocol import Confirmation, Instruction, PacketType
from station.errors import ProtocolError

log = logging.getLogger("fingerprint.emulator")

_INSTRUCTIONS = frozenset(int(i) for i in Instruction)
USAGE = ("finger <applicant_seed> <position> [quality=good|poor] | nofinger <seconds> | "
         "faults <spec> | unplug <seconds>")


class PrintSource(Protocol):
    """Where impressions come from: one new 288 x 256 uint8 image per GenImg."""

    @property
    def identity(self) -> str: ...

    def next_impression(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Faults(FaultSpec):
    probabilities: ClassVar[tuple[str, ...]] = ("noise", "drop", "badsum")
    noise: float = 0.0
    drop: float = 0.0
    badsum: float = 0.0
    slow: float = 0.0
    nofinger: float = 0.0
    unplug: float = 0.0
    replug: float = 1.0
    seed: int = 0

    @property
    def corrupting(self) -> bool:
        return bool(self.noise or self.drop or self.badsum)


@dataclass
class EmulatorStats:
    commands: int = 0
    packets_sent: int = 0
    bad_packets_received: int = 0
    faults_injected: int = 0


class SensorEmulator(PtyDevice):
    """The sensor side of a pty. ``start()`` returns the port path and serves in a thread."""

    thread_name = "fingerprint-emulator"
    description = "sensor emulator"

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
        super().__init__(baud=baud, link=link)
        if prints is None:
            from drivers.fingerprint.prints import SyntheticFinger

            prints = SyntheticFinger(0, 2)
        self.prints: PrintSource = prints
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
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
        self._no_finger_until = 0.0
        self._reader = fp.PacketReader(address=address)

    # --- control -------------------------------------------------------------------------

    def on_start(self) -> None:
        if self.faults.nofinger:
            self._no_finger_until = time.monotonic() + self.faults.nofinger
        if self.faults.unplug:
            self.unplug_later(self.faults.unplug, self.faults.replug)

    def line_baud(self) -> int | None:
        return self.parameters.baud if self.baud is not None else None  # follows SetSysPara

    def no_finger(self, seconds: float) -> None:
        """GenImg answers "no finger" for the next ``seconds``."""
        self._no_finger_until = time.monotonic() + seconds

    def set_faults(self, faults: Faults | str) -> None:
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self._dice = random.Random(self.faults.seed)

    def place_finger(self, prints: PrintSource) -> None:
        """The next GenImg images this finger."""
        self.prints = prints

    def command(self, line: str) -> str:
        """One control command (``USAGE``); returns what changed, raises ValueError saying why not."""
        from drivers.fingerprint.prints import Quality, SyntheticFinger

        verb, args = words(line)
        if verb == "finger" and len(args) in (2, 3):
            seed, position = int(args[0]), int(args[1])
            quality = Quality.GOOD
            if len(args) == 3:
                key, _, value = args[2].partition("=")
                if key != "quality":
                    raise ValueError(f"unknown option {args[2]!r}")
                quality = Quality(value)
            if not 1 <= position <= 10:
                raise ValueError(f"finger position {position} is not an ANSI/NIST position 1..10")
            self.place_finger(SyntheticFinger(seed, position, quality))
            return f"finger applicant {seed} position {position} quality {quality.value}"
        if verb == "nofinger" and len(args) == 1:
            wait = seconds(args[0])
            self.no_finger(wait)
            return f"no finger for {wait:g} s"
        if verb == "faults" and args:
            faults = Faults.parse(" ".join(args))
            if faults.nofinger or faults.unplug:
                raise ValueError("nofinger and unplug are commands of their own here")
            self.set_faults(faults)
            return f"faults {self.faults}"
        if verb == "unplug" and len(args) == 1:
            wait = seconds(args[0])
            self.unplug(wait)
            return f"unplugged for {wait:g} s"
        raise ValueError("not a command")

    # --- serving -------------------------------------------------------------------------

    def on_unplug(self) -> None:
        self._download = None
        self._reader = fp.PacketReader(address=self.parameters.address)

    def on_bytes(self, data: bytes) -> None:
        reader = self._reader
        bad_before = reader.bad_packets
        for packet in reader.feed(data):
            try:
                self._on_packet(packet)
            except Unplugged:
                raise
            except Exception:  # a handler bug must not kill the sensor
                log.exception("emulator failed handling a packet")
        if reader.bad_packets > bad_before:
            self.stats.bad_packets_received += reader.bad_packets - bad_before
            # A real sensor reports a corrupt command packet as "packet receive error".
            self._reply(Instruction.GEN_IMG, Confirmation.PACKET_RECEIVE_ERROR)

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
        if faults.slow and not self.sleep(faults.slow):
            return
        if faults.corrupting:
            frames = [self._corrupt(frame) for frame in frames]
        self.stats.packets_sent += len(frames)
        self.send(b"".join(frames))

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
                        help=f"Unix datagram socket taking commands: {USAGE}")
    parser.add_argument("--packet-size", type=int, default=128, choices=fp.PACKET_SIZES)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        faults = Faults.parse(args.faults)
        if args.baud is not None:
            fp.baud_multiple(args.baud)
    except ValueError as exc:
        parser.error(str(exc))

    from drivers.fingerprint.prints import SyntheticFinger
    from station import logs

    logs.setup(args.log_level)
    emulator = SensorEmulator(
        prints=SyntheticFinger(args.applicant_seed, args.finger_position, args.quality),
        baud=args.baud,
        faults=faults,
        link=args.link,
        packet_size=args.packet_size,
    )
    path = emulator.start()
    try:
        control = ControlChannel(args.control, emulator.command, USAGE, "fingerprint-emulator").start() \
            if args.control else None
    except OSError as exc:
        emulator.stop()
        parser.error(f"--control {args.control}: cannot bind the control socket: {exc}")
    try:
        wait_for_stop(path)
    finally:
        if control is not None:
            control.stop()
        emulator.stop()
        log.info("stopped: %s %s", emulator.stats, emulator.port_stats)
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the prints must see the same
    # Faults and SensorEmulator classes as everything else.
    from drivers.fingerprint.emulator import main as _main

    sys.exit(_main())
