"""Golden transcripts and deframing of the ZFM/R30x packet protocol (no I/O)."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.fingerprint import protocol as fp
from drivers.fingerprint.protocol import Confirmation, Instruction, PacketType
from station.errors import DeviceError, ProtocolError

pytestmark = pytest.mark.timeout(10)


def frame(hexstring: str) -> bytes:
    return bytes.fromhex(hexstring.replace(" ", ""))


# (what, host/sensor frame in the datasheet's layout)
GOLDEN_COMMANDS = [
    # REFERENCE.md's vector.
    ((Instruction.VFY_PWD, {"password": 0}), "EF01 FFFFFFFF 01 0007 13 00000000 001B"),
    ((Instruction.GEN_IMG, {}), "EF01 FFFFFFFF 01 0003 01 0005"),
    ((Instruction.UP_IMAGE, {}), "EF01 FFFFFFFF 01 0003 0A 000E"),
    ((Instruction.READ_SYS_PARA, {}), "EF01 FFFFFFFF 01 0003 0F 0013"),
    ((Instruction.GET_ECHO, {}), "EF01 FFFFFFFF 01 0003 53 0057"),
    ((Instruction.IMG2TZ, {"buffer_id": 1}), "EF01 FFFFFFFF 01 0004 02 01 0008"),
    (
        (Instruction.SEARCH, {"buffer_id": 1, "start_page": 0, "page_count": 300}),
        "EF01 FFFFFFFF 01 0008 04 01 0000 012C 003B",
    ),
    (
        (Instruction.SET_SYS_PARA, {"parameter": 4, "value": 12}),
        "EF01 FFFFFFFF 01 0005 0E 04 0C 0024",
    ),
    (
        (Instruction.AURA_LED, {"control": 3, "speed": 0x80, "color": 1, "cycles": 0}),
        "EF01 FFFFFFFF 01 0007 35 03 80 01 00 00C1",
    ),
]


@pytest.mark.parametrize(("command", "golden"), GOLDEN_COMMANDS, ids=[c[0][0].name for c in GOLDEN_COMMANDS])
def test_command_frames_are_byte_exact_and_decode_back(command, golden):
    instruction, params = command
    encoded = fp.encode_packet(PacketType.COMMAND, fp.encode_command(instruction, **params))
    assert encoded == frame(golden)
    packet = fp.decode_packet(encoded)
    assert packet.pid == PacketType.COMMAND and packet.address == 0xFFFFFFFF
    decoded = fp.decode_command(packet.payload)
    assert decoded == fp.Command(instruction, params)


def test_ok_ack_golden():
    ok = frame("EF01 FFFFFFFF 07 0003 00 000A")  # REFERENCE.md's vector
    assert fp.encode_packet(PacketType.ACK, fp.encode_ack(Instruction.VFY_PWD, Confirmation.OK)) == ok
    ack = fp.decode_ack(Instruction.VFY_PWD, fp.decode_packet(ok).payload)
    assert ack.ok and ack.fields == {}


def test_read_sys_para_reply_golden():
    golden = frame("EF01 FFFFFFFF 07 0013 00 0000 0009 012C 0003 FFFFFFFF 0002 0006 0457")
    params = fp.SystemParameters()  # the emulator's defaults: 300 templates, 128 B, 57,600
    payload = fp.encode_ack(Instruction.READ_SYS_PARA, Confirmation.OK, **params.ack_fields())
    assert fp.encode_packet(PacketType.ACK, payload) == golden
    decoded = fp.SystemParameters.from_ack(fp.decode_ack(Instruction.READ_SYS_PARA, payload))
    assert decoded == params
    assert (decoded.library_size, decoded.packet_size, decoded.baud) == (300, 128, 57600)


def test_reply_fields_round_trip():
    payload = fp.encode_ack(Instruction.SEARCH, Confirmation.OK, page_id=7, score=123)
    assert payload == bytes.fromhex("00 0007 007B".replace(" ", ""))
    assert fp.decode_ack(Instruction.SEARCH, payload).fields == {"page_id": 7, "score": 123}
    table = bytes(range(32))
    payload = fp.encode_ack(Instruction.READ_INDEX_TABLE, Confirmation.OK, index_table=table)
    assert fp.decode_ack(Instruction.READ_INDEX_TABLE, payload).fields["index_table"] == table


def test_failed_ack_keeps_full_length_and_short_failure_is_accepted():
    payload = fp.encode_ack(Instruction.SEARCH, Confirmation.NOT_FOUND)
    assert payload == bytes([0x09, 0, 0, 0, 0])
    assert fp.decode_ack(Instruction.SEARCH, b"\x09").confirmation == Confirmation.NOT_FOUND


def test_ok_ack_of_wrong_length_is_a_protocol_error():
    # e.g. a stale GenImg "OK" read while waiting for ReadSysPara
    with pytest.raises(ProtocolError, match="READ_SYS_PARA"):
        fp.decode_ack(Instruction.READ_SYS_PARA, b"\x00")


def test_every_instruction_encodes_and_decodes():
    for instruction, fields in fp.COMMAND_FIELDS.items():
        params = {name: 1 for name, _ in fields}
        assert fp.decode_command(fp.encode_command(instruction, **params)) == fp.Command(instruction, params)


def test_command_parameter_errors():
    with pytest.raises(TypeError, match="buffer_id"):
        fp.encode_command(Instruction.IMG2TZ)
    with pytest.raises(ValueError, match="out of range"):
        fp.encode_command(Instruction.IMG2TZ, buffer_id=300)
    with pytest.raises(ProtocolError, match="unknown instruction 0x77"):
        fp.decode_command(b"\x77")
    with pytest.raises(ProtocolError, match="VFY_PWD carries 2"):
        fp.decode_command(b"\x13\x00\x00")


def test_every_confirmation_is_a_typed_device_error():
    for code in Confirmation:
        if code == Confirmation.OK:
            continue
        error = fp.SensorError(code, Instruction.GEN_IMG, "/dev/ttyUSB0")
        assert isinstance(error, DeviceError)
        assert error.confirmation == code
        assert error.code == f"fingerprint_{code.name.lower()}"
        assert "/dev/ttyUSB0" in error.message and "GEN_IMG" in error.message
        assert "unknown" not in error.message
    assert fp.SensorError(Confirmation.NO_FINGER).retryable
    assert not fp.SensorError(Confirmation.WRONG_PASSWORD).retryable
    assert "no finger on the sensor" in fp.SensorError(0x02).message
    assert "unknown confirmation code 0x77" in fp.SensorError(0x77).message
    with pytest.raises(fp.SensorError, match="wrong sensor password"):
        fp.Ack(Confirmation.WRONG_PASSWORD).raise_for_confirmation(Instruction.VFY_PWD)


def test_decode_packet_names_the_fault():
    good = frame("EF01 FFFFFFFF 07 0003 00 000A")
    with pytest.raises(ProtocolError, match="checksum"):
        fp.decode_packet(good[:-1] + b"\x0b")
    with pytest.raises(ProtocolError, match="start code"):
        fp.decode_packet(b"\xee" + good[1:])
    with pytest.raises(ProtocolError, match="LEN"):
        fp.decode_packet(good + b"\x00")


# --- deframing ---------------------------------------------------------------------------

ACK = frame("EF01 FFFFFFFF 07 0003 00 000A")
NO_FINGER = frame("EF01 FFFFFFFF 07 0003 02 000C")


def test_reader_byte_by_byte():
    reader = fp.PacketReader()
    out = []
    for byte in ACK + NO_FINGER:
        out += reader.feed(bytes([byte]))
    assert [p.payload for p in out] == [b"\x00", b"\x02"]
    assert reader.dropped_bytes == 0 and reader.bad_packets == 0


def test_reader_resynchronises_on_garbage():
    reader = fp.PacketReader()
    garbage = b"\x55\x00\xef\x13\xef\x01\x99\x42"  # includes a false start code
    packets = reader.feed(garbage + ACK + b"\xef" + b"\x01\x02" + NO_FINGER)
    assert [p.payload for p in packets] == [b"\x00", b"\x02"]
    assert reader.dropped_bytes == len(garbage) + 3
    assert reader.pending == 0


def test_reader_skips_bad_checksum_and_counts_it():
    reader = fp.PacketReader()
    corrupt = ACK[:-1] + b"\xff"
    assert [p.payload for p in reader.feed(corrupt + NO_FINGER)] == [b"\x02"]
    assert reader.bad_packets == 1


def test_reader_recovers_from_a_dropped_byte():
    """A lost byte makes LEN swallow the next frame's head; the reader must find it again."""
    reader = fp.PacketReader()
    truncated = ACK[:9] + ACK[10:]  # payload byte lost
    packets = reader.feed(truncated + NO_FINGER + ACK)
    assert packets and packets[-1].payload == b"\x00"
    assert reader.bad_packets >= 1 or reader.dropped_bytes >= 1


