"""The emulated chip: its card logic without sockets (against the ICAO 9303-11 worked
example for BAC and secure messaging, byte for byte), then through a real pcscd (vpcd)
with pyscard and, as an independent peer, pcsc-tools' scriptor."""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.chip.pcsc import Pcscd, pcscd_fixture, wait_card

from drivers.chip.emulator import ATR, LDS_AID, Card, ChipEmulator, ChipFaults
from station import apdu
from station.apdu import Command, Response, Status
from station.bac import AccessKeys, SecureChannel, TerminalAuthentication

pcscd = pcscd_fixture()

H = bytes.fromhex
MRZ_INFORMATION = b"L898902C<369080619406236"  # ICAO 9303-11 worked example
SELECT_LDS = "00A4040C07" + LDS_AID.hex()
EF_COM = 0x011E
EF_COM_DATA = H("60165F0104303130375F36063034303030305C046175636E")


def sw(response: bytes) -> int:
    return int.from_bytes(response[-2:], "big")


def create(file_id: int, size: int) -> bytes:
    return apdu.create_file(file_id, size).encode()


def update(offset: int, data: bytes) -> bytes:
    return apdu.update_binary(offset, data).encode()


def read(offset: int, le: int) -> bytes:
    return apdu.read_binary(offset, le).encode()


def read_extended(offset: int, le: int) -> bytes:
    return bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, 0x00]) + (le % 65536).to_bytes(2, "big")


def select_ef(file_id: int) -> bytes:
    return apdu.select_file(file_id).encode()


def lock(mrz_information: bytes = MRZ_INFORMATION) -> bytes:
    return bytes([0x80, 0xE8, 0x00, 0x00, len(mrz_information)]) + mrz_information


def ok(card: Card, command: bytes) -> bytes:
    response = card.process(command)
    assert sw(response) == Status.OK, f"{command.hex()} -> {response.hex()}"
    return response[:-2]


@pytest.fixture
def card() -> Card:
    """A chip with the LDS application selected."""
    chip = Card()
    ok(chip, H(SELECT_LDS))
    return chip


def personalized(card: Card, file_id: int = EF_COM, data: bytes = EF_COM_DATA) -> Card:
    ok(card, create(file_id, len(data)))
    ok(card, update(0, data))
    return card


# -- the card logic, without sockets -------------------------------------------------------
@pytest.mark.parametrize("text", ["00B000", "00D6000003AABB", "00D6000002AABBCCDD", "00B0000000AA",
                                  "00D60000000003AABB"])
def test_malformed_apdus_are_wrong_length(text: str) -> None:
    assert Card().process(H(text)) == H("6700")


def test_atr_is_a_contactless_t1_atr_with_a_valid_check_byte() -> None:
    assert ATR[:4] == H("3B858001") and len(ATR) == 4 + 5 + 1
    check = 0
    for byte in ATR[1:]:
        check ^= byte
    assert check == 0


def test_select_the_lds_application_and_its_files(card: Card) -> None:
    assert sw(Card().process(H("00A4040C07A0000002471002"))) == 0x6A82
    assert sw(card.process(select_ef(0x0101))) == 0x6A82
    personalized(card)
    ok(card, H(SELECT_LDS))  # selecting the application forgets the current EF
    assert sw(card.process(read(0, 4))) == 0x6986
    ok(card, select_ef(EF_COM))
    assert ok(card, read(0, 4)) == EF_COM_DATA[:4]
    assert ok(card, H("00A4020402011E00")) == H("620E 80020018 820101 8302011E 8801F0".replace(" ", ""))
    assert ok(card, H("00A4000C02011E")) == b""
    ok(card, H("00A4000C023F00"))  # the MF holds no EF.COM
    assert sw(card.process(select_ef(EF_COM))) == 0x6A82


def test_select_refusals(card: Card) -> None:
    assert card.process(H("00A4020C03011E01")) == H("6700")   # a file id has 2 bytes
    assert card.process(H("00A4040C")) == H("6700")           # no AID
    assert card.process(H("00A4080C02011E")) == H("6A86")     # select by path: not here
    assert card.process(H("00A4020802011E")) == H("6A86")     # P2 08: FMD


