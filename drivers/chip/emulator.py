"""An emulated contactless chip (an eMRTD-style ISO/IEC 7816-4 card) in vsmartcard's vpcd.

The printer's contactless encoder is a PC/SC reader; in tests and demos it is pcscd's
``vpcd`` driver ("Virtual PCD 00 00"), which listens on localhost:35963 for a card. This
chip connects there, so the station talks to it through pcscd and pyscard exactly as to a
real card on a real encoder. Two parts:

- ``Card``: the chip's logic, pure (``process(apdu) -> response``, ``power_on/off``,
  ``reset``): the ICAO LDS application, transparent EFs, personalization, its lock, and
  Basic Access Control. It speaks the station's own protocol modules from the card's side:
  ``station/apdu.py`` decodes the commands, ``station/bac.py`` (``ChipAuthentication``,
  ``ChipChannel``) authenticates the reader and unwraps and wraps secure messaging.
- ``ChipEmulator``: the thin I/O around it: ``insert()`` connects to the reader's socket
  and serves it in a thread (the card entered the field), ``remove()`` closes it (the card
  left). vpcd frames every message as a 2-byte big-endian length and the payload; a
  1-byte payload is a control code (``VPCD_CONTROL_*``), anything longer a command APDU,
  answered by the response APDU in the same framing.

Commands (CLA 00 unless said; SW 9000 on success):

    SELECT          A4 04 0C <AID>   the LDS application A0000002471001 (else 6A82)
                    A4 02 0C <fid>   an EF of the current DF (A4 00 0C <fid> too;
                                     A4 00 0C [3F00]: the MF); P2 04 or 00 answers the FCP
    CREATE FILE     E0 00 00 62{80 size, 82 01 01, 83 fid[, 88 SFI]}  a transparent EF in
                                     the current DF, which becomes the current EF; its SFI
                                     is the fid's low 5 bits unless 88 says otherwise
    UPDATE BINARY   D6 P1P2 <data>   offset in P1-P2 (15 bits), or P1 = 100xxxxx an SFI and
                                     P2 the offset; D7 00 00 {54 offset}{53 data} above that
    READ BINARY     B0 P1P2 Le       addressed as UPDATE; short or extended Le; B1 00 00
                                     {54 offset} Le answers {53 data}, Le counting 53's header
    GET CHALLENGE   84 00 00 08      RND.IC for BAC
    EXT. AUTH.      82 00 00 28 <E.IFD||M.IFD> 28   BAC mutual authentication (locked chip)
    LOCK (CLA 80)   E8 00 00 18 <MRZ information>   ends personalization (below)
    GENERATE AA KEY PAIR (CLA 80)  46 00 00 Le   before LOCK, once: the chip generates its
                                     Active Authentication key pair (ECDSA P-256) inside and
                                     answers the public key's SubjectPublicKeyInfo (DER, 91
                                     bytes; Le 00 or at least 91); the private key never leaves
    INT. AUTH.      88 00 00 08 <challenge> Le   Active Authentication (ICAO 9303-11 §6.1),
                                     through secure messaging only (after LOCK and BAC): the
                                     ECDSA signature of SHA-256(challenge) with the AA key, in
                                     the plain format of BSI TR-03111 (r || s, 32 bytes each,
                                     64 in all; Le 00 or at least 64)

A READ BINARY with Le 00 (or 0000) reads what is left of the file, up to 256 (65536)
bytes, with 9000; an explicit Le past the end reads what is left with 6282.

Status words (``Status``): 6700 wrong length (a malformed APDU, a bad Lc or Le), 6A86 bad
P1-P2, 6D00 unknown INS, 6E00 unknown CLA, 6A82 no such file or application, 6A89 file
exists, 6A84 not enough memory (the chip's, or the file's for a write past its end), 6A80
bad data (FCP, offset DO, MRZ check digits), 6B00 offset beyond the file, 6986 no current
EF, 6581 memory failure (fault), 6982 security status not satisfied (a plain read of a
locked chip, secure messaging without BAC), 6985 conditions of use not satisfied (writing
a locked chip, a second LOCK, EXTERNAL AUTHENTICATE before LOCK or without a challenge,
GENERATE AA KEY PAIR after LOCK or a second time, INTERNAL AUTHENTICATE on a chip without an
AA key), 6982 also for INTERNAL AUTHENTICATE in plain, 6300 authentication failed, 6987 a
plain APDU in a BAC session, 6988 a protected APDU that does not verify (both end the
session).

Personalization: until LOCK, files are created and written freely and read in plain.
LOCK's data is the 24-character MRZ information (document number, date of birth, date of
expiry, each with its check digit) the BAC keys are derived from; its check digits must
hold. After it, CREATE FILE and UPDATE BINARY answer 6985 and a plain READ BINARY 6982: a
reader must GET CHALLENGE, EXTERNAL AUTHENTICATE, then send only secure-messaging APDUs
(CLA 0C), each answered protected.

Faults, from a spec string (``ChipFaults.parse``, ``ChipEmulator(faults=...)``):

    fail_write=N   the N-th UPDATE BINARY that would write answers 6581 and writes nothing
    tear_write=N   the N-th UPDATE BINARY is torn: the first half of its data reaches the
                   EEPROM, then the card leaves the field without answering
    write_s=S      every UPDATE BINARY takes S seconds; ``remove()`` during it tears it
    wrong_mrz=1    LOCK stores other MRZ information than it was sent (one digit of the
                   document number changed, its check digit recomputed): the chip keys
                   BAC to a document that was never printed, so a reader using the
                   printed MRZ fails EXTERNAL AUTHENTICATE with 6300
    aa_wrong_key=1 INTERNAL AUTHENTICATE signs with another key than the one whose public
                   key GENERATE AA KEY PAIR answered: the signature does not verify against DG15

``remove()`` may be called at any time from any thread.
"""
from __future__ import annotations

