"""The printer emulator's chips: each card at the contactless station has its own chip in
pcscd's virtual reader, personalised through pyscard by the station's own encoder, and
written out for inspection as it leaves; then the ``stationctl emulate printer --chip-port``
process, and a reader that is not listening."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.chip.chip_set import chip_portrait_jp2
from tests.chip.pcsc import Pcscd, pcscd_fixture, wait_card
from tests.printer.cards import make_card

from drivers.chip.pcscd import free_port_pair
from drivers.printer import protocol as pr
from drivers.printer.device import Printer
from drivers.printer.emulator import ContactlessChips, PrinterEmulator
from drivers.printer.protocol import CARD_HEIGHT, CARD_WIDTH, CardPosition
from drivers.printer.transport import transport_for
from station import apdu, bac, chip_verify, lds, pki
from station import card as cards
from station.chip import ChipEncoder

pytestmark = pytest.mark.timeout(60)

pcscd = pcscd_fixture()

STATIONCTL = Path(sys.executable).parent / "stationctl"
FRONT = [("k", 2, np.zeros((CARD_HEIGHT, CARD_WIDTH), np.uint8))]  # one black panel, no ink
EF_COM = bytes.fromhex("60165F0104303130375F36063034303030305C046175636E")


@pytest.fixture(scope="module")
def test_pki(tmp_path_factory) -> pki.TestPki:
    return pki.init_test(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def reader(pcscd: Pcscd) -> Iterator[str]:
    """vpcd slot 0, empty before and after each test."""
    wait_card(pcscd.reader(0), present=False)
    yield pcscd.reader(0)
    wait_card(pcscd.reader(0), present=False)


@pytest.fixture
def printer_with_chips(pcscd: Pcscd, reader: str,
                       tmp_path: Path) -> Iterator[tuple[ContactlessChips, Printer]]:
    """A printer emulator whose cards have chips in vpcd slot 0, and the driver connected to it."""
    out = tmp_path / "out"
    chips = ContactlessChips(pcscd.port(0), out_dir=out / "chips")
    emulator = PrinterEmulator(out_dir=out, on_contactless=chips.arrived, on_leave_contactless=chips.left)
    emulator.start()
    printer = Printer(transport_for(emulator.path), query_timeout_s=2.0, move_timeout_s=10.0,
                      panel_timeout_s=5.0, print_timeout_s=10.0)
    printer.open()
    printer.setup("ymcko")
    yield chips, printer
    printer.close()
    emulator.stop()
    chips.close()


def card_files(test_pki: pki.TestPki) -> tuple[dict[str, bytes], str]:
    """Every file of the test applicant's chip, and the MRZ information its BAC keys come from."""
    data = make_card()
    files = lds.lds_files(data, chip_portrait_jp2(), test_pki.document_signer())
    line1, line2, _ = cards.mrz_lines(data)
    return files, bac.mrz_information_from_td1(line1, line2)


def assert_private(directory: Path) -> None:
    assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_card_at_the_contactless_station_is_personalised_and_its_chip_written_out(
        printer_with_chips, reader: str, test_pki: pki.TestPki, tmp_path: Path) -> None:
    chips, printer = printer_with_chips
    files, mrz_information = card_files(test_pki)
    printer.move_to_contactless()
    wait_card(reader, present=True)

    encoder = ChipEncoder(reader)
    encoder.connect()
    try:
        encoder.personalize(files)
        encoder.lock(mrz_information)
        assert encoder.read_back(mrz_information, list(files)) == files
    finally:
        encoder.close()
    out = tmp_path / "out" / "chips"
    assert not out.exists()  # written as the card leaves, not before

    printer.print_card(FRONT)
    wait_card(reader, present=False)
    written = out / "card-0001"
    assert (tmp_path / "out" / "card-0001" / "front-k.png").is_file()
    assert {p.name: p.read_bytes() for p in written.iterdir()} == files
    assert_private(written)
    assert not list(out.glob(".*"))  # no temporary directory left
    result = chip_verify.verify_directory(written, pki.load_certificate(test_pki.csca_cert))
    assert result.valid and result.chain_checked, result.report()
    snapshot = chips.snapshot()
    assert snapshot["card"] == 1 and not snapshot["in_field"]
    assert (snapshot["inserted"], snapshot["insert_failures"], snapshot["chips_written"]) == (1, 0, 1)


def transmit(connection, command: apdu.Command) -> apdu.Response:
    data, sw1, sw2 = connection.transmit(list(command.encode()))
    return apdu.Response(bytes(data), sw1, sw2)


def connected(reader: str):
    from smartcard.System import readers

    (found,) = [r for r in readers() if str(r) == reader]
    connection = found.createConnection()
    connection.connect()
    return connection


