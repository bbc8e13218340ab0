"""The chip encoder (``station/chip.py``) against the emulated chip through a real pcscd:
a good chip is personalised, locked, read back through BAC and verified against the test
CSCA, with Active Authentication when asked; every chip fault ends in ``encoding_failed``,
never in a silent success; a missing reader is ``device_error``."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.chip.chip_set import chip_portrait_jp2
from tests.chip.pcsc import Pcscd, pcscd_fixture, wait_card
from tests.printer.cards import make_card

from drivers.chip.emulator import Card, ChipEmulator, ChipFaults, checked_mrz_information
from station import apdu, bac, lds, pki
from station.card import mrz_lines
from station.chip import ChipEncoder, EncodingFailed, FilesFor, aa_public_key, verify_aa_signature
from station.errors import DeviceError

pcscd = pcscd_fixture()

DG2_WRITES = (3, 29)  # UPDATE BINARY numbers of DG2: EF.COM and DG1 take one each (223-byte chunks)


@pytest.fixture(scope="module")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> pki.TestPki:
    return pki.init_test(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def card_files(test_pki: pki.TestPki) -> tuple[dict[str, bytes], str]:
    """The test card's chip files, signed by the test Document Signer, and its MRZ information."""
    card = make_card()
    files = lds.lds_files(card, chip_portrait_jp2(), test_pki.document_signer())
    line1, line2, _ = mrz_lines(card)
    return files, bac.mrz_information_from_td1(line1, line2)


@pytest.fixture
def chip(pcscd: Pcscd) -> Iterator[ChipEmulator]:
    """A blank chip for vpcd slot 0; whatever a test did, it leaves the field after."""
    wait_card(pcscd.reader(0), present=False)
    emulator = ChipEmulator(port=pcscd.port(0))
    yield emulator
    emulator.remove()
    wait_card(pcscd.reader(0), present=False)


def insert(chip: ChipEmulator, pcscd: Pcscd, faults: str = "") -> ChipEmulator:
    """The printer moved the card into the encoder's field, and pcscd saw it."""
    chip.card.faults = ChipFaults.parse(faults)
    chip.insert()
    assert chip.wait_detected(5.0), "pcscd never asked the chip for its ATR"
    wait_card(pcscd.reader(0), present=True)
    return chip


def encode(pcscd: Pcscd, files: dict[str, bytes], information: str, csca: Path | None = None,
           encoder: ChipEncoder | None = None) -> EncodingFailed:
    """Run ``encode`` expecting it to fail; the failure, checked to be ``encoding_failed``."""
    with pytest.raises(EncodingFailed) as failure:
        (encoder or ChipEncoder(pcscd.reader(0))).encode(files, information, csca)
    assert failure.value.code == "encoding_failed" and failure.value.retryable
    return failure.value