import argparse
import enum
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from drivers.emulation import FaultSpec, wait_for_stop
from station import apdu
from station.apdu import Command, Response, Status
from station.bac import AccessKeys, ChipAuthentication, ChipChannel, SecureMessagingError
from station.errors import BadRequest, ProtocolError
from station.lds import AID as LDS_AID
from station.mrz import check_digit

log = logging.getLogger("chip.emulator")

VPCD_HOST = "localhost"
VPCD_PORT = 0x8C7B  # 35963, "Virtual PCD 00 00" (/etc/reader.conf.d/vpcd); slot n listens on +n
VPCD_CONTROL_OFF = 0
VPCD_CONTROL_ON = 1
VPCD_CONTROL_RESET = 2
VPCD_CONTROL_ATR = 4
CONNECT_TIMEOUT_S = 2.0  # reaching the reader's socket on localhost
JOIN_TIMEOUT_S = 2.0     # the serving thread ending after remove()
# pcscd polls a vpcd reader every 0.4 s; a card back in the field before the poll that
# finds it gone looks to pcscd as if it never left (its insertion is never reported), so
# insert() keeps a card out of a reader's field this long after one left it.
FIELD_GAP_S = 1.0

MF_ID = 0x3F00
CLA_PROPRIETARY = 0x80
AA_CURVE = ec.SECP256R1()
AA_PUBLIC_KEY_LENGTH = 91  # the DER SubjectPublicKeyInfo of a P-256 key (an uncompressed point)
AA_SIGNATURE_HALF = 32  # r and s of a P-256 signature, each a 32-byte big-endian integer
AA_CHALLENGE_LENGTH = 8  # ICAO 9303-11 §6.1: the inspection system's 8-byte random challenge
SM_CLA_BITS = 0x0C
TAG_SFI = 0x88
MRZ_INFORMATION_LENGTH = 24
K_IC_LENGTH = 16
MEMORY_BYTES = 128 * 1024  # EEPROM for files; a DG2 with a JPEG 2000 portrait is ~15-20 KB
MAX_SHORT_OFFSET = apdu.MAX_SHORT_OFFSET


def contactless_atr(historical: bytes) -> bytes:
    """The ATR a PC/SC reader makes up for an ISO 14443-4 card (PC/SC part 3, 3.1.3.2.3):
    3B 8n 80 01, the historical bytes, TCK (XOR of T0 up to the last historical byte)."""
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    check = 0
    for byte in body:
        check ^= byte
    return b"\x3B" + body + bytes([check])


# Compact-TLV card capabilities (ISO 7816-4 12.1.1.10): selection by DF name, file id and
# SFI; 1-byte data units; extended Lc and Le.
ATR = contactless_atr(bytes.fromhex("8073940140"))


class CardError(Exception):
    """A command refused with ``sw`` (the card's answer is the status word alone)."""

    def __init__(self, sw: Status, why: str):
        super().__init__(f"{sw.value:04X} {sw.name}: {why}")
        self.sw = sw


@dataclass(frozen=True)
class ChipFaults(FaultSpec):
    counts: ClassVar[tuple[str, ...]] = ("fail_write", "tear_write", "wrong_mrz", "aa_wrong_key", "seed")
    fail_write: int = 0
    tear_write: int = 0
    write_s: float = 0.0
    wrong_mrz: int = 0  # 0 or 1: LOCK keeps a mistyped MRZ
    aa_wrong_key: int = 0  # 0 or 1: INTERNAL AUTHENTICATE signs with another key than DG15's
    seed: int = 0  # accepted so a station-wide spec parses; nothing here is random


class Lifecycle(enum.StrEnum):
    PERSONALIZATION = "personalization"
    OPERATIONAL = "operational"  # locked: read-only, through BAC


