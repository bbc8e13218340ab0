"""The chip encoder: personalise a card's chip over PC/SC, lock it, read it back through BAC.

A card printer's contactless encoder is a PC/SC reader; the controller drives it through
``pcscd`` with ``pyscard`` while the printer holds the card at its contactless station
(tests and the demo: pcscd's virtual reader ``vpcd`` with the emulated chip of
``drivers/chip/emulator.py``). One card, in order:

0. with Active Authentication (``encode_with_active_authentication``): SELECT the
   application and GENERATE AA KEY PAIR (the profile's ``apdu.generate_aa_key``): the chip makes
   its ECDSA P-256 key pair inside and answers the public key, which goes into DG15 and so
   into the signed EF.SOD (the files are built only now, from it);
1. **personalise**: SELECT the LDS application (``lds.AID``), then for each file CREATE
   FILE, UPDATE BINARY in chunks (``CHUNK_BYTES``), as the chip's personalisation profile
   allows before it is locked;
2. **lock**: the profile's LOCK command with the MRZ information, after which the chip
   answers reads only through Basic Access Control (``apdu.lock``: the emulated chip's
   profile; a real chip's vendor profile plugs in here);
3. **read back** like an inspection system: SELECT the application, GET CHALLENGE,
   EXTERNAL AUTHENTICATE with the keys from the MRZ (``station/bac.py``), then every file
   through secure messaging; with Active Authentication (ICAO 9303-11 §6.1), INTERNAL
   AUTHENTICATE with a random 8-byte challenge, its signature checked with the key of the
   DG15 read back (as an inspection system would, not the key the chip answered in step 0);
4. **verify**: each file read back equals what was written, and passive authentication of
   the read-back set passes (``station/chip_verify.py``: hashes and the SOD signature, the
   chain when a CSCA is given).

Active Authentication here is ECDSA only: the signature is the plain r || s of BSI
TR-03111 over SHA-256 of the challenge, the algorithm DG14's ActiveAuthenticationInfo names
(``lds.dg14``; the read-back checks it is there, as 9303-11 wants for an ECDSA key).

Any failure on the way is ``encoding_failed`` (the card is rejected and the print queue
retries on a new one); a reader that is not there is ``device_error`` (the queue waits).
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from station import apdu, bac, chip_verify, lds
from station.apdu import Command, Response
from station.errors import DeviceError, StationError

log = logging.getLogger("station.chip")

CHUNK_BYTES = 223  # UPDATE / READ BINARY data per APDU: short lengths, room for secure messaging
AA_CHALLENGE_LENGTH = 8
CARD_WAIT_S = 5.0

# A chip's files, built once its Active Authentication public key is known (DG15).
FilesFor = Callable[[ec.EllipticCurvePublicKey], Mapping[str, bytes]]


class EncodingFailed(StationError):
    code = "encoding_failed"
    retryable = True


@dataclass
class Encoded:
    """What the encoder did to one chip."""

    files: dict[str, bytes]
    seconds: dict[str, float] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    active_authentication: bool = False  # INTERNAL AUTHENTICATE verified with the DG15 read back


class ChipEncoder:
    """One PC/SC reader (matched by name) and the card in its field."""

    def __init__(self, reader: str = "Virtual PCD", *, card_wait_s: float = CARD_WAIT_S):
        self.reader_name = reader
        self.card_wait_s = card_wait_s
        self._connection: Any = None

    # -- the card ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Wait for a card in the reader's field (the printer just moved it there)."""
        from smartcard.Exceptions import CardConnectionException, NoCardException
        from smartcard.System import readers
        from smartcard.pcsc.PCSCExceptions import EstablishContextException, ListReadersException

        try:
            found = [r for r in readers() if self.reader_name in str(r)]
        except (EstablishContextException, ListReadersException) as exc:
            raise DeviceError(f"PC/SC is not available ({exc}): is pcscd running?") from None
        if not found:
            raise DeviceError(f"no PC/SC reader named like {self.reader_name!r}: check the encoder's cable and "
                              "that pcscd sees it (pcsc_scan)")
        deadline = time.monotonic() + self.card_wait_s
        while True:
            connection = found[0].createConnection()
            try:
                connection.connect()
                self._connection = connection
                return
            except (NoCardException, CardConnectionException) as exc:
                _release(connection)
                if time.monotonic() >= deadline:
                    raise EncodingFailed(f"no card in the field of {found[0]} within {self.card_wait_s:g} s: {exc}") \
                        from None
                time.sleep(0.05)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except Exception as exc:  # the card already left: nothing to disconnect
                log.debug("disconnecting: %s", exc)
            _release(connection)

    def transmit(self, command: Command) -> Response:
        from smartcard.Exceptions import CardConnectionException

        try:
            data, sw1, sw2 = self._connection.transmit(list(command.encode()))
        except CardConnectionException as exc:
            raise EncodingFailed(f"the card left the field or stopped answering ({exc})") from None
        return Response(bytes(data), sw1, sw2)

    def _expect_ok(self, response: Response, what: str) -> Response:
        if not response.ok:
            raise EncodingFailed(f"{what}: {response.describe()}")
        return response

    # -- the steps -----------------------------------------------------------------------------
    def personalize(self, files: Mapping[str, bytes]) -> None:
        self._expect_ok(self.transmit(apdu.select_application(lds.AID)), "SELECT the LDS application")
        for name, data in files.items():
            file_id = lds.FILES[name].file_id
            self._expect_ok(self.transmit(apdu.create_file(file_id, len(data))), f"CREATE FILE {name}")
            for offset in range(0, len(data), CHUNK_BYTES):
                self._expect_ok(self.transmit(apdu.update_binary(offset, data[offset:offset + CHUNK_BYTES])),
                                f"UPDATE BINARY {name} at {offset}")

    def generate_aa_key(self) -> ec.EllipticCurvePublicKey:
        """The chip's new Active Authentication public key (its private key stays inside)."""
        self._expect_ok(self.transmit(apdu.select_application(lds.AID)), "SELECT the LDS application")
        answer = self._expect_ok(self.transmit(apdu.generate_aa_key()), "GENERATE AA KEY PAIR")
        try:
            key = serialization.load_der_public_key(answer.data)
        except ValueError as exc:
            raise EncodingFailed(f"GENERATE AA KEY PAIR answered no SubjectPublicKeyInfo ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise EncodingFailed(f"GENERATE AA KEY PAIR answered a {type(key).__name__} other than P-256: "
                                 "Active Authentication here is ECDSA P-256")
        return key

    def lock(self, mrz_information: str) -> None:
        self._expect_ok(self.transmit(apdu.lock(mrz_information)), "LOCK (end of personalisation)")

    def read_back(self, mrz_information: str, names: list[str], *,
                  active_authentication: bool = False) -> dict[str, bytes]:
        """Every file, as an inspection system reads it: BAC, then secure messaging; then,
        with ``active_authentication``, the chip proves it holds DG15's private key."""
        self._expect_ok(self.transmit(apdu.select_application(lds.AID)), "SELECT the LDS application")
        challenge = self._expect_ok(self.transmit(apdu.get_challenge()), "GET CHALLENGE").data
        terminal = bac.TerminalAuthentication(bac.AccessKeys.from_mrz_information(mrz_information), challenge)
        answer = self._expect_ok(self.transmit(terminal.command()), "EXTERNAL AUTHENTICATE (BAC with the MRZ keys)")
        try:
            channel = terminal.open_channel(answer.data)
            files = {name: self._read_file(channel, name) for name in names}
            if active_authentication:
                self._active_authentication(channel, files)
            return files
        except bac.SecureMessagingError as exc:
            raise EncodingFailed(f"secure messaging with the chip failed: {exc.message}") from None

    def _protected(self, channel: bac.SecureChannel, command: Command, what: str) -> Response:
        return self._expect_ok(channel.unprotect(self.transmit(channel.protect(command))), what)

    def _read_file(self, channel: bac.SecureChannel, name: str) -> bytes:
        self._protected(channel, apdu.select_file(lds.FILES[name].file_id), f"SELECT {name}")
        head = self._protected(channel, apdu.read_binary(0, 4), f"READ BINARY {name}").data
        _, _, end = _tlv_extent(head)
        data = bytearray(head)
        while len(data) < end:
            want = min(CHUNK_BYTES, end - len(data))
            data += self._protected(channel, apdu.read_binary(len(data), want),
                                    f"READ BINARY {name} at {len(data)}").data
        return bytes(data[:end])

    def _active_authentication(self, channel: bac.SecureChannel, files: Mapping[str, bytes]) -> None:
        """INTERNAL AUTHENTICATE with a fresh challenge, checked with the DG15 read back."""
        if "DG15" not in files:
            raise EncodingFailed("Active Authentication is on but the chip has no DG15 (its public key)")
        key = aa_public_key(files["DG15"])
        try:
            algorithm = lds.aa_signature_algorithm(files["DG14"]) if "DG14" in files else None
        except lds.LdsError as exc:
            raise EncodingFailed(f"DG14 read back: {exc.message}") from None
        if algorithm != lds.ECDSA_PLAIN_SHA256_OID:
            raise EncodingFailed(f"DG14 read back names {algorithm or 'no'} Active Authentication signature "
                                 f"algorithm; an ECDSA key needs ecdsa-plain-SHA256 ({lds.ECDSA_PLAIN_SHA256_OID}) "
                                 "there, or inspection systems cannot check the chip")
        challenge = secrets.token_bytes(AA_CHALLENGE_LENGTH)
        command = apdu.internal_authenticate(challenge)
        signature = self._protected(channel, command, "INTERNAL AUTHENTICATE (Active Authentication)").data
        if not verify_aa_signature(key, challenge, signature):
            raise EncodingFailed("Active Authentication failed: the chip's INTERNAL AUTHENTICATE signature does "
                                 "not verify with the DG15 public key read back (a chip that does not hold "
                                 "DG15's private key: a cloned or faulty chip)")

    def encode(self, files: Mapping[str, bytes], mrz_information: str, csca: Path | None = None) -> Encoded:
        """Personalise, lock, read back and verify one card; ``EncodingFailed`` otherwise."""
        return self._encode(lambda _key: files, mrz_information, csca, active_authentication=False)

    def encode_with_active_authentication(self, files_for: FilesFor, mrz_information: str,
                                          csca: Path | None = None) -> Encoded:
        """``encode`` for a chip with Active Authentication: the chip generates its key pair
        first, ``files_for(public_key)`` builds the files with it in DG15 (and so in the
        signed EF.SOD), and the read-back ends with INTERNAL AUTHENTICATE."""
        return self._encode(files_for, mrz_information, csca, active_authentication=True)

    def _encode(self, files_for: Callable[[ec.EllipticCurvePublicKey | None], Mapping[str, bytes]],
                mrz_information: str, csca: Path | None, *, active_authentication: bool) -> Encoded:
        result = Encoded({})
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            result.seconds[name] = round(now - clock, 4)
            clock = now

        self.connect()
        try:
            aa_key = None
            if active_authentication:
                aa_key = self.generate_aa_key()
                lap("generate_aa_key")
            files = result.files = dict(files_for(aa_key))
            self.personalize(files)
            lap("personalize")
            self.lock(mrz_information)
            read = self.read_back(mrz_information, list(files), active_authentication=active_authentication)
            lap("read_back")
        finally:
            self.close()
        changed = [name for name in files if read.get(name) != files[name]]
        if changed:
            raise EncodingFailed(f"the chip gave back other bytes than written for {', '.join(changed)}")
        result.verification = verify_files(read, csca)
        result.active_authentication = active_authentication
        lap("verify")
        return result