def test_reader_keeps_a_split_start_code_and_filters_address():
    reader = fp.PacketReader(address=0xFFFFFFFF)
    assert reader.feed(ACK[:1]) == [] and reader.pending == 1
    assert [p.payload for p in reader.feed(ACK[1:])] == [b"\x00"]
    other = fp.encode_packet(PacketType.ACK, b"\x00", address=0x12345678)
    assert reader.feed(other) == []
    assert reader.dropped_bytes == len(other)


def test_reader_rejects_impossible_length():
    reader = fp.PacketReader()
    bogus = frame("EF01 FFFFFFFF 07 FFFF 00")
    assert [p.payload for p in reader.feed(bogus + ACK)] == [b"\x00"]


# --- data transfers and images ------------------------------------------------------------


@pytest.mark.parametrize("packet_size", fp.PACKET_SIZES)
def test_split_and_reassemble(packet_size):
    data = bytes(range(256)) * (fp.IMAGE_BYTES // 256)
    frames = fp.split_data(data, packet_size)
    assert len(frames) == fp.IMAGE_BYTES // packet_size
    packets = fp.PacketReader().feed(b"".join(frames))
    assert [p.pid for p in packets[-2:]] == [PacketType.DATA, PacketType.END_DATA]
    assert fp.reassemble(packets, packet_size, fp.IMAGE_BYTES) == data


def test_upimage_of_288_packets_of_128():
    frames = fp.split_data(bytes(fp.IMAGE_BYTES), 128)
    assert len(frames) == 288
    assert frames[0][:9] == frame("EF01 FFFFFFFF 02 0082")
    assert frames[-1][:9] == frame("EF01 FFFFFFFF 08 0082")


def test_reassemble_refuses_short_lost_or_oversized_transfers():
    frames = fp.split_data(bytes(fp.IMAGE_BYTES), 128)
    packets = fp.PacketReader().feed(b"".join(frames))
    with pytest.raises(ProtocolError, match="ended after 36736"):
        fp.reassemble(packets[1:], 128, fp.IMAGE_BYTES)  # one packet lost
    with pytest.raises(ProtocolError, match="no END_DATA"):
        fp.reassemble(packets[:-1], 128, fp.IMAGE_BYTES)
    odd = fp.Packet(PacketType.DATA, b"\x00" * 100)
    with pytest.raises(ProtocolError, match="carries 100 bytes"):
        fp.reassemble([odd], 128)
    with pytest.raises(ProtocolError, match="inside a data transfer"):
        fp.reassemble([fp.Packet(PacketType.ACK, b"\x00")], 128)


def test_image_packing_is_high_nibble_first():
    gray = np.zeros((288, 256), np.uint8)
    gray[0, 0], gray[0, 1], gray[287, 255] = 0xF0, 0x1F, 0xAB
    packed = fp.pack_image(gray)
    assert len(packed) == fp.IMAGE_BYTES == 36864
    assert packed[0] == 0xF1 and packed[-1] == 0x0A
    image = fp.unpack_image(packed)
    assert image[0, 0] == 255 and image[0, 1] == 17 and image[287, 255] == 170


def test_image_round_trip_quantises_to_4_bits():
    gray = np.random.default_rng(1).integers(0, 256, (288, 256), dtype=np.uint8)
    assert np.array_equal(fp.unpack_image(fp.pack_image(gray)), (gray >> 4) * 17)
    with pytest.raises(ValueError, match="288x256"):
        fp.pack_image(gray.T.copy())
    with pytest.raises(ProtocolError, match="36863 bytes"):
        fp.unpack_image(bytes(36863))


def test_baud_and_packet_size_codes():
    assert fp.baud_multiple(115200) == 12 and fp.packet_size_code(256) == 3
    with pytest.raises(ValueError, match="multiple of 9600"):
        fp.baud_multiple(100000)
    with pytest.raises(ValueError, match="packet size 100"):
        fp.packet_size_code(100)