def test_each_card_has_its_own_chip_and_a_returning_card_brings_its_own_back(
        printer_with_chips, reader: str, tmp_path: Path) -> None:
    chips, printer = printer_with_chips
    printer.move_to_contactless()  # card 1: EF.COM written in raw APDUs
    wait_card(reader, present=True)
    connection = connected(reader)
    assert transmit(connection, apdu.select_application(lds.AID)).ok
    assert transmit(connection, apdu.create_file(lds.FILES["EF.COM"].file_id, len(EF_COM))).ok
    assert transmit(connection, apdu.update_binary(0, EF_COM)).ok
    connection.disconnect()

    printer.command(pr.INSERT_CARD)  # to the print head: the chip leaves the field ...
    wait_card(reader, present=False)
    out = tmp_path / "out" / "chips"
    assert [p.name for p in (out / "card-0001").iterdir()] == ["EF.COM"]
    printer.move_to_contactless()  # ... and comes back with the card, holding what it held
    wait_card(reader, present=True)
    connection = connected(reader)
    assert transmit(connection, apdu.select_application(lds.AID)).ok
    assert transmit(connection, apdu.select_file(lds.FILES["EF.COM"].file_id)).ok
    assert transmit(connection, apdu.read_binary(0, len(EF_COM))).data == EF_COM
    connection.disconnect()
    printer.eject()
    wait_card(reader, present=False)

    printer.move_to_contactless()  # card 2: a blank chip of its own
    wait_card(reader, present=True)
    connection = connected(reader)
    assert transmit(connection, apdu.select_application(lds.AID)).ok
    assert transmit(connection, apdu.select_file(lds.FILES["EF.COM"].file_id)).sw == 0x6A82
    connection.disconnect()
    printer.reject()
    wait_card(reader, present=False)
    assert not (out / "card-0002").exists()  # a blank chip leaves nothing to write
    assert chips.stats.inserted == 3 and chips.stats.chips_written == 2


def test_no_reader_listening_is_counted_and_the_card_goes_on(tmp_path: Path, caplog) -> None:
    nobody = free_port_pair()
    chips = ContactlessChips(nobody, out_dir=tmp_path / "chips")
    emulator = PrinterEmulator(out_dir=tmp_path, on_contactless=chips.arrived, on_leave_contactless=chips.left)
    emulator.start()
    printer = Printer(transport_for(emulator.path), query_timeout_s=2.0, move_timeout_s=5.0,
                      panel_timeout_s=5.0, print_timeout_s=10.0)
    try:
        printer.open()
        printer.setup("ymcko")
        printer.move_to_contactless()
        assert printer.status().card_position is CardPosition.CONTACTLESS
        printer.print_card(FRONT)
    finally:
        printer.close()
        emulator.stop()
    assert chips.stats.insert_failures == 1 and chips.stats.inserted == 0
    assert emulator.stats.hook_failures == 0 and emulator.last_card.number == 1
    assert f"no virtual reader at localhost:{nobody}" in caplog.text
    assert not (tmp_path / "chips").exists()


def test_stationctl_emulate_printer_with_a_chip_port(pcscd: Pcscd, reader: str, rundir: Path,
                                                     tmp_path: Path) -> None:
    link, out = rundir / "printer0", tmp_path / "out"
    process = subprocess.Popen(
        [str(STATIONCTL), "emulate", "printer", "--link", str(link), "--out", str(out),
         "--chip-port", str(pcscd.port(0)), "--chip-faults", "fail_write=2", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    printer = None
    try:
        assert process.stdout.readline().strip() == str(link)
        printer = Printer(transport_for(str(link)), query_timeout_s=2.0, move_timeout_s=10.0,
                          panel_timeout_s=5.0, print_timeout_s=10.0)
        printer.open()
        printer.setup("ymcko")
        printer.move_to_contactless()
        wait_card(reader, present=True)
        connection = connected(reader)
        assert transmit(connection, apdu.select_application(lds.AID)).ok
        assert transmit(connection, apdu.create_file(lds.FILES["DG1"].file_id, 4)).ok
        assert transmit(connection, apdu.update_binary(0, b"\x61\x02")).ok
        assert transmit(connection, apdu.update_binary(2, b"\x5F\x1F")).sw == 0x6581  # the fault
        connection.disconnect()
        printer.print_card(FRONT)
        wait_card(reader, present=False)
    finally:
        if printer is not None:
            printer.close()
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert (out / "chips" / "card-0001" / "DG1").read_bytes() == b"\x61\x02\x00\x00"
    assert (out / "card-0001" / "front.png").is_file()


def test_chip_options_are_checked_before_the_path_is_printed() -> None:
    for argv, reason in ((["--chip-faults", "fail_write=1"], "--chip-faults needs --chip-port"),
                         (["--chip-port", "1", "--chip-faults", "jam=1"], "--chip-faults: fault spec item 'jam=1'"),
                         (["--chip-port", "70000"], "--chip-port must be a TCP port")):
        result = subprocess.run([sys.executable, "-m", "drivers.printer.emulator", *argv],
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 2 and reason in result.stderr and result.stdout == "", result.stderr