def test_create_update_read_with_offsets(card: Card) -> None:
    ok(card, create(0x0101, 300))
    ok(card, update(0, b"A" * 100))
    ok(card, update(100, b"B" * 100))
    ok(card, update(290, b"0123456789"))
    assert ok(card, read(95, 10)) == b"AAAAABBBBB"
    assert ok(card, read(290, 10)) == b"0123456789"
    assert ok(card, read(200, 5)) == bytes(5)  # never written: erased EEPROM
    assert card.file(0x0101)[:200] == b"A" * 100 + b"B" * 100


def test_read_past_the_end_and_le_zero(card: Card) -> None:
    personalized(card)
    assert card.process(read(20, 10)) == EF_COM_DATA[20:] + H("6282")  # fewer than Le: end of file
    assert card.process(H("00B0000000")) == EF_COM_DATA + H("9000")    # Le 00: what there is


def test_extended_length_read(card: Card) -> None:
    content = bytes(range(256)) * 16
    ok(card, create(0x0102, len(content)))
    for offset in range(0, len(content), 255):
        ok(card, update(offset, content[offset:offset + 255]))
    assert ok(card, read_extended(0, 4096)) == content
    assert ok(card, read_extended(1000, 0)) == content[1000:]      # Le 0000: all up to 65536
    assert card.process(read_extended(4000, 200)) == content[4000:] + H("6282")
    ok(card, H("00D6000A 000003 CAFE01".replace(" ", "")))          # extended Lc
    assert card.file(0x0102)[10:13] == H("CAFE01")


def test_odd_ins_reach_beyond_32k(card: Card) -> None:
    """D7 and B1 carry the offset in DO'54' (station.apdu builds them above 7FFF); B1's
    answer is DO'53' and Le counts its header."""
    ok(card, create(0x0102, 40000))
    assert apdu.update_binary(33000, b"far").ins == 0xD7
    ok(card, update(33000, b"far"))
    ok(card, update(39990, b"0123456789"))
    assert ok(card, read(33000, 5)) == H("5303") + b"far"
    assert card.process(read(39990, 20)) == H("530A") + b"0123456789" + H("6282")
    assert ok(card, read(39990, 12)) == H("530A") + b"0123456789"
    assert card.process(read(40000, 4)) == H("6B00")
    assert card.process(update(40000, b"x")) == H("6B00")
    assert card.process(H("00B1000003 5301AA 00".replace(" ", ""))) == H("6A80")  # no offset DO
    assert card.process(H("00B1000104 540280E8 00".replace(" ", ""))) == H("6A86")
    assert card.file(0x0102)[33000:33003] == b"far"


def test_read_by_short_file_identifier(card: Card) -> None:
    personalized(card)
    ok(card, H(SELECT_LDS))
    assert ok(card, H("00B09E0004")) == EF_COM_DATA[:4]  # SFI 1E = low bits of 011E
    assert ok(card, read(4, 2)) == EF_COM_DATA[4:6]      # ... which became the current EF
    assert card.process(H("00B0810004")) == H("6A82")    # no SFI 01 yet
    assert card.process(H("00B0DE0004")) == H("6A86")    # 110xxxxx is not an SFI


@pytest.mark.parametrize("command, status", [
    (read(0x18, 1), 0x6B00),                    # offset at the end of a 24-byte file
    (read(0x7000, 1), 0x6B00),
    (update(0x18, b"x"), 0x6B00),
    (update(20, b"too long"), 0x6A84),          # runs past the end of the file
    (H("00D60000"), 0x6700),                    # UPDATE without data
    (H("00B00000"), 0x6700),                    # READ without Le
    (H("00B0000002AABB00"), 0x6700),            # READ B0 with data
    (H("0084000004"), 0x6700),                  # GET CHALLENGE gives 8 bytes
    (H("0084010008"), 0x6A86),
    (H("00CA0000"), 0x6D00),                    # GET DATA: not on this chip
    (H("80B0000004"), 0x6D00),                  # proprietary class: only LOCK
    (H("A0B0000004"), 0x6E00),
    (H("10B0000004"), 0x6E00),                  # command chaining is not supported
    (H("0CB0000004"), 0x6982),                  # secure messaging before BAC
    (create(EF_COM, 10), 0x6A89),               # exists
    (H("00E0000006620480020010"), 0x6A80),      # no file id
    (H("00E00000046205 8002".replace(" ", "")), 0x6A80),   # FCP length wrong
    (H("00E000000D620B800200108201028302 0101".replace(" ", "")), 0x6A80),  # linear EF: not here
    (H("00E000000D620B800200108201018302 3F00".replace(" ", "")), 0x6A80),  # the MF's id
    (H("00E000000D620B800200008201018302 0101".replace(" ", "")), 0x6A80),  # 0 bytes
    (create(0x0101, 200_000), 0x6A84),          # more than the chip's EEPROM
    (H("00E0010000"), 0x6A86),
    (H("0082000028" + "00" * 40), 0x6985),      # EXTERNAL AUTHENTICATE before LOCK
    (H("0082000010" + "00" * 16), 0x6700),
    (lock(b"L898902C<369080619406237"), 0x6A80),  # wrong expiry check digit
    (lock(b"L898902C<36908061940623"), 0x6700),
    (lock(b"L898902C<3ABCDEF19406236"), 0x6A80),  # a date that is not one
    (lock(b"L898902C?369080619406236"), 0x6A80),  # not an MRZ character
    (H("80E8010018") + MRZ_INFORMATION, 0x6A86),
])
def test_every_refusal_has_its_status_word(card: Card, command: bytes, status: int) -> None:
    personalized(card)
    assert card.process(command) == status.to_bytes(2, "big")
    assert card.locked is False