@dataclass
class ElementaryFile:
    """A transparent EF: its bytes start as 00 (erased EEPROM of this chip)."""

    file_id: int
    size: int
    sfi: int | None
    content: bytearray

    def fcp(self) -> bytes:
        objects = (apdu.data_object(apdu.TAG_FILE_SIZE, self.size.to_bytes(2 if self.size < 0x10000 else 3, "big"))
                   + apdu.data_object(apdu.TAG_FILE_DESCRIPTOR, bytes([apdu.FILE_DESCRIPTOR_TRANSPARENT_EF]))
                   + apdu.data_object(apdu.TAG_FILE_ID, self.file_id.to_bytes(2, "big")))
        if self.sfi is not None:
            objects += apdu.data_object(TAG_SFI, bytes([self.sfi << 3]))
        return apdu.data_object(apdu.TAG_FCP, objects)


@dataclass
class DedicatedFile:
    """The MF or an application: a flat directory of EFs (the LDS has no sub-DFs)."""

    name: str
    aid: bytes | None = None
    files: dict[int, ElementaryFile] = field(default_factory=dict)

    def by_sfi(self, sfi: int) -> ElementaryFile | None:
        return next((ef for ef in self.files.values() if ef.sfi == sfi), None)

    def fcp(self) -> bytes:
        name = (apdu.data_object(0x84, self.aid) if self.aid
                else apdu.data_object(apdu.TAG_FILE_ID, MF_ID.to_bytes(2, "big")))
        return apdu.data_object(apdu.TAG_FCP, apdu.data_object(apdu.TAG_FILE_DESCRIPTOR, b"\x38") + name)


@dataclass
class CardStats:
    commands: int = 0
    refused: int = 0        # answered with another status word than 9000
    writes: int = 0         # UPDATE BINARY commands that reached the EEPROM (or failed in it)
    bytes_written: int = 0
    bytes_read: int = 0
    power_ups: int = 0
    authentications: int = 0


Answer = tuple[bytes, Status]