def _release(connection: Any) -> None:
    """Free a connection's PC/SC context now, while pcscd answers (pyscard would do it when
    the object is collected, perhaps after pcscd has gone)."""
    try:
        connection.release()
    except Exception as exc:  # the context is gone with pcscd: nothing left to free
        log.debug("releasing a PC/SC connection: %s", exc)


def _tlv_extent(head: bytes) -> tuple[int, int, int]:
    """(tag, value offset, end) of a file's outer TLV from its first bytes (one-byte LDS tags)."""
    if len(head) < 2:
        raise EncodingFailed(f"a file starts with only {len(head)} bytes")
    length = head[1]
    if length < 0x80:
        return head[0], 2, 2 + length
    count = length & 0x7F
    if count not in (1, 2, 3) or len(head) < 2 + count:
        raise EncodingFailed(f"a file's length field {head[:4].hex()} is not a BER length")
    size = int.from_bytes(head[2:2 + count], "big")
    return head[0], 2 + count, 2 + count + size


def aa_public_key(dg15: bytes) -> ec.EllipticCurvePublicKey:
    """The ECDSA Active Authentication public key of a DG15; ``EncodingFailed`` otherwise."""
    try:
        key = serialization.load_der_public_key(lds.read_file("DG15", dg15))
    except (lds.LdsError, ValueError) as exc:
        raise EncodingFailed(f"DG15 read back holds no public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EncodingFailed(f"DG15 holds a {type(key).__name__}; Active Authentication here is ECDSA only")
    return key


def verify_aa_signature(key: ec.EllipticCurvePublicKey, challenge: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (plain r || s, BSI TR-03111) is the ECDSA signature of
    SHA-256(``challenge``) by ``key``."""
    half = (key.curve.key_size + 7) // 8
    if len(signature) != 2 * half:
        return False
    r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), challenge, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def verify_files(files: Mapping[str, bytes], csca: Path | None = None) -> dict[str, Any]:
    """Passive authentication of files read from a chip, in memory (they are personal data);
    ``EncodingFailed`` naming what failed."""
    from station import pki

    result = chip_verify.verify_files(files, pki.load_certificate(csca) if csca else None)
    if not result.valid:
        raise EncodingFailed(f"the chip read back does not verify: {result.report()}")
    return result.to_dict()