def test_no_current_ef_and_power_cycle(card: Card) -> None:
    assert card.process(read(0, 1)) == H("6986")
    assert card.process(update(0, b"x")) == H("6986")
    personalized(card)
    card.power_off()
    card.power_on()
    assert card.process(read(0, 1)) == H("6986")  # selection is volatile ...
    ok(card, H(SELECT_LDS))
    ok(card, select_ef(EF_COM))
    assert ok(card, H("00B0000000")) == EF_COM_DATA  # ... files are not


def test_chip_memory_runs_out() -> None:
    small = Card(memory_bytes=1000)
    ok(small, H(SELECT_LDS))
    ok(small, create(0x0101, 600))
    assert small.process(create(0x0102, 401)) == H("6A84")
    ok(small, create(0x0102, 400))


def test_fail_write_answers_memory_failure_on_the_nth_write() -> None:
    chip = Card(faults=ChipFaults.parse("fail_write=3"))
    ok(chip, H(SELECT_LDS))
    ok(chip, create(0x0101, 30))
    ok(chip, update(0, b"1" * 10))
    ok(chip, update(10, b"2" * 10))
    assert chip.process(update(20, b"3" * 10)) == H("6581")
    assert chip.file(0x0101)[20:] == bytes(10)  # nothing written
    ok(chip, update(20, b"3" * 10))             # the retry works
    assert chip.file(0x0101) == b"1" * 10 + b"2" * 10 + b"3" * 10


def test_a_torn_write_leaves_half_the_data(card: Card) -> None:
    ok(card, create(0x0101, 8))
    card.tear(update(0, b"ABCDEFGH"))
    assert card.file(0x0101) == b"ABCD" + bytes(4)


def test_lock_ends_personalization(card: Card) -> None:
    personalized(card)
    ok(card, lock())
    assert card.locked and card.mrz_information == MRZ_INFORMATION.decode()
    ok(card, H(SELECT_LDS))                    # selection stays open in plain ...
    ok(card, select_ef(EF_COM))
    assert card.process(read(0, 4)) == H("6982")   # ... reading needs BAC
    assert card.process(H("00B09E0004")) == H("6982")
    assert card.process(update(0, b"x")) == H("6985")
    assert card.process(create(0x0101, 10)) == H("6985")
    assert card.process(lock()) == H("6985")
    assert card.process(H("0082000028" + "00" * 40 + "28")) == H("6985")  # no challenge
    assert len(ok(card, H("0084000008"))) == 8


# ICAO Doc 9303-11 Appendix D (the values tests/chip/test_bac.py cites its sources for)
RND_IC, K_IC = H("4608F91988702212"), H("0B4F80323EB3191CB04970CB4052790B")
RND_IFD, K_IFD = H("781723860C06C226"), H("0B795240CB7049B01C19B33E32804F0B")
ICAO_EF_COM = H("60145F0104303130365F36063034303030305C026175")
ICAO_TRANSCRIPT = [  # (command, response) after personalization and LOCK
    (SELECT_LDS, "9000"),
    ("0084000008", "4608F91988702212" "9000"),
    ("0082000028" "72C29C2371CC9BDB65B779B8E8D37B29ECC154AA56A8799FAE2F498F76ED92F2" "5F1448EEA8AD90A7" "28",
     "46B9342A41396CD7386BF5803104D7CEDC122B9132139BAF2EEDC94EE178534F" "2F2D235D074D7449" "9000"),
    ("0CA4020C158709016375432908C044F68E08BF8B92D635FF24F800", "990290008E08FA855A5D4C50A8ED9000"),
    ("0CB000000D9701048E08ED6705417E96BA5500", "8709019FF0EC34F9922651990290008E08AD55CC17140B2DED9000"),
    ("0CB000040D9701128E082EA28A70F3C7B53500",
     "871901FB9235F4E4037F2327DCC8964F1F9B8C30F42C8E2FFF224A990290008E08C8B2787EAEA07D749000"),
]