class Card:
    """The chip: a pure state machine, an APDU in, the response APDU out.

    Persistent (EEPROM): the files, the lifecycle, the BAC keys, the Active Authentication
    private key (generated inside, never answered). Volatile (lost on power
    off or reset): the current DF and EF, the challenge, the BAC session. ``random`` gives
    RND.IC and K.IC (the ICAO worked example injects its published values)."""

    def __init__(self, *, faults: ChipFaults | None = None, memory_bytes: int = MEMORY_BYTES,
                 random: Callable[[int], bytes] = secrets.token_bytes):
        self.faults = faults or ChipFaults()
        self.memory_bytes = memory_bytes
        self.random = random
        self.mf = DedicatedFile("MF")
        self.lds = DedicatedFile("LDS", LDS_AID)
        self.lifecycle = Lifecycle.PERSONALIZATION
        self.mrz_information: str | None = None
        self.keys: AccessKeys | None = None
        self.aa_key: ec.EllipticCurvePrivateKey | None = None
        self.stats = CardStats()
        self.reset()

    # -- power (volatile state) ----------------------------------------------------------
    def power_on(self) -> None:
        self.stats.power_ups += 1
        self.reset()

    def power_off(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.current_df = self.mf
        self.current_ef: ElementaryFile | None = None
        self.rnd_ic: bytes | None = None
        self.session: ChipChannel | None = None

    @property
    def locked(self) -> bool:
        return self.lifecycle is Lifecycle.OPERATIONAL

    @property
    def memory_used(self) -> int:
        return sum(ef.size for df in (self.mf, self.lds) for ef in df.files.values())

    def file(self, file_id: int, df: DedicatedFile | None = None) -> bytes:
        """An EF's content (for tests and the control plane, not through APDUs)."""
        return bytes((df or self.lds).files[file_id].content)

    def snapshot(self) -> dict[str, Any]:
        return {
            "lifecycle": self.lifecycle.value,
            "files": {df.name: {f"{fid:04X}": ef.size for fid, ef in df.files.items()}
                      for df in (self.mf, self.lds)},
            "memory_used": self.memory_used,
            "memory_bytes": self.memory_bytes,
            "current_df": self.current_df.name,
            "current_ef": f"{self.current_ef.file_id:04X}" if self.current_ef else None,
            "bac_session": self.session is not None,
            "aa_key": self.aa_key is not None,
            "faults": str(self.faults),
            **asdict(self.stats),
        }

    # -- APDUs -----------------------------------------------------------------------------
    def process(self, command_apdu: bytes) -> bytes:
        """The response APDU (data || SW1 SW2) to one command APDU."""
        self.stats.commands += 1
        try:
            try:
                command = Command.decode(command_apdu)
            except ProtocolError as error:
                raise CardError(Status.WRONG_LENGTH, error.message) from None
            if command.cla & SM_CLA_BITS == SM_CLA_BITS:
                return self._protected(command)
            if self.session is not None:
                self.session = None
                raise CardError(Status.SM_DATA_OBJECTS_MISSING, "a plain APDU in a BAC session ends it")
            data, sw = self._execute(command)
        except CardError as refusal:
            log.debug("chip refused %s: %s", command_apdu[:4].hex(), refusal)
            data, sw = b"", refusal.sw
        if sw is not Status.OK:
            self.stats.refused += 1
        return data + int(sw).to_bytes(2, "big")

    def _protected(self, command: Command) -> bytes:
        if self.session is None:
            raise CardError(Status.SECURITY_STATUS_NOT_SATISFIED, "secure messaging without a BAC session")
        try:
            plain = self.session.unprotect(command)
        except SecureMessagingError as error:
            self.session = None
            raise CardError(Status(error.status), f"secure messaging ended: {error.message}") from None
        try:
            data, sw = self._execute(plain, secure=True)
        except CardError as refusal:
            data, sw = b"", refusal.sw
        if sw is not Status.OK:
            self.stats.refused += 1
        return self.session.protect(Response.status(sw, data)).encode()

    def _execute(self, command: Command, *, secure: bool = False) -> Answer:
        if command.cla == CLA_PROPRIETARY:
            if command.ins == apdu.INS_LOCK:
                return self._lock(command)
            if command.ins == apdu.INS_GENERATE_AA_KEY:
                return self._generate_aa_key(command)
            raise CardError(Status.INS_NOT_SUPPORTED, f"INS {command.ins:02X} is not a proprietary command")
        if command.cla != 0x00:
            raise CardError(Status.CLA_NOT_SUPPORTED, f"CLA {command.cla:02X}")
        if command.ins in (apdu.INS_READ_BINARY, apdu.INS_READ_BINARY_ODD):
            return self._read_binary(command, secure)
        if command.ins == apdu.INS_INTERNAL_AUTHENTICATE:
            return self._internal_authenticate(command, secure)
        handler = {
            apdu.INS_SELECT: self._select,
            apdu.INS_CREATE_FILE: self._create_file,
            apdu.INS_UPDATE_BINARY: self._update_binary,
            apdu.INS_UPDATE_BINARY_ODD: self._update_binary,
            apdu.INS_GET_CHALLENGE: self._get_challenge,
            apdu.INS_EXTERNAL_AUTHENTICATE: self._external_authenticate,
        }.get(command.ins)
        if handler is None:
            raise CardError(Status.INS_NOT_SUPPORTED, f"INS {command.ins:02X}")
        return handler(command)

    def _select(self, command: Command) -> Answer:
        if command.p2 not in (0x00, 0x04, 0x0C):
            raise CardError(Status.INCORRECT_P1_P2, f"SELECT P2 {command.p2:02X}: 0C (no data) or 04/00 (FCP)")
        target: DedicatedFile | ElementaryFile
        if command.p1 == 0x04:
            if not command.data:
                raise CardError(Status.WRONG_LENGTH, "SELECT by name without an AID")
            if command.data != self.lds.aid:
                raise CardError(Status.FILE_NOT_FOUND, f"no application {command.data.hex().upper()}")
            target = self.current_df = self.lds
            self.current_ef = None
        elif command.p1 in (0x00, 0x02):
            if command.p1 == 0x00 and command.data in (b"", MF_ID.to_bytes(2, "big")):
                target = self.current_df = self.mf
                self.current_ef = None
            else:
                if len(command.data) != 2:
                    raise CardError(Status.WRONG_LENGTH, f"a file id has 2 bytes, got {len(command.data)}")
                ef = self.current_df.files.get(int.from_bytes(command.data, "big"))
                if ef is None:
                    raise CardError(Status.FILE_NOT_FOUND, f"no EF {command.data.hex().upper()} in {self.current_df.name}")
                target = self.current_ef = ef
        else:
            raise CardError(Status.INCORRECT_P1_P2, f"SELECT P1 {command.p1:02X}: 04 (AID), 02 or 00 (file id)")
        return (b"" if command.p2 == 0x0C else target.fcp()), Status.OK

    def _create_file(self, command: Command) -> Answer:
        if self.locked:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "personalization is locked")
        if command.p1 << 8 | command.p2:
            raise CardError(Status.INCORRECT_P1_P2, "CREATE FILE takes P1-P2 0000")
        if not command.data:
            raise CardError(Status.WRONG_LENGTH, "CREATE FILE without an FCP template")
        try:
            templates = apdu.data_objects(command.data)
            if [tag for tag, _ in templates] != [apdu.TAG_FCP]:
                raise ProtocolError(f"one FCP template (62) expected, got {apdu.shown(command.data)}")
            fcp = dict(apdu.data_objects(templates[0][1]))
        except ProtocolError as error:
            raise CardError(Status.WRONG_DATA, error.message) from None
        size, descriptor, file_id = (fcp.get(apdu.TAG_FILE_SIZE), fcp.get(apdu.TAG_FILE_DESCRIPTOR),
                                     fcp.get(apdu.TAG_FILE_ID))
        if size is None or not 1 <= len(size) <= 3 or file_id is None or len(file_id) != 2:
            raise CardError(Status.WRONG_DATA, "the FCP needs 80 (size) and 83 (a 2-byte file id)")
        if descriptor not in (None, bytes([apdu.FILE_DESCRIPTOR_TRANSPARENT_EF])):
            raise CardError(Status.WRONG_DATA, f"file descriptor {descriptor.hex()}: only 01 (transparent EF)")
        fid, length = int.from_bytes(file_id, "big"), int.from_bytes(size, "big")
        if fid in (MF_ID, 0x3FFF, 0xFFFF):
            raise CardError(Status.WRONG_DATA, f"file id {fid:04X} is reserved")
        if not length:
            raise CardError(Status.WRONG_DATA, "an EF of 0 bytes")
        df = self.current_df
        if fid in df.files:
            raise CardError(Status.FILE_EXISTS, f"EF {fid:04X} exists in {df.name}")
        if self.memory_used + length > self.memory_bytes:
            raise CardError(Status.NOT_ENOUGH_MEMORY, f"{length} bytes asked, {self.memory_bytes - self.memory_used} free")
        sfi = fcp[TAG_SFI][0] >> 3 if fcp.get(TAG_SFI) else (None if TAG_SFI in fcp else fid & 0x1F)
        if not sfi or df.by_sfi(sfi) is not None:
            sfi = None  # none asked, or taken: the EF is reached by its file id only
        df.files[fid] = self.current_ef = ElementaryFile(fid, length, sfi, bytearray(length))
        return b"", Status.OK

    def _addressed(self, command: Command) -> tuple[ElementaryFile, int]:
        """The EF and offset of READ/UPDATE BINARY: P1-P2 a 15-bit offset in the current
        EF, or P1 = 100xxxxx an SFI (which becomes the current EF) and P2 the offset; the
        odd INS carry the offset in DO'54'."""
        if command.ins & 1:
            try:
                offset = apdu.binary_offset(command)
            except ProtocolError as error:
                raise CardError(Status.WRONG_DATA, error.message) from None
            if command.p1 << 8 | command.p2:
                raise CardError(Status.INCORRECT_P1_P2, "an odd-INS binary command takes P1-P2 0000")
        elif command.p1 & 0x80:
            if command.p1 & 0x60:
                raise CardError(Status.INCORRECT_P1_P2, f"P1 {command.p1:02X}: 100xxxxx for an SFI")
            ef = self.current_df.by_sfi(command.p1 & 0x1F)
            if ef is None:
                raise CardError(Status.FILE_NOT_FOUND, f"no EF with SFI {command.p1 & 0x1F:02X} in {self.current_df.name}")
            self.current_ef = ef
            return ef, command.p2
        else:
            offset = command.p1 << 8 | command.p2
        if self.current_ef is None:
            raise CardError(Status.NO_CURRENT_EF, "no EF selected")
        return self.current_ef, offset

    def _update_binary(self, command: Command, *, torn: bool = False) -> Answer:
        if self.locked:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "personalization is locked")
        if not command.data:
            raise CardError(Status.WRONG_LENGTH, "UPDATE BINARY without data")
        ef, offset = self._addressed(command)
        try:
            content = apdu.binary_content(command)
        except ProtocolError as error:
            raise CardError(Status.WRONG_DATA, error.message) from None
        if offset >= ef.size:
            raise CardError(Status.WRONG_P1_P2, f"offset {offset} beyond EF {ef.file_id:04X} of {ef.size} bytes")
        if offset + len(content) > ef.size:
            raise CardError(Status.NOT_ENOUGH_MEMORY, f"{len(content)} bytes at {offset} run past the "
                                                  f"end of EF {ef.file_id:04X} ({ef.size} bytes)")
        self.stats.writes += 1
        if self.stats.writes == self.faults.fail_write:
            raise CardError(Status.MEMORY_FAILURE, f"write {self.stats.writes} failed (fault fail_write)")
        written = content[:len(content) // 2] if torn else content
        ef.content[offset:offset + len(written)] = written
        self.stats.bytes_written += len(written)
        return b"", Status.OK

    def tear(self, command_apdu: bytes) -> None:
        """The field dropped while this UPDATE BINARY was being written: the first half of
        its data reached the EEPROM, and there is no answer. Anything else is ignored."""
        try:
            command = Command.decode(command_apdu)
            if command.cla == 0x00 and command.ins in (apdu.INS_UPDATE_BINARY, apdu.INS_UPDATE_BINARY_ODD):
                self._update_binary(command, torn=True)
        except (CardError, ProtocolError) as refusal:
            log.debug("a torn command that would have been refused anyway: %s", refusal)

    def _read_binary(self, command: Command, secure: bool) -> Answer:
        if self.locked and not secure:
            raise CardError(Status.SECURITY_STATUS_NOT_SATISFIED, "a locked chip is read through BAC only")
        if command.data and not command.ins & 1:
            raise CardError(Status.WRONG_LENGTH, "READ BINARY B0 takes no data")
        if command.le is None:
            raise CardError(Status.WRONG_LENGTH, "READ BINARY without Le")
        ef, offset = self._addressed(command)
        if offset >= ef.size:
            raise CardError(Status.WRONG_P1_P2, f"offset {offset} beyond EF {ef.file_id:04X} of {ef.size} bytes")
        as_much_as_there_is = command.le in (apdu.SHORT_MAX_LE, apdu.EXTENDED_MAX_LE)
        if command.ins & 1:  # the content in DO'53', whose header Le counts too
            count = min(ef.size - offset, command.le - 2)
            while count > 0 and len(apdu.data_object(apdu.TAG_DISCRETIONARY_DATA, bytes(count))) > command.le:
                count -= 1
            content = bytes(ef.content[offset:offset + max(count, 0)])
            data = apdu.data_object(apdu.TAG_DISCRETIONARY_DATA, content)
        else:
            content = data = bytes(ef.content[offset:offset + command.le])
        short = len(data) < command.le and offset + len(content) == ef.size  # the file ended first
        self.stats.bytes_read += len(content)
        return data, Status.END_OF_FILE if short and not as_much_as_there_is else Status.OK

    def _get_challenge(self, command: Command) -> Answer:
        if command.p1 << 8 | command.p2:
            raise CardError(Status.INCORRECT_P1_P2, "GET CHALLENGE takes P1-P2 0000")
        if command.data or command.le != apdu.CHALLENGE_LENGTH:
            raise CardError(Status.WRONG_LENGTH, f"GET CHALLENGE answers {apdu.CHALLENGE_LENGTH} bytes: Le 08")
        self.rnd_ic = self.random(apdu.CHALLENGE_LENGTH)
        return self.rnd_ic, Status.OK

    def _external_authenticate(self, command: Command) -> Answer:
        if command.p1 << 8 | command.p2:
            raise CardError(Status.INCORRECT_P1_P2, "EXTERNAL AUTHENTICATE takes P1-P2 0000")
        if len(command.data) != apdu.MUTUAL_AUTHENTICATE_LENGTH:
            raise CardError(Status.WRONG_LENGTH, f"EXTERNAL AUTHENTICATE takes {apdu.MUTUAL_AUTHENTICATE_LENGTH} bytes")
        rnd_ic, self.rnd_ic = self.rnd_ic, None  # a challenge answers one attempt
        if self.keys is None:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "no BAC keys before LOCK")
        if rnd_ic is None:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "EXTERNAL AUTHENTICATE without GET CHALLENGE")
        try:
            data, self.session = ChipAuthentication(self.keys, rnd_ic, self.random(K_IC_LENGTH)).answer(command.data)
        except SecureMessagingError as error:
            raise CardError(Status(error.status), error.message) from None
        self.stats.authentications += 1
        return data, Status.OK

    def _generate_aa_key(self, command: Command) -> Answer:
        if self.locked:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "personalization is locked")
        if self.aa_key is not None:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "the Active Authentication key pair exists already")
        if command.p1 << 8 | command.p2:
            raise CardError(Status.INCORRECT_P1_P2, "GENERATE AA KEY PAIR takes P1-P2 0000")
        if command.data or command.le is None or command.le < AA_PUBLIC_KEY_LENGTH:
            raise CardError(Status.WRONG_LENGTH, f"GENERATE AA KEY PAIR takes no data and answers "
                                                 f"{AA_PUBLIC_KEY_LENGTH} bytes: Le 00")
        self.aa_key = ec.generate_private_key(AA_CURVE)
        public = self.aa_key.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        log.info("chip generated its Active Authentication key pair (ECDSA P-256)")
        return public, Status.OK

    def _internal_authenticate(self, command: Command, secure: bool) -> Answer:
        if not secure:
            raise CardError(Status.SECURITY_STATUS_NOT_SATISFIED, "INTERNAL AUTHENTICATE through BAC only")
        if command.p1 << 8 | command.p2:
            raise CardError(Status.INCORRECT_P1_P2, "INTERNAL AUTHENTICATE takes P1-P2 0000")
        if len(command.data) != AA_CHALLENGE_LENGTH or command.le is None or command.le < 2 * AA_SIGNATURE_HALF:
            raise CardError(Status.WRONG_LENGTH,
                            f"INTERNAL AUTHENTICATE takes an {AA_CHALLENGE_LENGTH}-byte challenge, Le 00")
        if self.aa_key is None:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "no Active Authentication key (GENERATE AA KEY PAIR)")
        key = ec.generate_private_key(AA_CURVE) if self.faults.aa_wrong_key else self.aa_key
        r, s = decode_dss_signature(key.sign(command.data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(AA_SIGNATURE_HALF, "big") + s.to_bytes(AA_SIGNATURE_HALF, "big"), Status.OK

    def _lock(self, command: Command) -> Answer:
        if self.locked:
            raise CardError(Status.CONDITIONS_NOT_SATISFIED, "already locked")
        if command.p1 << 8 | command.p2:
            raise CardError(Status.INCORRECT_P1_P2, "LOCK takes P1-P2 0000")
        if len(command.data) != MRZ_INFORMATION_LENGTH:
            raise CardError(Status.WRONG_LENGTH, f"LOCK takes the {MRZ_INFORMATION_LENGTH}-character MRZ information")
        self.mrz_information = checked_mrz_information(command.data)
        if self.faults.wrong_mrz:
            self.mrz_information = mistyped_mrz_information(self.mrz_information)
            log.info("chip locked with a mistyped MRZ (fault wrong_mrz)")
        self.keys = AccessKeys.from_mrz_information(self.mrz_information)
        self.lifecycle = Lifecycle.OPERATIONAL
        self.current_ef = None
        log.info("chip locked: personalization ended, BAC required")
        return b"", Status.OK


def checked_mrz_information(data: bytes) -> str:
    """The MRZ information if its dates are dates and its check digits hold, else 6A80."""
    text = data.decode("ascii", errors="replace")
    if not all(char.isdigit() or char == "<" for char in text[10:16] + text[17:23]):
        raise CardError(Status.WRONG_DATA, f"MRZ information {text!r}: dates must be YYMMDD")
    try:
        fields = ((text[0:9], text[9]), (text[10:16], text[16]), (text[17:23], text[23]))
        wrong = [value for value, digit in fields if check_digit(value) != digit]
    except BadRequest as error:
        raise CardError(Status.WRONG_DATA, str(error)) from None
    if wrong:
        raise CardError(Status.WRONG_DATA, f"MRZ information {text!r}: check digit wrong for {', '.join(wrong)}")
    return text


def mistyped_mrz_information(information: str) -> str:
    """``information`` with the last digit of its document number one higher (9 -> 0) and
    that field's check digit recomputed: still well-formed, but another document's keys.
    A document number without digits gets the change in its date of birth's last digit."""
    digits = [i for i in range(9) if information[i].isdigit()]
    start, end = (0, 9) if digits else (10, 16)
    at = digits[-1] if digits else 15
    field = information[start:at] + str((int(information[at]) + 1) % 10) + information[at + 1:end]
    return information[:start] + field + check_digit(field) + information[end + 1:]


# -- the card in the field -------------------------------------------------------------------
_departures: dict[tuple[str, int], float] = {}  # (host, port) -> when a card last left
_departures_lock = threading.Lock()


class ReaderUnavailable(ConnectionError):
    """No vpcd reader listens where the chip was to be inserted."""


class _CardLeft(Exception):
    """The card left the field (remove(), a torn write, the reader closed)."""


class ChipEmulator:
    """The chip in the encoder's field: ``insert()`` connects to vpcd and serves it in a
    thread, ``remove()`` closes the connection. The ``card`` (and its files) outlives
    both, as a real chip outlives leaving the field."""

    def __init__(self, host: str = VPCD_HOST, port: int = VPCD_PORT, *, card: Card | None = None,
                 faults: ChipFaults | str | None = None, atr: bytes = ATR):
        self.host = host
        self.port = port
        self.atr = atr
        self.card = card if card is not None else Card()
        if faults is not None:
            self.card.faults = faults if isinstance(faults, ChipFaults) else ChipFaults.parse(faults)
        self.insertions = 0
        self.torn_writes = 0
        self.failures = 0  # the card's own bugs, each logged with its traceback
        self._lock = threading.Lock()  # the card: the serving thread and the test's thread
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._removing = threading.Event()
        self._detected = threading.Event()

    @property
    def faults(self) -> ChipFaults:
        return self.card.faults

    @property
    def inserted(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def insert(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Enter the field: connect to the reader's socket and answer it in a thread.
        pcscd notices at its next poll of the reader (about 0.4 s; ``wait_detected``)."""
        if self.inserted:
            raise RuntimeError(f"the chip is already in the field of {self.host}:{self.port}")
        with _departures_lock:
            left = _departures.get((self.host, self.port))
        if left is not None and (wait := left + FIELD_GAP_S - time.monotonic()) > 0:
            time.sleep(wait)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        except OSError as error:
            raise ReaderUnavailable(
                f"no virtual reader at {self.host}:{self.port} ({error}): start pcscd with the vpcd "
                f"driver (Debian packages pcscd and vsmartcard-vpcd, /etc/reader.conf.d/vpcd)") from error
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._removing.clear()
        self._detected.clear()
        self._socket = sock
        self.insertions += 1
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                        name=f"chip-{self.port}")
        self._thread.start()
        log.info("chip inserted into the reader at %s:%d", self.host, self.port)

    def remove(self) -> None:
        """Leave the field now, even in the middle of a command (a write in progress is
        torn). Idempotent."""
        self._removing.set()
        sock, thread = self._socket, self._thread
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the serving thread's recv
            except OSError:
                pass  # already disconnected by the reader
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning("chip serving thread did not end within %.1f s", JOIN_TIMEOUT_S)

    def wait_detected(self, timeout_s: float) -> bool:
        """True once the reader has asked this insertion for its ATR (pcscd saw the card)."""
        return self._detected.wait(timeout_s)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            card = self.card.snapshot()
        return {"reader": f"{self.host}:{self.port}", "inserted": self.inserted,
                "insertions": self.insertions, "torn_writes": self.torn_writes, "failures": self.failures,
                "card": card}

    def __enter__(self) -> "ChipEmulator":
        self.insert()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- serving ---------------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                self._answer(sock, _receive(sock))
        except _CardLeft as why:
            log.info("chip left the field of %s:%d: %s", self.host, self.port, why)
        except OSError as error:
            log.info("chip left the field of %s:%d: %s", self.host, self.port, error)
        except Exception:  # a card bug: the card leaves, the test sees an absent card
            self.failures += 1
            log.exception("chip emulator failed; the card leaves the field")
        finally:
            with self._lock:
                self.card.power_off()
            sock.close()
            with _departures_lock:
                _departures[(self.host, self.port)] = time.monotonic()

    def _answer(self, sock: socket.socket, message: bytes) -> None:
        if len(message) == 1:
            self._control(sock, message[0])
            return
        if self._tears(message):
            with self._lock:
                self.card.tear(message)
            self.torn_writes += 1
            raise _CardLeft("torn in the middle of UPDATE BINARY")
        with self._lock:
            response = self.card.process(message)
        _send(sock, response)

    def _tears(self, command_apdu: bytes) -> bool:
        """Whether this APDU is a write the card leaves during (faults tear_write, write_s)."""
        if command_apdu[:1] != b"\x00" or command_apdu[1] not in (apdu.INS_UPDATE_BINARY, apdu.INS_UPDATE_BINARY_ODD):
            return False
        faults = self.card.faults
        if faults.tear_write and self.card.stats.writes + 1 == faults.tear_write:
            return True
        return bool(faults.write_s) and self._removing.wait(faults.write_s)

    def _control(self, sock: socket.socket, code: int) -> None:
        with self._lock:
            if code == VPCD_CONTROL_ATR:
                self._detected.set()
                _send(sock, self.atr)
            elif code == VPCD_CONTROL_ON:
                self.card.power_on()
            elif code == VPCD_CONTROL_OFF:
                self.card.power_off()
            elif code == VPCD_CONTROL_RESET:
                self.card.reset()
            else:
                log.warning("unknown vpcd control code %d ignored", code)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux


def _receive(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", _exactly(sock, 2))
    if length == 0:
        raise _CardLeft("vpcd sent an empty message (protocol error)")
    return _exactly(sock, length)


def _exactly(sock: socket.socket, length: int) -> bytes:
    chunks, missing = [], length
    while missing:
        if _QUICKACK is not None:
            # ACK at once: with a delayed ACK every exchange with vpcd stalls ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        chunk = sock.recv(missing)
        if not chunk:
            raise _CardLeft("the reader closed the connection" if missing == length and not chunks
                            else f"the reader closed the connection {missing} bytes into a message")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("!H", len(payload)) + payload)


def main(argv: list[str] | None = None) -> int:
    """Insert a blank chip into vpcd and serve it until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m drivers.chip.emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=VPCD_HOST)
    parser.add_argument("--port", type=int, default=VPCD_PORT, help=f"vpcd slot port (default {VPCD_PORT})")
    parser.add_argument("--faults", default="", help="fault spec, e.g. fail_write=3 or tear_write=5,write_s=0.2")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        faults = ChipFaults.parse(args.faults)
    except ValueError as error:
        parser.error(str(error))
    from station import logs

    logs.setup(args.log_level)
    emulator = ChipEmulator(args.host, args.port, faults=faults)
    try:
        emulator.insert()
    except ReaderUnavailable as error:
        parser.exit(1, f"{error}\n")
    try:
        wait_for_stop(f"chip in the field of {args.host}:{args.port}")
    finally:
        emulator.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