def test_dg2_spans_the_writes_the_fault_tests_aim_at(card_files: tuple[dict[str, bytes], str]) -> None:
    files, _ = card_files
    assert list(files)[:3] == ["EF.COM", "DG1", "DG2"]
    assert len(files["EF.COM"]) <= 223 and len(files["DG1"]) <= 223
    assert -(-len(files["DG2"]) // 223) == DG2_WRITES[1] - DG2_WRITES[0] + 1


# -- a good chip -------------------------------------------------------------------------------
def test_encode_personalises_locks_reads_back_and_verifies(pcscd: Pcscd, chip: ChipEmulator, test_pki: pki.TestPki,
                                                           card_files: tuple[dict[str, bytes], str]) -> None:
    files, information = card_files
    insert(chip, pcscd)
    encoded = ChipEncoder(pcscd.reader(0)).encode(files, information, test_pki.csca_cert)

    assert encoded.files == files
    assert set(encoded.seconds) == {"personalize", "read_back", "verify"}
    verification = encoded.verification
    assert verification["valid"] and verification["chain_checked"], verification["verdict"]
    assert sorted(verification["files"]) == sorted(files)
    assert not [c for c in verification["checks"] if c["status"] == "FAIL"]
    card = chip.card
    assert card.locked and card.mrz_information == information
    assert card.stats.authentications == 1
    assert {name: card.file(lds.FILES[name].file_id) for name in files} == files


# -- every fault ends in encoding_failed ---------------------------------------------------
def test_a_write_that_fails(pcscd: Pcscd, chip: ChipEmulator, card_files: tuple[dict[str, bytes], str]) -> None:
    files, information = card_files
    insert(chip, pcscd, f"fail_write={DG2_WRITES[0] + 1}")
    failure = encode(pcscd, files, information)
    assert "UPDATE BINARY DG2 at 223" in failure.message and "6581" in failure.message
    assert not chip.card.locked, "a chip that failed a write must not be locked as if it were good"


def test_a_write_torn_by_the_card_leaving(pcscd: Pcscd, chip: ChipEmulator,
                                          card_files: tuple[dict[str, bytes], str]) -> None:
    files, information = card_files
    insert(chip, pcscd, f"tear_write={DG2_WRITES[0] + 2}")
    failure = encode(pcscd, files, information)
    assert "left the field" in failure.message
    assert chip.torn_writes == 1 and not chip.inserted and not chip.card.locked


def test_the_card_removed_mid_write(pcscd: Pcscd, chip: ChipEmulator,
                                    card_files: tuple[dict[str, bytes], str]) -> None:
    """The printer pulls the card while a write is in the EEPROM: ``remove()`` from another
    thread, as the printer's own thread would; the encoder fails at once, not at a timeout."""
    files, information = card_files
    insert(chip, pcscd, "write_s=5")  # every write takes 5 s: the first one is still running at 1 s
    puller = threading.Timer(1.0, chip.remove)
    started = time.monotonic()
    puller.start()
    try:
        failure = encode(pcscd, files, information)
    finally:
        puller.cancel()
    assert time.monotonic() - started < 3.0, "the encoder waited for the write instead of failing"
    assert "left the field" in failure.message
    assert chip.torn_writes == 1 and not chip.card.locked
    assert chip.card.file(lds.FILES["EF.COM"].file_id) == files["EF.COM"][:len(files["EF.COM"]) // 2] + bytes(
        len(files["EF.COM"]) - len(files["EF.COM"]) // 2)


def test_a_wrong_mrz_on_read_back(pcscd: Pcscd, chip: ChipEmulator, card_files: tuple[dict[str, bytes], str]) -> None:
    files, information = card_files
    insert(chip, pcscd, "wrong_mrz=1")
    failure = encode(pcscd, files, information)
    assert "EXTERNAL AUTHENTICATE" in failure.message and "6300" in failure.message
    assert chip.card.locked and chip.card.mrz_information != information
    assert chip.card.stats.authentications == 0


def test_a_file_signed_then_changed_fails_passive_authentication(
        pcscd: Pcscd, chip: ChipEmulator, test_pki: pki.TestPki, card_files: tuple[dict[str, bytes], str]) -> None:
    """The chip holds exactly what was written, but DG13 is not what EF.SOD signed."""
    files, information = card_files
    changed = dict(files, DG13=files["DG13"][:-1] + bytes([files["DG13"][-1] ^ 0x01]))
    insert(chip, pcscd)
    failure = encode(pcscd, changed, information, test_pki.csca_cert)
    assert "does not verify" in failure.message and "DG13" in failure.message
    assert chip.card.locked


def test_a_file_changed_on_the_chip_after_writing(pcscd: Pcscd, chip: ChipEmulator,
                                                  card_files: tuple[dict[str, bytes], str]) -> None:
    """The EEPROM gives back another byte than was written (here: changed right after LOCK)."""
    files, information = card_files
    encoder = ChipEncoder(pcscd.reader(0))
    lock = encoder.lock

    def lock_then_corrupt(mrz_information: str) -> None:
        lock(mrz_information)
        chip.card.lds.files[lds.FILES["DG1"].file_id].content[-1] ^= 0x01

    encoder.lock = lock_then_corrupt  # type: ignore[method-assign]
    insert(chip, pcscd)
    failure = encode(pcscd, files, information, encoder=encoder)
    assert "other bytes than written for DG1" in failure.message


def test_another_countrys_csca_fails_the_chain(tmp_path: Path, pcscd: Pcscd, chip: ChipEmulator,
                                               card_files: tuple[dict[str, bytes], str]) -> None:
    files, information = card_files
    stranger = pki.init_test(tmp_path / "other", country="LA")
    insert(chip, pcscd)
    failure = encode(pcscd, files, information, stranger.csca_cert)
    assert "does not verify" in failure.message


def test_no_card_in_the_field(pcscd: Pcscd, card_files: tuple[dict[str, bytes], str]) -> None:
    files, information = card_files
    wait_card(pcscd.reader(0), present=False)
    failure = encode(pcscd, files, information, encoder=ChipEncoder(pcscd.reader(0), card_wait_s=0.3))
    assert "no card in the field" in failure.message


# -- no reader ---------------------------------------------------------------------------------
def test_no_reader_is_a_device_error(pcscd: Pcscd, card_files: tuple[dict[str, bytes], str]) -> None:
    files, information = card_files
    with pytest.raises(DeviceError) as failure:
        ChipEncoder("Encoder That Is Not Plugged In").encode(files, information)
    assert failure.value.code == "device_error" and failure.value.retryable
    assert "Encoder That Is Not Plugged In" in failure.value.message
    assert not isinstance(failure.value, EncodingFailed)


# -- the wrong_mrz fault itself, without sockets ---------------------------------------------
def test_wrong_mrz_locks_a_well_formed_other_mrz(card_files: tuple[dict[str, bytes], str]) -> None:
    """The chip keeps another document's MRZ: BAC with the printed one answers 6300, with
    the one it kept 9000."""
    _, information = card_files
    card = Card(faults=ChipFaults.parse("wrong_mrz=1"))

    def send(command: apdu.Command) -> apdu.Response:
        return apdu.Response.decode(card.process(command.encode()))

    assert send(apdu.select_application(lds.AID)).ok
    assert send(apdu.Command(0x80, 0xE8, 0x00, 0x00, information.encode())).ok
    stored = card.mrz_information
    assert stored is not None and stored != information
    assert checked_mrz_information(stored.encode()) == stored  # its check digits hold
    assert sum(a != b for a, b in zip(stored, information)) == 2  # one digit and its check digit
    for mrz_information, status in ((information, 0x6300), (stored, 0x9000)):
        keys = bac.AccessKeys.from_mrz_information(mrz_information)
        terminal = bac.TerminalAuthentication(keys, send(apdu.get_challenge()).data)
        assert send(terminal.command()).sw == status


# -- Active Authentication ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def files_for(test_pki: pki.TestPki) -> FilesFor:
    """The test card's chip files with the chip's AA public key in DG15."""
    card, portrait, signer = make_card(), chip_portrait_jp2(), test_pki.document_signer()
    return lambda aa_key: lds.lds_files(card, portrait, signer, aa_key)


def test_active_authentication_on_a_good_chip(pcscd: Pcscd, chip: ChipEmulator, test_pki: pki.TestPki,
                                              files_for: FilesFor,
                                              card_files: tuple[dict[str, bytes], str]) -> None:
    _, information = card_files
    insert(chip, pcscd)
    encoded = ChipEncoder(pcscd.reader(0)).encode_with_active_authentication(files_for, information,
                                                                            test_pki.csca_cert)
    assert encoded.active_authentication
    assert set(encoded.seconds) == {"generate_aa_key", "personalize", "read_back", "verify"}
    assert encoded.verification["valid"], encoded.verification["verdict"]
    assert {"DG14", "DG15"} <= set(encoded.verification["files"])
    card = chip.card
    assert card.locked and card.aa_key is not None
    assert aa_public_key(card.file(lds.FILES["DG15"].file_id)).public_numbers() == \
        card.aa_key.public_key().public_numbers()


def test_active_authentication_with_a_chip_signing_with_another_key(
        pcscd: Pcscd, chip: ChipEmulator, files_for: FilesFor, card_files: tuple[dict[str, bytes], str]) -> None:
    _, information = card_files
    insert(chip, pcscd, "aa_wrong_key=1")
    with pytest.raises(EncodingFailed) as failure:
        ChipEncoder(pcscd.reader(0)).encode_with_active_authentication(files_for, information)
    assert failure.value.code == "encoding_failed" and failure.value.retryable
    assert "Active Authentication failed" in failure.value.message and "DG15" in failure.value.message
    assert chip.card.locked


def test_an_ecdsa_chip_without_dg14_is_refused_at_read_back(
        pcscd: Pcscd, chip: ChipEmulator, files_for: FilesFor, card_files: tuple[dict[str, bytes], str]) -> None:
    _, information = card_files
    insert(chip, pcscd)

    def without_dg14(aa_key):
        return {name: data for name, data in files_for(aa_key).items() if name != "DG14"}

    with pytest.raises(EncodingFailed) as failure:
        ChipEncoder(pcscd.reader(0)).encode_with_active_authentication(without_dg14, information)
    assert "DG14" in failure.value.message and "ecdsa-plain-SHA256" in failure.value.message


def test_internal_authenticate_only_through_bac(card_files: tuple[dict[str, bytes], str]) -> None:
    """At the Card: the AA key is generated once and before LOCK only; after LOCK a plain
    INTERNAL AUTHENTICATE answers 6982, one through secure messaging a signature that
    verifies with the generated key."""
    _, information = card_files
    card = Card()

    def send(command: apdu.Command) -> apdu.Response:
        return apdu.Response.decode(card.process(command.encode()))

    challenge = bytes(range(8))
    internal_authenticate = apdu.Command(0x00, 0x88, 0x00, 0x00, challenge, le=256)
    assert send(apdu.select_application(lds.AID)).ok
    generated = send(apdu.generate_aa_key())
    assert generated.ok
    assert send(apdu.generate_aa_key()).sw == 0x6985  # once
    assert send(internal_authenticate).sw == 0x6982  # in plain, before LOCK too
    assert send(apdu.Command(0x80, 0xE8, 0x00, 0x00, information.encode())).ok
    assert send(apdu.generate_aa_key()).sw == 0x6985  # not after LOCK
    assert send(internal_authenticate).sw == 0x6982

    terminal = bac.TerminalAuthentication(bac.AccessKeys.from_mrz_information(information),
                                          send(apdu.get_challenge()).data)
    channel = terminal.open_channel(send(terminal.command()).data)
    answer = channel.unprotect(apdu.Response.decode(card.process(channel.protect(internal_authenticate).encode())))
    assert answer.ok and len(answer.data) == 64
    key = aa_public_key(lds.dg15(serialization.load_der_public_key(generated.data)))
    assert verify_aa_signature(key, challenge, answer.data)
    assert not verify_aa_signature(key, bytes(8), answer.data)