def icao_chip() -> Card:
    """A chip holding the worked example's EF.COM, locked with its MRZ, and drawing the
    example's RND.IC and K.IC."""
    draws = iter([RND_IC, K_IC])
    chip = Card(random=lambda n: next(draws))
    ok(chip, H(SELECT_LDS))
    personalized(chip, EF_COM, ICAO_EF_COM)
    ok(chip, lock())
    chip.power_off()
    chip.power_on()
    return chip


def test_icao_worked_example_transcript() -> None:
    """BAC and secure messaging byte for byte as Doc 9303-11 D.3 and D.4 publish them."""
    chip = icao_chip()
    for command, response in ICAO_TRANSCRIPT:
        assert chip.process(H(command)).hex().upper() == response, command


def bac_session(chip: Card, mrz_information: bytes = MRZ_INFORMATION) -> SecureChannel:
    """The station's side of BAC (station/bac.py) against ``chip``."""
    ok(chip, H(SELECT_LDS))
    rnd_ic = ok(chip, apdu.get_challenge().encode())
    terminal = TerminalAuthentication(AccessKeys.from_mrz_information(mrz_information.decode()), rnd_ic)
    answer = chip.process(terminal.command().encode())
    assert sw(answer) == Status.OK, answer.hex()
    return terminal.open_channel(answer[:-2])


def protected(chip: Card, channel: SecureChannel, command: Command) -> Response:
    return channel.unprotect(Response.decode(chip.process(channel.protect(command).encode())))


def test_bac_then_only_secure_messaging(card: Card) -> None:
    content = bytes(range(200)) * 3
    personalized(card, 0x0102, content)
    ok(card, lock())
    channel = bac_session(card)
    assert protected(card, channel, apdu.select_file(0x0102)).ok
    read_back = b"".join(protected(card, channel, apdu.read_binary(offset, 223)).data
                         for offset in range(0, len(content), 223))
    assert read_back == content
    assert protected(card, channel, apdu.read_binary(590, 20)) == Response(content[590:], 0x62, 0x82)
    assert protected(card, channel, apdu.update_binary(0, b"x")).sw == Status.CONDITIONS_NOT_SATISFIED  # protected too
    assert protected(card, channel, Command(0x00, 0xB0, 0x02, 0x58, le=1)).sw == Status.WRONG_P1_P2
    assert card.process(read(0, 4)) == H("6987")               # a plain APDU ends the session
    assert card.session is None
    assert card.process(channel.protect(apdu.read_binary(0, 4)).encode()) == H("6982")
    assert card.stats.authentications == 1


def test_bac_refuses_other_keys_and_altered_messages(card: Card) -> None:
    personalized(card)
    ok(card, lock())
    ok(card, H(SELECT_LDS))
    rnd_ic = ok(card, H("0084000008"))
    other = TerminalAuthentication(AccessKeys.from_mrz_information("L898902C<369080619406237"), rnd_ic)
    assert card.process(other.command().encode()) == H("6300")
    assert card.process(other.command().encode()) == H("6985")  # the challenge was used up
    channel = bac_session(card)
    tampered = bytearray(channel.protect(apdu.read_binary(0, 4)).encode())
    tampered[-2] ^= 0x01  # in the MAC
    assert card.process(bytes(tampered)) == H("6988")
    assert card.session is None


def test_fault_spec_is_checked() -> None:
    assert str(ChipFaults.parse("fail_write=2,write_s=0.5")) == "fail_write=2,write_s=0.5"
    with pytest.raises(ValueError, match="unknown fault 'fail_writes'"):
        ChipFaults.parse("fail_writes=2")


# -- through pcscd --------------------------------------------------------------------------
def test_missing_packages_fail_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from drivers.chip import pcscd as stack

    monkeypatch.setattr(stack.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(stack.PcscdError, match="apt-get install pcscd vsmartcard-vpcd"):
        stack.check_installed()
    monkeypatch.undo()
    monkeypatch.setattr(stack, "VPCD_DRIVER", stack.Path("/nonexistent/libifdvpcd.so"))
    with pytest.raises(stack.PcscdError, match="apt-get install vsmartcard-vpcd"):
        stack.check_installed()


@pytest.fixture
def reader(pcscd: Pcscd) -> str:
    return pcscd.reader(0)


@pytest.fixture
def chip(pcscd: Pcscd, reader: str) -> Iterator[ChipEmulator]:
    """A chip emulator for vpcd slot 0; whatever a test did, it leaves the field after."""
    wait_card(reader, present=False)  # a card left over from elsewhere would answer instead
    emulator = ChipEmulator(port=pcscd.port(0))
    yield emulator
    emulator.remove()
    wait_card(reader, present=False)


def inserted(chip: ChipEmulator, reader: str) -> None:
    chip.insert()
    assert chip.wait_detected(5.0), "pcscd never asked the chip for its ATR"
    wait_card(reader, present=True)


@contextlib.contextmanager
def connected(reader: str) -> Iterator[Any]:
    """A pyscard connection to the card in ``reader``, released even when the card left."""
    from smartcard.Exceptions import CardConnectionException
    from smartcard.System import readers

    (found,) = [r for r in readers() if str(r) == reader]
    connection = found.createConnection()
    connection.connect()
    try:
        yield connection
    finally:
        try:
            connection.disconnect()
        except CardConnectionException:
            pass  # the handle went with the card
        connection.release()


def transmit(connection, command: bytes) -> bytes:
    data, sw1, sw2 = connection.transmit(list(command))
    return bytes(data) + bytes([sw1, sw2])


def test_pyscard_writes_and_reads_a_4k_file_through_pcscd(pcscd: Pcscd, chip: ChipEmulator, reader: str) -> None:
    assert reader in pcscd.readers()
    inserted(chip, reader)
    content = bytes((i * 7 + 3) & 0xFF for i in range(4096))
    with connected(reader) as connection:
        assert bytes(connection.getATR()) == ATR
        assert transmit(connection, H(SELECT_LDS)) == H("9000")
        assert transmit(connection, create(0x0102, len(content))) == H("9000")
        for offset in range(0, len(content), 223):
            assert transmit(connection, update(offset, content[offset:offset + 223])) == H("9000")
        chunks = [transmit(connection, read(offset, 256)) for offset in range(0, len(content), 256)]
        assert all(chunk[-2:] == H("9000") for chunk in chunks)
        assert b"".join(chunk[:-2] for chunk in chunks) == content
        assert transmit(connection, read_extended(0, len(content))) == content + H("9000")
        assert transmit(connection, read(4096, 1)) == H("6B00")
    assert chip.card.file(0x0102) == content


def test_lock_and_bac_read_back_through_pcscd(chip: ChipEmulator, reader: str) -> None:
    """The station's read-back path: LOCK, then BAC and secure messaging over PC/SC."""
    inserted(chip, reader)
    with connected(reader) as connection:
        def send(command: Command) -> Response:
            return Response.decode(transmit(connection, command.encode()))

        assert send(apdu.select_application(LDS_AID)).ok
        assert send(apdu.create_file(EF_COM, len(EF_COM_DATA))).ok
        assert send(apdu.update_binary(0, EF_COM_DATA)).ok
        assert transmit(connection, lock()) == H("9000")
        assert send(apdu.read_binary(0, 4)).sw == Status.SECURITY_STATUS_NOT_SATISFIED
        assert send(apdu.select_application(LDS_AID)).ok
        rnd_ic = send(apdu.get_challenge()).data
        terminal = TerminalAuthentication(AccessKeys.from_mrz_information(MRZ_INFORMATION.decode()), rnd_ic)
        channel = terminal.open_channel(send(terminal.command()).data)
        assert channel.unprotect(send(channel.protect(apdu.select_file(EF_COM)))).ok
        assert channel.unprotect(send(channel.protect(apdu.read_binary(0, len(EF_COM_DATA))))).data == EF_COM_DATA


def test_scriptor_reads_a_file_as_a_peer(tmp_path, chip: ChipEmulator, reader: str) -> None:
    scriptor = shutil.which("scriptor")
    if scriptor is None:
        pytest.fail("scriptor is not installed: apt-get install pcsc-tools", pytrace=False)
    ok(chip.card, H(SELECT_LDS))
    personalized(chip.card)
    script = tmp_path / "read-ef-com.txt"
    script.write_text("# select the LDS application, then EF.COM, and read it\n"
                      f"{SELECT_LDS}\n00 A4 02 0C 02 01 1E\n00 B0 00 00 18\n")
    inserted(chip, reader)
    result = subprocess.run([scriptor, "-r", reader, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    answers = scriptor_answers(result.stdout)
    file_bytes = " ".join(f"{byte:02X}" for byte in EF_COM_DATA)
    assert answers == [("90 00", "Normal processing."), ("90 00", "Normal processing."),
                       (file_bytes + " 90 00", "Normal processing.")], result.stdout


def scriptor_answers(stdout: str) -> list[tuple[str, str]]:
    """(response bytes, scriptor's reading of the SW) for each ``< ...`` answer; scriptor
    breaks a long response after every 16 bytes."""
    return [(" ".join(response.split()), meaning)
            for response, meaning in re.findall(r"^< ([0-9A-F \n]*?) : (.+)$", stdout, re.M)]


def test_removed_chip_is_absent_and_transmit_fails(chip: ChipEmulator, reader: str) -> None:
    from smartcard.Exceptions import CardConnectionException

    inserted(chip, reader)
    with connected(reader) as connection:
        assert transmit(connection, H(SELECT_LDS)) == H("9000")
        chip.remove()
        assert not chip.inserted
        with pytest.raises(CardConnectionException):  # at once, before pcscd's next poll
            transmit(connection, H(SELECT_LDS))
        wait_card(reader, present=False)
        with pytest.raises(CardConnectionException, match="Card was removed"):
            transmit(connection, H(SELECT_LDS))
    inserted(chip, reader)  # the same chip comes back, its files with it
    with connected(reader) as connection:
        assert transmit(connection, H(SELECT_LDS)) == H("9000")
    assert chip.insertions == 2


def test_fail_write_through_pcscd(chip: ChipEmulator, reader: str) -> None:
    chip.card.faults = ChipFaults.parse("fail_write=2")
    inserted(chip, reader)
    with connected(reader) as connection:
        transmit(connection, H(SELECT_LDS))
        assert transmit(connection, create(0x0101, 16)) == H("9000")
        assert transmit(connection, update(0, b"a" * 8)) == H("9000")
        assert transmit(connection, update(8, b"b" * 8)) == H("6581")
        assert transmit(connection, update(8, b"b" * 8)) == H("9000")


def test_torn_write_through_pcscd(chip: ChipEmulator, reader: str) -> None:
    from smartcard.Exceptions import CardConnectionException

    chip.card.faults = ChipFaults.parse("tear_write=2")
    inserted(chip, reader)
    with connected(reader) as connection:
        transmit(connection, H(SELECT_LDS))
        assert transmit(connection, create(0x0101, 16)) == H("9000")
        assert transmit(connection, update(0, b"a" * 8)) == H("9000")
        with pytest.raises(CardConnectionException):
            transmit(connection, update(8, b"b" * 8))
    wait_card(reader, present=False)
    assert not chip.inserted and chip.torn_writes == 1
    assert chip.card.file(0x0101) == b"a" * 8 + b"b" * 4 + bytes(4)


def test_remove_during_a_slow_write_tears_it(chip: ChipEmulator, reader: str) -> None:
    from smartcard.Exceptions import CardConnectionException

    chip.card.faults = ChipFaults.parse("write_s=5")
    inserted(chip, reader)
    outcome: list[Exception | bytes] = []
    with connected(reader) as connection:
        transmit(connection, H(SELECT_LDS))
        assert transmit(connection, create(0x0101, 16)) == H("9000")

        def write() -> None:
            try:
                outcome.append(transmit(connection, update(0, b"c" * 16)))
            except CardConnectionException as error:
                outcome.append(error)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.5)  # the write reaches the chip and spends its 5 s there
        started = time.monotonic()
        chip.remove()
        writer.join(10.0)
        assert time.monotonic() - started < 2.0, "remove() waited for the write"
    assert len(outcome) == 1 and isinstance(outcome[0], CardConnectionException), outcome
    assert chip.card.file(0x0101) == b"c" * 8 + bytes(8)
